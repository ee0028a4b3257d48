"""Training a task's optimizers, several at once, each in its own thread.

JAX releases the interpreter while a compiled program runs, so threads train
optimizers side by side. On a CPU each of the tasks' programs keeps about one
core busy, so the default is one optimizer a core; more at once would only
hold more programs in memory. The numbers do not depend on how many run at
once: every program is the same.
"""

import concurrent.futures
import os
import sys
from collections.abc import Callable

import tqdm

from optax_split.experiments import runner
from optax_split.experiments.optimizers import OptimizerSpec
from optax_split.experiments.results import Settings, Summary, summarize_all
from optax_split.experiments.tasks.base import Task

# At most this many optimizers train at once by default.
MAX_DEFAULT_JOBS = 4


def default_jobs() -> int:
  """Optimizers trained at once unless told: the usable cores, at most ``MAX_DEFAULT_JOBS``.

  Example:
    >>> print(1 <= default_jobs() <= MAX_DEFAULT_JOBS)
    True
  """
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(MAX_DEFAULT_JOBS, cores or 1))


def train_all(task: Task, specs: list[OptimizerSpec], settings: Settings, *,
              jobs: int | None = None, progress: bool = True,
              on_done: Callable[[list[Summary]], None] | None = None) -> list[Summary]:
  """Trains every optimizer on ``task``; the summaries in ``specs``' order, a preset's alphas apart.

  Args:
    task: The task.
    specs: The optimizers.
    settings: Steps, seeds and the grids of rates.
    jobs: Optimizers trained at once (None: :func:`default_jobs`).
    progress: Whether to show a progress bar on stderr.
    on_done: Called with an optimizer's summaries as soon as it is trained,
      in this thread (e.g. to write them, so that a stopped run keeps them).

  Returns:
    One summary per optimizer, or per ``alpha`` of a preset's ``alpha`` grid.
  """
  jobs = default_jobs() if jobs is None else jobs
  if jobs < 1:
    raise ValueError(f"`jobs` must be at least 1, got {jobs}. E.g. jobs=2.")

  def train(spec: OptimizerSpec) -> list[Summary]:
    runs = runner.train(task, spec, settings.rates_of(spec), settings.seeds, settings.steps)
    return summarize_all(task, runs)

  with tqdm.tqdm(total=len(specs), desc=task.name, unit="optimizer", disable=not progress,
                 file=sys.stderr) as bar, concurrent.futures.ThreadPoolExecutor(jobs) as pool:
    futures = {pool.submit(train, spec): spec.name for spec in specs}
    for done in concurrent.futures.as_completed(futures):
      if on_done is not None:
        on_done(done.result())
      bar.set_postfix_str(futures[done])
      bar.update()
    return [summary for future in futures for summary in future.result()]
