"""Metrics of the runs' logs: final loss, divergence, loss spikes, learning-rate sensitivity.

Plain NumPy on the arrays of :class:`~optax_split.experiments.runner.Runs`, and
the rounding of numbers for ``results.json``.
"""

import math

import numpy as np

from optax_split.experiments.tasks.base import Task

# The final training loss is the mean over this last fraction of the steps.
FINAL_FRACTION = 0.1
# Curves in results.json and the plots are averaged into this many bins.
CURVE_POINTS = 100
# A loss spike: a step whose training loss exceeds SPIKE_FACTOR x the median of
# the SPIKE_WINDOW steps before it.
SPIKE_FACTOR = 1.5
SPIKE_WINDOW = 20


def final_loss(loss: np.ndarray) -> np.ndarray:
  """Mean training loss over the last tenth of the steps (last axis).

  Example:
    >>> print(final_loss(np.array([9.0] * 18 + [1.0, 3.0])))
    2.0
  """
  tail = max(1, int(round(loss.shape[-1] * FINAL_FRACTION)))
  return loss[..., -tail:].mean(axis=-1)


def diverged(task: Task, loss: np.ndarray) -> np.ndarray:
  """A run diverged if its loss was ever non-finite or ends above the task's bound.

  Example:
    >>> from optax_split.experiments import tasks
    >>> task = tasks.make("adding", length=4, hidden=2, eval_size=2)
    >>> loss = np.array([[0.2] * 10, [0.2] * 9 + [np.nan], [0.2] * 5 + [99.0] * 5])
    >>> print(diverged(task, loss))
    [False  True  True]
  """
  with np.errstate(invalid="ignore"):
    return ~np.isfinite(loss).all(axis=-1) | ~(final_loss(loss) <= task.divergence_bound)


def binned(curve: np.ndarray, points: int = CURVE_POINTS) -> np.ndarray:
  """``curve`` (last axis) averaged into at most ``points`` equal bins.

  Example:
    >>> print(binned(np.arange(6.0), points=3))
    [0.5 2.5 4.5]
  """
  steps = curve.shape[-1]
  width = max(1, steps // points)
  usable = steps // width * width
  shape = (*curve.shape[:-1], usable // width, width)
  return curve[..., steps - usable:].reshape(shape).mean(axis=-1)


def spike_counts(loss: np.ndarray) -> np.ndarray:
  """Loss spikes per run: steps over ``SPIKE_FACTOR`` x the median of the window before.

  Non-finite steps count as spikes. ``loss`` is ``(..., steps)``.

  Example:
    >>> loss = np.array([1.0] * 30 + [2.0] + [1.0] * 5 + [np.nan])
    >>> print(spike_counts(loss))
    2
  """
  steps = loss.shape[-1]
  if steps <= SPIKE_WINDOW:
    return np.zeros(loss.shape[:-1], int)
  windows = np.lib.stride_tricks.sliding_window_view(loss, SPIKE_WINDOW, axis=-1)[..., :-1, :]
  with np.errstate(invalid="ignore"):
    median = np.nanmedian(windows, axis=-1) if np.isnan(windows).any() else np.median(
        windows, axis=-1)
    later = loss[..., SPIKE_WINDOW:]
    spikes = ~np.isfinite(later) | (later > SPIKE_FACTOR * median)
  return spikes.sum(axis=-1)


def finite_median(x: np.ndarray) -> float:
  """Median of the finite entries of a 1-D array (the seeds that did not diverge); else NaN.

  Example:
    >>> print(finite_median(np.array([3.0, np.nan, 1.0])), finite_median(np.array([np.inf])))
    2.0 nan
  """
  x = np.asarray(x, float)
  finite = x[np.isfinite(x)]
  return float(np.median(finite)) if finite.size else math.nan


def lr_sensitivity(final_by_rate: list[float | None], init: float | None, *,
                   higher_is_better: bool) -> float | None:
  """Learning-rate sensitivity as Wortsman et al. (2023) define it: lower is better.

  The mean over the swept rates of ``min(metric(rate), metric at init)`` minus
  the optimizer's own best ``min(metric(rate))``; for a metric where higher is
  better, with the signs turned round. A diverged rate (None) counts as the
  metric at init. Against the optimizer's own best, not the best of all
  optimizers, it measures how much tuning the rate matters, apart from how
  good the best rate is. None when every rate diverged.

  Args:
    final_by_rate: The final validation metric at each rate (None: diverged).
    init: The validation metric at init.
    higher_is_better: Whether a larger metric is better.

  Returns:
    The sensitivity in the metric's units, rounded for JSON; 0 when every rate
    reached the best.

  Example:
    >>> print(lr_sensitivity([3.0, 2.0, None], 8.0, higher_is_better=False))  # (1 + 0 + 6) / 3
    2.33333
    >>> print(lr_sensitivity([0.9, 0.5], 0.6, higher_is_better=True))  # (0 + 0.3) / 2
    0.15

  References:
    Wortsman et al., `Small-scale proxies for large-scale Transformer training
    instabilities <https://arxiv.org/abs/2309.14322>`_, 2023.
  """
  sign = -1.0 if higher_is_better else 1.0
  finals = [sign * v for v in final_by_rate if v is not None]
  if not finals or init is None:
    return None
  best, capped = min(finals), sign * init
  gaps = [capped - best if v is None else min(capped, sign * v) - best for v in final_by_rate]
  return json_number(np.mean(gaps))


def json_number(x) -> float | None:
  """A float for JSON, to 6 significant digits; None for NaN and infinities.

  Example:
    >>> print(json_number(1 / 3), json_number(float("nan")))
    0.333333 None
  """
  x = float(x)
  return float(f"{x:.6g}") if math.isfinite(x) else None


def json_array(x: np.ndarray) -> list:
  """A 2-D array as nested lists of :func:`json_number`."""
  return [[json_number(v) for v in row] for row in np.asarray(x, float)]
