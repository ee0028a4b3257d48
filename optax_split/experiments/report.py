"""Writes the reports: a task's ``results.json``, ``results.md`` and plots; the suite's.

Computing is done by :mod:`~optax_split.experiments.results` and
:mod:`~optax_split.experiments.verdict`, rendering by
:mod:`~optax_split.experiments.tables` and :mod:`~optax_split.experiments.plots`;
this module puts them in files.
"""

import importlib.metadata
import json
import platform
from pathlib import Path

import numpy as np

import optax_split
from optax_split.experiments import metrics, plots, scale, tables, verdict
from optax_split.experiments.results import Settings, Summary, TaskRecord
from optax_split.experiments.tasks.base import Task


def _dump(path: Path, data: dict) -> None:
  path.write_text(json.dumps(data, indent=1) + "\n")


# The packages whose versions the numbers depend on.
_PACKAGES = ("jax", "jaxlib", "optax", "flax", "chex")


def versions() -> dict[str, str]:
  """Python's version (the ``lm`` corpus is its standard library) and the packages' versions.

  Example:
    >>> print(sorted(versions()))
    ['chex', 'flax', 'jax', 'jaxlib', 'optax', 'optax_split', 'python']
  """
  # This package's own version from its source: an editable install's metadata may be older.
  found = {"python": platform.python_version(), "optax_split": optax_split.__version__}
  for name in _PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = "not installed"
  return found


def write_task(out: Path, task: Task, summaries: list[Summary], settings: Settings,
               command: str) -> str:
  """Writes ``results.json``, ``results.md`` and the plots to ``out``; returns the printed text.

  The printed text is the comparison table, its resolution and the verdict.
  ``results.json`` records the :func:`versions` of the process that wrote it.
  """
  options = {"target": task.target, "higher_is_better": task.higher_is_better}
  conclusion = verdict.verdict(summaries, metric=task.metric, **options)
  resolution = verdict.resolution(summaries, **options)
  out.mkdir(parents=True, exist_ok=True)
  _dump(out / "results.json", {
      "command": command, "task": task.name, "settings": settings.to_json(),
      "task_settings": task.settings, "metric": task.metric,
      "higher_is_better": task.higher_is_better, "divergence_bound": task.divergence_bound,
      "target": task.target, "verdict": conclusion,
      "resolution": None if resolution is None else resolution.to_json(),
      "versions": versions(), "optimizers": [s.to_json() for s in summaries]})
  (out / "results.md").write_text(
      tables.results_markdown(task, summaries, settings, command, conclusion, resolution))
  plots.write(out, task.name, summaries)
  header, rows = tables.compare_table(task, summaries, settings.steps)
  return "\n\n".join([tables.text_table(header, rows),
                       tables.resolution_line(task, resolution), conclusion])


def write_record(out: Path, record: TaskRecord) -> None:
  """Writes ``suite_task.json``: what the suite keeps of one task."""
  _dump(out / "suite_task.json", record.to_json())


def read_records(out: Path, names: tuple[str, ...]) -> list[TaskRecord]:
  """The records of the tasks ``names`` that have one under ``out``, in that order."""
  paths = [out / name / "suite_task.json" for name in names]
  return [TaskRecord.from_json(json.loads(p.read_text())) for p in paths if p.exists()]


def write_suite(out: Path, records: list[TaskRecord]) -> str:
  """Writes ``suite.json``, ``suite.md`` and ``lr_sensitivity.png``; returns the Markdown.

  The tasks may come from several runs of the command (``--tasks``), each
  recorded with its own command line.
  """
  out.mkdir(parents=True, exist_ok=True)
  names = list(dict.fromkeys(s.optimizer for t in records for s in t.optimizers))
  ranks = [verdict.ranks(t.optimizers, target=t.target, higher_is_better=t.higher_is_better)
           for t in records]
  mean_rank = {n: metrics.json_number(np.mean([r[n] for r in ranks if n in r])) for n in names}
  tasks = [{**t.to_json(), "ranks": r} for t, r in zip(records, ranks, strict=True)]
  _dump(out / "suite.json", {"tasks": tasks, "mean_rank": mean_rank})
  md = tables.suite_markdown(records, ranks, mean_rank)
  (out / "suite.md").write_text(md)
  plots.sensitivity_figure(records).savefig(out / "lr_sensitivity.png", dpi=70)
  return md


def read_scale(out: Path, widths: tuple[int, ...], rows: list[str], settings: Settings
               ) -> tuple[dict[str, dict[int, scale.Point | None]], list[str], list[dict]]:
  """The sweep's points under ``out``, with the commands and versions that made them.

  Returns:
    Per row, per width, its point (None where that width's folder lacks the
    row or was made with other settings); the command lines, one each; the
    distinct versions of the processes that wrote the folders.
  """
  points = {name: dict.fromkeys(widths) for name in rows}
  commands, versions = {}, []
  for width in widths:
    for model_fix in (False, True):
      path = out / scale.folder_name(width, model_fix) / "results.json"
      if not path.exists():
        continue
      data = json.loads(path.read_text())
      if data["settings"] != settings.to_json():
        continue
      commands.update(dict.fromkeys(data["command"].splitlines()))
      if data.get("versions") not in versions:
        versions.append(data.get("versions"))
      for summary in data["optimizers"]:
        name = scale.Row(summary["optimizer"], model_fix).name
        if name in points:
          points[name][width] = scale.Point.of(
              Summary.from_json(summary, higher_is_better=data["higher_is_better"]))
  return points, list(commands), versions


def write_scale(out: Path, widths: tuple[int, ...], rows: list[str], settings: Settings) -> str:
  """Writes ``scale.json``, ``scale.md`` and ``scale.png`` from the width folders under ``out``.

  Returns the Markdown. Rows or widths not trained yet are left blank.
  """
  points, commands, versions = read_scale(out, widths, rows, settings)
  _dump(out / "scale.json", {
      "commands": commands, "settings": settings.to_json(), "widths": list(widths),
      "model_fix": scale.MODEL_FIX, "versions": versions,
      "rows": {name: {str(w): None if p is None else p.to_json() for w, p in by_width.items()}
               for name, by_width in points.items()}})
  md = tables.scale_markdown(points, widths, settings, commands)
  (out / "scale.md").write_text(md)
  plots.scale_figure(points, widths).savefig(out / "scale.png", dpi=70)
  return md
