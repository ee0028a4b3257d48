"""What ``optax-split compare`` and ``optax-split suite`` do, from their parsed arguments."""

from collections.abc import Sequence
from pathlib import Path

from optax_split.experiments import jobs, merge, optimizers, report, suite, tasks, verdict
from optax_split.experiments.results import Settings, TaskRecord


class UsageError(Exception):
  """Bad input on the command line: the message says what is wrong and how to fix it."""


def _make_task(name: str, options: dict) -> tasks.Task:
  try:
    return tasks.make(name, **options)
  except TypeError as error:  # An option the task does not take.
    raise UsageError(f"--task {name} does not take that option: {error}") from None
  except (ValueError, FileNotFoundError) as error:
    raise UsageError(str(error)) from None


def _specs(names: Sequence[str]) -> list[optimizers.OptimizerSpec]:
  try:
    return [optimizers.get(n) for n in names]
  except ValueError as error:
    raise UsageError(str(error)) from None


def compare(*, task: str, task_options: dict, names: Sequence[str] | None, seeds: int,
            steps: int | None, rates: Sequence[float] | None,
            adaptive_rates: Sequence[float] | None, out: Path | None, jobs_at_once: int | None,
            progress: bool, command: str) -> str:
  """Trains every optimizer on one task; writes its report; returns the printed text.

  None for ``names``, ``steps``, the rates and ``out`` takes the defaults: the
  registry's default optimizers, the task's steps and grids, ``runs/TASK``.
  """
  made = _make_task(task, task_options)
  specs = _specs(names or optimizers.DEFAULT_NAMES)
  settings = Settings(steps or made.steps, seeds, tuple(rates or made.rates),
                      tuple(adaptive_rates or made.adaptive_rates))
  out = out or Path("runs") / made.name
  summaries = jobs.train_all(made, specs, settings, jobs=jobs_at_once, progress=progress)
  text = report.write_task(out, made, summaries, settings, command)
  return text + f"\n\nWrote {out}/results.json, results.md, loss.png, grad_norm.png, " \
                "global_share.png"


def run_suite(*, task_names: Sequence[str] | None, names: Sequence[str] | None, quick: bool,
              out: Path, drop: Sequence[str], jobs_at_once: int | None, progress: bool,
              command: str) -> str:
  """Trains the suite's tasks; writes each task's report and the suite's; returns ``suite.md``.

  A task's earlier results in ``out`` with the same settings keep the rows of
  the optimizers not run again (less those in ``drop``); tasks already in
  ``out`` join the suite's report.
  """
  task_names = list(task_names or (suite.QUICK if quick else suite.FULL))
  specs = _specs(names or suite.OPTIMIZERS)
  made = {name: _make_task(name, suite.size(name, quick=quick)["task"]) for name in task_names}
  for name, task in made.items():
    sizes = suite.size(name, quick=quick)
    settings = suite.settings(sizes, task.rates, task.adaptive_rates)
    task_specs = [suite.with_weight_decays(s, settings.weight_decays) for s in specs]
    summaries = jobs.train_all(task, task_specs, settings, jobs=jobs_at_once, progress=progress)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    with merge.locked(out):  # Runs of other optimizers into the same folder may end meanwhile.
      summaries, commands = merge.with_earlier(folder / "results.json", task, settings,
                                               summaries, command, list(drop))
      report.write_task(folder, task, summaries, settings, commands)
      resolution = verdict.resolution(summaries, target=task.target,
                                      higher_is_better=task.higher_is_better)
      report.write_record(folder, TaskRecord.of(task, summaries, settings, commands, resolution))
  with merge.locked(out):
    return report.write_suite(out, report.read_records(out, suite.TASKS))
