"""What a run of the experiments yields, as typed records that read and write JSON.

:func:`summarize` turns one optimizer's :class:`~optax_split.experiments.runner.Runs`
into a :class:`Summary`: its best grid point (chosen on the validation set),
how many seeds diverged there and how many runs over the whole grid, the final
training loss, the test metric at each seed's best validation point, the final
validation metric per rate, the loss spikes and the learning-rate sensitivity.
A task's summaries, settings and resolution make a :class:`TaskRecord`, what
the suite keeps of a task. The records have ``to_json``, and those read back
``from_json``, which reads the files of earlier versions too.
"""

import dataclasses
import math
from typing import Any

import numpy as np

from optax_split import defaults
from optax_split.experiments import metrics, optimizers
from optax_split.experiments.runner import Runs
from optax_split.experiments.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class Settings:
  """The run's sizes: what ``results.json`` calls ``settings``.

  Attributes:
    steps: Training steps per run.
    seeds: Seeds per grid point.
    rates: Effective learning rates of the SGD-like optimizers.
    adaptive_rates: Learning rates of the Adam-like optimizers.
    weight_decays: A weight-decay grid every optimizer sweeps, or None.

  Example:
    >>> print(Settings(20, 2, (0.1,), (0.01,)).to_json())
    {'steps': 20, 'seeds': 2, 'rates': [0.1], 'adaptive_rates': [0.01]}
  """

  steps: int
  seeds: int
  rates: tuple[float, ...]
  adaptive_rates: tuple[float, ...]
  weight_decays: tuple[float, ...] | None = None

  def rates_of(self, spec: optimizers.OptimizerSpec) -> tuple[float, ...]:
    """The grid of rates ``spec`` sweeps."""
    return self.adaptive_rates if spec.adaptive else self.rates

  def to_json(self) -> dict:
    out = {"steps": self.steps, "seeds": self.seeds, "rates": list(self.rates),
           "adaptive_rates": list(self.adaptive_rates)}
    if self.weight_decays is not None:
      out["weight_decays"] = list(self.weight_decays)
    return out


