"""``spike_excess``: the part of the updates over an adaptive z-score threshold."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_split import _numerics, _validation
from optax_split.decompositions import base


class SpikeExcessState(NamedTuple):
  """State of :func:`spike_excess`.

  Attributes:
    count: Number of finite steps that fed the statistics (int32).
    norm_mean: Running mean of the (clipped) global norm.
    norm_var: Running variance of the (clipped) global norm.
    threshold: The threshold in force at the last step.
    spike_count: Number of steps whose norm exceeded the threshold or was not
      finite (int32).
  """

  count: jax.Array
  norm_mean: jax.Array
  norm_var: jax.Array
  threshold: jax.Array
  spike_count: jax.Array


@dataclasses.dataclass(frozen=True)
class SpikeExcess(base.Decomposition):
  """See :func:`spike_excess`."""

  z: float = 2.5
  decay: float = 0.97
  warmup: int = 25
  max_norm: float | None = None

  def init(self, params):
    del params
    zero = jnp.zeros([], base.STAT_DTYPE)
    return SpikeExcessState(
        count=jnp.zeros([], jnp.int32),
        norm_mean=zero,
        norm_var=zero,
        threshold=jnp.asarray(self._cap(), base.STAT_DTYPE),
        spike_count=jnp.zeros([], jnp.int32),
    )

  def _cap(self) -> float:
    return float("inf") if self.max_norm is None else self.max_norm

  def decompose(self, updates, state, params):
    del params
    norm = jnp.sqrt(_numerics.tree_squared_norm(updates))
    stat_norm = norm.astype(base.STAT_DTYPE)
    finite = jnp.isfinite(stat_norm)
    adaptive = state.norm_mean + self.z * jnp.sqrt(jnp.maximum(state.norm_var, 0))
    in_warmup = state.count < self.warmup
    threshold = jnp.where(in_warmup, self._cap(), jnp.minimum(adaptive, self._cap()))
    kept = _numerics.kept_fraction(norm, threshold.astype(norm.dtype))

    # The statistics see the clipped norm, so one spike cannot lift the
    # threshold for the steps after it; during warm-up they are a plain
    # running average (weight 1/n), then an EMA.
    clipped = jnp.minimum(stat_norm, threshold)
    count = optax.safe_increment(state.count)
    weight = jnp.where(in_warmup, 1 / count.astype(base.STAT_DTYPE), 1 - self.decay)
    mean = state.norm_mean + weight * (clipped - state.norm_mean)
    var = (1 - weight) * (state.norm_var + weight * jnp.square(clipped - state.norm_mean))

    spike = (stat_norm > threshold) | ~finite
    new_state = SpikeExcessState(
        count=jnp.where(finite, count, state.count),
        norm_mean=jnp.where(finite, mean, state.norm_mean),
        norm_var=jnp.where(finite, var, state.norm_var),
        threshold=threshold,
        spike_count=state.spike_count + spike.astype(jnp.int32),
    )
    local, global_ = base.clipped_split(updates, kept)
    return local, global_, new_state, jnp.square(1 - kept).astype(base.STAT_DTYPE)


def spike_excess(
    z: float = 2.5,
    decay: float = 0.97,
    warmup: int = 25,
    max_norm: float | None = None,
) -> SpikeExcess:
  """The part of the updates over an adaptive, z-score threshold on the norm.

  Like ZClip, it keeps a running mean ``mu`` and standard deviation ``sigma``
  of the global norm and treats the part of ``g`` over ``mu + z * sigma`` as
  the global component (``G = (1 - c) * g``, ``c = min(1, threshold / ||g||)``).
  The statistics are fed the clipped norm, so a spike cannot raise the bar for
  the next one. During the first ``warmup`` steps only ``max_norm`` applies.

  Adaptive statistics inherit the scale of the first gradients and follow a
  steady growth, so they alone do not bound the step: set ``max_norm`` for an
  absolute cap (the threshold in force is then at most ``max_norm``), as
  ZClip's reference code does. Non-finite steps count as spikes and leave the
  statistics unchanged.

  Diagnostics in the state: ``threshold`` (in force at the last step) and
  ``spike_count``.

  Args:
    z: How many standard deviations above the mean a norm may go.
    decay: Decay of the EMA statistics after warm-up, in ``[0, 1)``.
    warmup: Steps (at least 1) of plain averaging before the adaptive threshold
      applies.
    max_norm: Optional absolute cap on the threshold, at least 0.

  Returns:
    A :class:`Decomposition` for :func:`optax_split.split`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_split
    >>> tx = optax_split.split(optax_split.spike_excess(warmup=3, max_norm=10.0))
    >>> state = tx.init(jnp.zeros(2))
    >>> for g in ([1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [30.0, 40.0]):
    ...   parts, state = tx.update(jnp.array(g), state)
    >>> print(round(float(optax.tree.norm(parts.local)), 3), state.decomposition.spike_count)
    1.0 1

  References:
    Kumar et al., `ZClip: Adaptive Spike Mitigation for LLM Pre-Training
    <https://arxiv.org/abs/2504.02507>`_, 2025.
  """
  _validation.check_range("z", z, low=0.0, low_inclusive=False, fix="E.g. spike_excess(z=2.5).")
  _validation.check_range(
      "decay", decay, low=0.0, high=1.0, high_inclusive=False,
      fix="E.g. spike_excess(decay=0.97).",
  )
  if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 1:
    raise ValueError(
        f"`warmup` must be an int of at least 1, got {warmup!r}: the statistics "
        "need one step to start from. E.g. spike_excess(warmup=25)."
    )
  if max_norm is not None:
    _validation.check_range(
        "max_norm", max_norm, low=0.0, fix="E.g. spike_excess(max_norm=1.0), or None."
    )
  return SpikeExcess(z, decay, warmup, max_norm)
