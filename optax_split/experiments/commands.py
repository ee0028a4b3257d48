"""What ``optax-split compare``, ``suite`` and ``scale`` do, from their parsed arguments."""

from collections.abc import Sequence
from pathlib import Path

from optax_split.experiments import jobs, merge, optimizers, report, scale, suite, tasks, verdict
from optax_split.experiments.results import Settings, Summary, TaskRecord


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


def _merge_into(folder: Path, lock: Path, task: tasks.Task, settings: Settings,
                summaries: list[Summary], command: str, drop: Sequence[str] = (), *,
                record: bool = False) -> None:
  """Writes ``summaries`` into the task folder ``folder`` beside its earlier rows.

  ``lock`` is held meanwhile: runs of other optimizers into the same folder
  may end at the same time. With ``record``, the suite's ``suite_task.json`` too.
  """
  with merge.locked(lock):
    summaries, commands = merge.with_earlier(folder / "results.json", task, settings,
                                             summaries, command, list(drop))
    report.write_task(folder, task, summaries, settings, commands)
    if record:
      resolution = verdict.resolution(summaries, target=task.target,
                                      higher_is_better=task.higher_is_better)
      report.write_record(folder, TaskRecord.of(task, summaries, settings, commands, resolution))


def _trained(folder: Path, task: tasks.Task, settings: Settings) -> set[str]:
  """The optimizers already in ``folder``; a UsageError if it was made with other settings."""
  try:
    return merge.trained(folder / "results.json", task, settings)
  except merge.OtherSettings as error:
    raise UsageError(str(error)) from None


def run_suite(*, task_names: Sequence[str] | None, names: Sequence[str] | None, quick: bool,
              out: Path, drop: Sequence[str], jobs_at_once: int | None, progress: bool,
              command: str) -> str:
  """Trains the suite's tasks; writes each task's report and the suite's; returns ``suite.md``.

  A task's earlier results in ``out`` keep the rows of the optimizers not run
  again (less those in ``drop``); earlier results made with other settings
  stop the run before it trains. Tasks already in ``out`` join the suite's
  report. Each optimizer is written as soon as it is trained, so a stopped
  run keeps what it finished.
  """
  task_names = list(task_names or (suite.QUICK if quick else suite.FULL))
  specs = _specs(names or suite.OPTIMIZERS)
  planned = []
  for name in task_names:
    sizes = suite.size(name, quick=quick)
    task = _make_task(name, sizes["task"])
    settings = suite.settings(sizes, task.rates, task.adaptive_rates)
    _trained(out / name, task, settings)  # Before any training: an earlier folder must fit.
    planned.append((task, settings, out / name))
  for task, settings, folder in planned:
    task_specs = [suite.with_weight_decays(s, settings.weight_decays) for s in specs]
    write = lambda done, task=task, settings=settings, folder=folder: _merge_into(  # noqa: E731
        folder, out, task, settings, done, command, drop, record=True)
    # Written as each one ends, then once more in the order asked for.
    write(jobs.train_all(task, task_specs, settings, jobs=jobs_at_once, progress=progress,
                         on_done=write))
  with merge.locked(out):
    return report.write_suite(out, report.read_records(out, suite.TASKS))


def run_scale(*, widths: Sequence[int] | None, names: Sequence[str] | None, quick: bool,
              steps: int | None, seeds: int | None, out: Path, jobs_at_once: int | None,
              progress: bool, command: str) -> str:
  """Trains the width sweep; writes each width's report and the sweep's; returns ``scale.md``.

  An optimizer already in a width's folder with the same settings is not
  trained again, and each one is written as soon as it is trained: a stopped
  sweep continues where it stopped. None takes the sweep's defaults
  (:mod:`~optax_split.experiments.scale`).
  """
  sizes = scale.QUICK if quick else scale.FULL
  try:
    rows = [scale.Row.parse(n) for n in names or scale.ROWS]
  except ValueError as error:
    raise UsageError(str(error)) from None
  _specs([r.optimizer for r in rows])  # Every name known, before anything trains.
  widths = tuple(widths or sizes["widths"])
  if min(widths) < 1:
    raise UsageError(f"--widths must be positive, got {list(widths)}. E.g. --widths 64 128 256.")
  for flag, value in (("--steps", steps), ("--seeds", seeds)):
    if value is not None and value < 1:
      raise UsageError(f"{flag} must be at least 1, got {value}. E.g. {flag} 2.")
  settings = Settings(steps or sizes["steps"], seeds or sizes["seeds"], tuple(sizes["rates"]),
                      tuple(sizes["adaptive_rates"]))
  for width in widths:
    for model_fix in (False, True):
      wanted = [r.optimizer for r in rows if r.model_fix == model_fix]
      if not wanted:
        continue
      task = _make_task("lm_gpt", scale.task_options(sizes, width, model_fix))
      folder = out / scale.folder_name(width, model_fix)
      done = _trained(folder, task, settings)
      todo = [n for n in wanted if n not in done]

      def write(summaries, task=task, folder=folder):
        _merge_into(folder, out, task, settings, summaries, command)
        with merge.locked(out):  # The sweep's report too: a stopped sweep's is up to date.
          report.write_scale(out, widths, [r.name for r in rows], settings)

      if todo:  # Written as each one ends, then once more in the order asked for.
        write(jobs.train_all(task, _specs(todo), settings, jobs=jobs_at_once,
                             progress=progress, on_done=write))
  with merge.locked(out):
    return report.write_scale(out, widths, [r.name for r in rows], settings)