@dataclasses.dataclass(frozen=True)
class SuiteStats:
  """Per optimizer, beyond the comparison table: the rate curve and the loss spikes.

  Attributes:
    rates: The swept rates, ascending.
    final_val_by_rate: At each rate the final validation metric, median over
      seeds, best over the optimizer's other hyperparameters (None: diverged).
    init_val: The validation metric at init, median over seeds.
    spikes_at_best: Loss spikes at the best grid point, median over seeds.
    spikes_grid: Loss spikes summed over the whole grid.
  """

  rates: list[float]
  final_val_by_rate: list[float | None]
  init_val: float | None
  spikes_at_best: float | None
  spikes_grid: int

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict) -> "SuiteStats":
    return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Summary:
  """One optimizer's tuned best on one task, and what it is made of.

  The JSON keys are the attribute names; ``grid`` and ``curves`` are the
  JSON-ready per-grid-point numbers and binned curves (None where a record
  leaves them out, as the suite's does).

  Attributes:
    optimizer: The optimizer's name.
    description: What it is.
    best: The best grid point, ``{"rate": ..., other hyperparameters}``.
    diverged_seeds_at_best: Seeds that diverged at the best grid point.
    seeds: Seeds per grid point.
    diverged_runs: Runs that diverged over the whole grid.
    runs: Runs over the whole grid.
    final_train_loss: Median over the seeds that did not diverge of the final
      training loss at the best grid point.
    test_metric_at_best_val: Median over those seeds of the test metric at
      each seed's best validation point.
    by_seed: Seed by seed at the best grid point: ``test_metric`` and, where
      the task has a target, ``steps_to_target`` (None: diverged, or never).
    grid: Per grid point, its divergences and per-seed numbers.
    curves: Binned training curves of the best grid point, per seed.
    steps_to_target: Median steps to the task's validation target (None:
      never); only where the task has a target.
    suite: The rate curve and loss spikes.
    lr_sensitivity: The learning-rate sensitivity of the rate curve
      (:func:`metrics.lr_sensitivity`, against the optimizer's own best).

  Example:
    >>> s = Summary(optimizer="sgd", test_metric_at_best_val=0.1,
    ...             by_seed={"test_metric": [0.1, None]})
    >>> print(Summary.from_json(s.to_json(), higher_is_better=False) == s)
    True
  """

  optimizer: str
  description: str = ""
  best: dict[str, float] = dataclasses.field(default_factory=dict)
  diverged_seeds_at_best: int = 0
  seeds: int = 0
  diverged_runs: int = 0
  runs: int = 0
  final_train_loss: float | None = None
  test_metric_at_best_val: float | None = None
  by_seed: dict[str, list[float | None]] = dataclasses.field(default_factory=dict)
  grid: list[dict[str, Any]] | None = None
  curves: dict[str, list] | None = None
  steps_to_target: float | None = None
  suite: SuiteStats | None = None
  lr_sensitivity: float | None = None

  def to_json(self) -> dict:
    """The summary as ``results.json`` holds it."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    for optional in ("grid", "curves", "suite", "lr_sensitivity"):
      if out[optional] is None:
        del out[optional]
    if "steps_to_target" not in self.by_seed:  # A task without a target.
      del out["steps_to_target"]
    if self.suite is not None:
      out["suite"] = self.suite.to_json()
    return out

  @classmethod
  def from_json(cls, data: dict, *, higher_is_better: bool) -> "Summary":
    """Reads a summary of ``results.json`` or ``suite_task.json``, of this version or earlier.

    Files written before 0.3.0 have the per-seed numbers only in their grid:
    they are read from the best grid point. The learning-rate sensitivity is
    computed again from the rate curve, so that every file reads with today's
    definition (against the optimizer's own best).
    """
    known = {f.name for f in dataclasses.fields(cls)}
    fields = {k: v for k, v in data.items() if k in known}
    if "by_seed" not in fields and "grid" in fields:
      best = next(p for p in fields["grid"] if all(p[k] == v for k, v in fields["best"].items()))
      fields["by_seed"] = {"test_metric": best["test_metric_at_best_val"]}
      if "steps_to_target" in best:
        fields["by_seed"]["steps_to_target"] = best["steps_to_target"]
    if "suite" in fields:
      suite = fields["suite"] = SuiteStats.from_json(fields["suite"])
      fields["lr_sensitivity"] = metrics.lr_sensitivity(
          suite.final_val_by_rate, suite.init_val, higher_is_better=higher_is_better)
    return cls(**fields)


@dataclasses.dataclass(frozen=True)
class Resolution:
  """The smallest paired difference between the top two rows that the seeds resolve.

  A one-sided paired t-test at p < 0.05: ``t_{0.95, n-1} * sd / sqrt(n)``,
  ``sd`` the standard deviation of the ``n`` paired differences.

  Attributes:
    between: The top two rows' optimizers.
    paired_seeds: The seeds on which neither diverged (nor missed the target).
    t: The t quantile used.
    sd: The standard deviation of the paired differences.
    difference: The smallest resolved difference, in the ranked number's units.
    mean_difference: The observed mean difference, positive where the first
      row is ahead.
  """

  between: tuple[str, str]
  paired_seeds: int
  t: float
  sd: float
  difference: float
  mean_difference: float

  def to_json(self) -> dict:
    return {**dataclasses.asdict(self), "between": list(self.between)}

  @classmethod
  def from_json(cls, data: dict) -> "Resolution":
    return cls(**{**data, "between": tuple(data["between"])})


@dataclasses.dataclass(frozen=True)
class TaskRecord:
  """What the suite keeps of one task: ``suite_task.json``.

  Attributes:
    task: The task's name.
    command: The command line(s) that made it, one a line.
    metric: The task's metric.
    higher_is_better: Whether a larger metric is better.
    target: The validation target, or None.
    settings: The run's settings, as JSON.
    task_settings: The task's settings, as JSON.
    optimizers: The summaries, without grids and curves.
    resolution: The resolution of the task's top two rows, or None.
  """

  task: str
  command: str
  metric: str
  higher_is_better: bool
  target: float | None
  settings: dict
  task_settings: dict
  optimizers: list[Summary]
  resolution: Resolution | None = None

  @classmethod
  def of(cls, task: Task, summaries: list[Summary], settings: Settings, command: str,
         resolution: Resolution | None) -> "TaskRecord":
    """The record of ``task``'s ``summaries``: their grids and curves left out."""
    kept = [dataclasses.replace(s, grid=None, curves=None) for s in summaries]
    return cls(task.name, command, task.metric, task.higher_is_better, task.target,
               settings.to_json(), task.settings, kept, resolution)

  @property
  def sensitivity(self) -> dict[str, float | None]:
    """Each optimizer's learning-rate sensitivity (:func:`metrics.lr_sensitivity`)."""
    return {s.optimizer: s.lr_sensitivity for s in self.optimizers}

  def to_json(self) -> dict:
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    out["optimizers"] = [s.to_json() for s in self.optimizers]
    out["sensitivity"] = self.sensitivity
    out["resolution"] = None if self.resolution is None else self.resolution.to_json()
    return out

  @classmethod
  def from_json(cls, data: dict) -> "TaskRecord":
    fields = {f.name: data.get(f.name) for f in dataclasses.fields(cls)}
    fields["optimizers"] = [Summary.from_json(s, higher_is_better=data["higher_is_better"])
                            for s in data["optimizers"]]
    if fields["resolution"] is not None:  # Records before 0.4.0 have none.
      fields["resolution"] = Resolution.from_json(fields["resolution"])
    return cls(**fields)


def _is_alpha_grid(spec: optimizers.OptimizerSpec) -> bool:
  return "alpha" in spec.grid and spec.name.partition(":")[0] in optimizers.PRESETS


def alpha_slices(runs: Runs) -> list[Runs]:
  """One ``Runs`` per ``alpha`` of a preset swept over ``alpha``; else ``[runs]``.

  The slice at the presets' default ``alpha`` is named after the preset alone,
  the others ``split_adam:alpha=0``.
  """
  if not _is_alpha_grid(runs.spec):
    return [runs]
  base = runs.spec.name.partition(":")[0]
  slices = []
  for alpha in runs.spec.grid["alpha"]:
    keep = [i for i, c in enumerate(runs.configs) if c["alpha"] == alpha]
    name = base if alpha == defaults.ALPHA else f"{base}:alpha={alpha:g}"
    spec = dataclasses.replace(runs.spec, name=name, grid={
        k: v for k, v in runs.spec.grid.items() if k != "alpha"})
    configs = [{k: v for k, v in runs.configs[i].items() if k != "alpha"} for i in keep]
    pick = lambda x, keep=keep: x[keep]  # noqa: E731
    slices.append(dataclasses.replace(
        runs, spec=spec, configs=configs, loss=pick(runs.loss),
        grad_norm=pick(runs.grad_norm), global_share=pick(runs.global_share),
        val=pick(runs.val), test=pick(runs.test), init_val=pick(runs.init_val)))
  return slices


def summarize_all(task: Task, runs: Runs) -> list[Summary]:
  """The summaries of one optimizer's runs: one, or one per ``alpha`` of a preset's grid."""
  return [summarize(task, r) for r in alpha_slices(runs)]


def _suite_stats(task: Task, runs: Runs, bad: np.ndarray, best: int) -> SuiteStats:
  """The final validation metric per rate (median over seeds, best over the rest) and spikes."""
  sign = -1.0 if task.higher_is_better else 1.0
  final = np.where(bad, np.nan, runs.val[..., -1])  # (configs, seeds)
  rates = sorted({c["rate"] for c in runs.configs})
  per_rate = []
  for rate in rates:
    rows = [i for i, c in enumerate(runs.configs) if c["rate"] == rate]
    with np.errstate(invalid="ignore"):
      medians = [metrics.finite_median(final[i]) for i in rows]
    scores = [sign * m if math.isfinite(m) else math.inf for m in medians]
    per_rate.append(medians[int(np.argmin(scores))])
  spikes = metrics.spike_counts(runs.loss)
  return SuiteStats(
      rates=rates,
      final_val_by_rate=[metrics.json_number(v) for v in per_rate],
      init_val=metrics.json_number(np.median(runs.init_val)),
      spikes_at_best=metrics.json_number(np.median(spikes[best])),
      spikes_grid=int(spikes.sum()),
  )


def summarize(task: Task, runs: Runs) -> Summary:
  """The summary of one optimizer's grid: best point, divergences, metrics, curves.

  Example:
    >>> from optax_split.experiments import runner, tasks
    >>> task = tasks.make("adding", length=4, hidden=3, batch_size=2, eval_size=2)
    >>> runs = runner.train(task, optimizers.get("sgd"), (0.01, 1e4), seeds=2, steps=4)
    >>> summary = summarize(task, runs)
    >>> print(summary.best, summary.diverged_runs, summary.suite.final_val_by_rate[1])
    {'rate': 0.01} 2 None
  """
  sign = -1.0 if task.higher_is_better else 1.0
  bad = metrics.diverged(task, runs.loss)  # (configs, seeds)
  val = np.where(bad[..., None], np.nan, runs.val)
  # Each run's best validation point (early stopping); diverged runs have none.
  ranked = np.where(np.isfinite(val), sign * val, np.inf)
  best_eval = ranked.argmin(axis=-1)
  test_at_best = np.take_along_axis(runs.test, best_eval[..., None], axis=-1)[..., 0]
  test_at_best = np.where(bad, np.nan, test_at_best)
  final_val = np.where(bad, np.nan, runs.val[..., -1])
  final_train = np.where(bad, np.nan, metrics.final_loss(runs.loss))
  # A grid point's score: the median over seeds, a diverged seed counting as worst.
  score = np.median(np.where(bad, np.inf, sign * runs.val[..., -1]), axis=-1)
  reached = None
  if task.target is not None:
    hit = (sign * val) <= sign * task.target
    first = np.where(hit.any(axis=-1), hit.argmax(axis=-1), -1)
    reached = np.where(first >= 0, runs.eval_steps[first], np.inf)
    # Fewer steps to the target first; the final validation metric breaks ties.
    score = np.median(reached, axis=-1) * 1e6 + np.nan_to_num(score, posinf=1e5)
  best = int(np.argmin(score))

  def stats(per_config: np.ndarray) -> list:
    return [metrics.json_number(v) for v in per_config]

  by_seed = {"test_metric": stats(test_at_best[best])}
  grid = [
      {
          **config,
          "diverged_seeds": int(bad[i].sum()),
          "final_train_loss": stats(final_train[i]),
          "final_val_metric": stats(final_val[i]),
          "test_metric_at_best_val": stats(test_at_best[i]),
      }
      for i, config in enumerate(runs.configs)
  ]
  steps_to_target = None
  if reached is not None:
    steps_to_target = metrics.json_number(np.median(reached[best]))
    by_seed["steps_to_target"] = stats(reached[best])
    for i, point in enumerate(grid):
      point["steps_to_target"] = stats(reached[i])
  suite = _suite_stats(task, runs, bad, best)
  return Summary(
      optimizer=runs.spec.name,
      description=runs.spec.description,
      best=runs.configs[best],
      diverged_seeds_at_best=int(bad[best].sum()),
      seeds=bad.shape[1],
      diverged_runs=int(bad.sum()),
      runs=int(bad.size),
      final_train_loss=metrics.json_number(metrics.finite_median(final_train[best])),
      test_metric_at_best_val=metrics.json_number(metrics.finite_median(test_at_best[best])),
      by_seed=by_seed,
      grid=grid,
      curves={
          "step": metrics.binned(np.arange(1, runs.loss.shape[-1] + 1, dtype=float)).tolist(),
          "loss": metrics.json_array(metrics.binned(runs.loss[best])),
          "grad_norm": metrics.json_array(metrics.binned(runs.grad_norm[best])),
          "global_share": metrics.json_array(metrics.binned(runs.global_share[best])),
          "eval_step": runs.eval_steps.tolist(),
          "val_metric": metrics.json_array(runs.val[best]),
      },
      steps_to_target=steps_to_target,
      suite=suite,
      lr_sensitivity=metrics.lr_sensitivity(
          suite.final_val_by_rate, suite.init_val, higher_is_better=task.higher_is_better),
  )
