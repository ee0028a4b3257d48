"""The width sweep: how each optimizer's learning-rate sensitivity changes as the model grows.

Wortsman et al. (2023, "Small-scale proxies for large-scale Transformer
training instabilities") show that the final loss against the learning rate,
one curve per model width, predicts at small scale what happens at large
scale: under AdamW the basin narrows as the width grows, and model-side fixes
(qk-LayerNorm, z-loss) widen it again. The sweep trains the ``lm_gpt`` task
(GPT-2's init, no biases, Adam's b2 0.95) at each width over the same grid of
rates for every optimizer.

A row of the sweep is an optimizer of the registry, or one followed by
``@qk_z``: the same optimizer on the model with Wortsman et al.'s two fixes,
qk-LayerNorm and a z-loss of 1e-4 (:data:`MODEL_FIX`). Each (width, model)
pair is a task folder of its own, ``width_64`` or ``width_64@qk_z``, written as
``optax-split compare`` writes one; each optimizer merges into its folder as
soon as it is trained, so a stopped sweep continues where it stopped.
"""

import dataclasses
import math
import warnings

import numpy as np

from optax_split.experiments import metrics
from optax_split.experiments.results import Summary

# The row suffix of the model with Wortsman et al.'s fixes, and those fixes (lm's options).
MODEL_FIX_SUFFIX = "@qk_z"
MODEL_FIX = {"qk_layernorm": True, "z_loss": 1e-4}

# AdamW + clipping with and without the model-side fixes, Muon, StableAdamW, the
# presets at their defaults, the step split around AdamW (split_adam without its
# guard) and around Muon, and the split with the model-side fixes.
ROWS = (
    "adamw_clip", "adamw_clip@qk_z", "muon", "stable_adamw", "split_sgd", "split_adam",
    "split_adam:guard=none", "muon+split", "split_adam@qk_z",
)

# A grid's top rate should be at least this many times each optimizer's best
# rate, so that the grid shows where it diverges (the report flags the rows where not).
HEADROOM = 10.0


def short_of_headroom(headroom: float | None) -> bool:
  """Whether a grid's top rate is less than :data:`HEADROOM` times the best rate.

  Example:
    >>> print(short_of_headroom(10.0), short_of_headroom(3.3), short_of_headroom(None))
    False True False
  """
  return headroom is not None and headroom < HEADROOM * (1 - 1e-6)

# The full sweep and ``--quick`` (sized for CI). ``task`` holds lm_gpt's options.
FULL = {"widths": (64, 128, 256), "task": {"depth": 2}, "steps": 1000, "seeds": 2,
        "adaptive_rates": (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
        "rates": (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)}
QUICK = {"widths": (8, 16),
         "task": {"context": 8, "depth": 1, "heads": 2, "batch_size": 2, "max_bytes": 50_000,
                  "eval_windows": 4},
         "steps": 10, "seeds": 1, "adaptive_rates": (1e-3, 1.0), "rates": (0.1,)}


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the sweep: an optimizer, on the plain model or on the one with the fixes.

  Example:
    >>> row = Row.parse("split_adam@qk_z")
    >>> print(row.optimizer, row.model_fix, row.name)
    split_adam True split_adam@qk_z
  """

  optimizer: str
  model_fix: bool = False

  @classmethod
  def parse(cls, name: str) -> "Row":
    """The row ``name``: an optimizer's name, optionally followed by ``@qk_z``."""
    optimizer, at, fix = name.partition("@")
    if at and "@" + fix != MODEL_FIX_SUFFIX:
      raise ValueError(f"Unknown model variant {'@' + fix!r} in {name!r}: the sweep knows "
                       f"{MODEL_FIX_SUFFIX!r} (qk-LayerNorm and z-loss), e.g. "
                       f"adamw_clip{MODEL_FIX_SUFFIX}.")
    return cls(optimizer, bool(at))

  @property
  def name(self) -> str:
    return self.optimizer + (MODEL_FIX_SUFFIX if self.model_fix else "")


def folder_name(width: int, model_fix: bool) -> str:
  """The task folder of one width and model: ``width_64`` or ``width_64@qk_z``.

  Example:
    >>> print(folder_name(128, False), folder_name(128, True))
    width_128 width_128@qk_z
  """
  return f"width_{width}" + (MODEL_FIX_SUFFIX if model_fix else "")


def task_options(sizes: dict, width: int, model_fix: bool) -> dict:
  """lm_gpt's options at one width, with the model-side fixes or without."""
  return {**sizes["task"], "width": width, **(MODEL_FIX if model_fix else {})}


@dataclasses.dataclass(frozen=True)
class Point:
  """One row at one width: what the sweep reports of it.

  Attributes:
    rates: The swept rates, ascending.
    final_val_by_rate: The final validation loss at each rate, median over
      seeds (None: diverged).
    best_rate: The rate of the lowest final validation loss.
    best: That loss.
    lr_sensitivity: Wortsman et al.'s sensitivity, against the row's own best.
    diverged_runs: Runs that diverged over the grid.
    runs: Runs over the grid.
    spikes_grid: Loss spikes summed over the grid.
    global_share: The mean over training of the split's global share
      ``||G||^2 / ||g||^2`` at the best grid point, median over seeds (None
      for an optimizer that does not split).
    headroom: The top rate over the best rate.
  """

  rates: list[float]
  final_val_by_rate: list[float | None]
  best_rate: float | None
  best: float | None
  lr_sensitivity: float | None
  diverged_runs: int
  runs: int
  spikes_grid: int
  global_share: float | None
  headroom: float | None

  @classmethod
  def of(cls, summary: Summary) -> "Point":
    """The point of one optimizer's summary on one width's task.

    Example:
      >>> from optax_split.experiments.results import SuiteStats
      >>> stats = SuiteStats(rates=[0.01, 0.1, 1.0], final_val_by_rate=[3.0, 2.5, None],
      ...                    init_val=8.0, spikes_at_best=0, spikes_grid=2)
      >>> point = Point.of(Summary(optimizer="adamw_clip", suite=stats, lr_sensitivity=2.0,
      ...                          curves={"global_share": [[None, None]]}))
      >>> print(point.best_rate, point.best, point.headroom, point.global_share)
      0.1 2.5 10.0 None
    """
    stats = summary.suite
    values = [math.inf if v is None else v for v in stats.final_val_by_rate]
    finite = [v for v in values if math.isfinite(v)]
    best_index = int(np.argmin(values)) if finite else None
    best_rate = None if best_index is None else stats.rates[best_index]
    share = np.asarray(summary.curves["global_share"], float) if summary.curves else None
    share_at_best = None
    if share is not None and np.isfinite(share).any():
      with warnings.catch_warnings():  # A diverged seed's all-NaN curve is expected.
        warnings.simplefilter("ignore", RuntimeWarning)
        share_at_best = metrics.json_number(np.nanmedian(np.nanmean(share, axis=-1)))
    return cls(
        rates=list(stats.rates),
        final_val_by_rate=list(stats.final_val_by_rate),
        best_rate=best_rate,
        best=None if best_index is None else values[best_index],
        lr_sensitivity=summary.lr_sensitivity,
        diverged_runs=summary.diverged_runs,
        runs=summary.runs,
        spikes_grid=stats.spikes_grid,
        global_share=share_at_best,
        headroom=None if best_rate is None else max(stats.rates) / best_rate,
    )

  @property
  def short_of_headroom(self) -> bool:
    """Whether the grid stops less than :data:`HEADROOM` times above the best rate."""
    return short_of_headroom(self.headroom)

  def to_json(self) -> dict:
    return {**dataclasses.asdict(self), "short_of_headroom": self.short_of_headroom}
