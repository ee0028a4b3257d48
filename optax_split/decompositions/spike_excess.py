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
    count: Number of steps that fed the statistics (int32): the finite ones.
    norm_mean: Running mean of the (clipped) global norm.
    norm_var: Running variance of the (clipped) global norm; it saturates at
      float32's largest value (a standard deviation of about 1.8e19).
    cap: The relative cap for the next step: ``max_ratio`` times
      ``norm_mean``, the recent (clipped) norms; inf without one.
    threshold: The threshold in force at the last step.
    norm: The global norm of the updates at the last step, before the guard
      acted (inf or NaN when they were not finite).
    spike_count: Number of steps whose norm exceeded the threshold or was not
      finite (int32); with ``on_spike="skip"``, the number of skipped steps.
  """

  count: jax.Array
  norm_mean: jax.Array
  norm_var: jax.Array
  cap: jax.Array
  threshold: jax.Array
  norm: jax.Array
  spike_count: jax.Array


@dataclasses.dataclass(frozen=True)
class SpikeExcess(base.Decomposition):
  """See :func:`spike_excess`."""

  z: float = 3.5
  decay: float = 0.97
  warmup: int = 25
  max_ratio: float | None = 10.0
  max_norm: float | None = None
  on_spike: str = "clip"

  def __post_init__(self):
    _validation.check_range(
        "z", self.z, low=0.0, low_inclusive=False, fix="E.g. spike_excess(z=2.5)."
    )
    _validation.check_range(
        "decay", self.decay, low=0.0, high=1.0, high_inclusive=False,
        fix="E.g. spike_excess(decay=0.97).",
    )
    if not isinstance(self.warmup, int) or isinstance(self.warmup, bool) or self.warmup < 1:
      raise ValueError(
          f"`warmup` must be an int of at least 1, got {self.warmup!r}: the statistics "
          "need one step to start from. E.g. spike_excess(warmup=25)."
      )
    if self.max_ratio is not None:
      _validation.check_range(
          "max_ratio", self.max_ratio, low=1.0,
          fix="A cap below the running mean clips every step; e.g. spike_excess(max_ratio=10.0), "
          "or None.",
      )
    if self.max_norm is not None:
      _validation.check_range(
          "max_norm", self.max_norm, low=0.0, fix="E.g. spike_excess(max_norm=1.0), or None."
      )
    if self.on_spike not in ("clip", "skip"):
      raise ValueError(
          f'`on_spike` must be "clip" or "skip", got {self.on_spike!r}. E.g. '
          'spike_excess(on_spike="skip") to skip the whole step on a spike.'
      )

  def init(self, params):
    del params
    # One fresh array per field: a training loop that donates the state must
    # not find one buffer in two places.
    stat = lambda value: jnp.full([], value, base.STAT_DTYPE)  # noqa: E731
    return SpikeExcessState(
        count=jnp.zeros([], jnp.int32),
        norm_mean=stat(0.0),
        norm_var=stat(0.0),
        cap=stat(jnp.inf),
        threshold=stat(self._absolute_cap()),
        norm=stat(0.0),
        spike_count=jnp.zeros([], jnp.int32),
    )

  def _absolute_cap(self) -> float:
    return float("inf") if self.max_norm is None else self.max_norm

  def decompose(self, updates, state, params):
    del params
    norm = _numerics.tree_norm(updates)
    stat_norm = norm.astype(base.STAT_DTYPE)
    finite = jnp.isfinite(stat_norm)
    in_warmup = state.count < self.warmup
    adaptive = state.norm_mean + self.z * jnp.sqrt(jnp.maximum(state.norm_var, 0))
    # During warm-up only the caps apply; the relative one is inf at the first
    # step, then max_ratio times the running mean of the norms so far.
    bound = jnp.minimum(state.cap, self._absolute_cap())
    threshold = jnp.where(in_warmup, bound, jnp.minimum(adaptive, bound))
    kept = _numerics.kept_fraction(norm, threshold.astype(norm.dtype))

    # The statistics see the clipped norm, so one spike cannot lift the
    # threshold for the steps after it; during warm-up they are a plain
    # running average (weight 1/n), then an EMA.
    clipped = jnp.minimum(stat_norm, threshold)
    count = optax.safe_increment(state.count)
    weight = jnp.where(in_warmup, 1 / count.astype(base.STAT_DTYPE), 1 - self.decay)
    mean = state.norm_mean + weight * (clipped - state.norm_mean)
    # (1 - w) * (var + w * d^2), written so that clipped norms past about 1e19 (finite, as
    # tree_norm gives them) saturate the float32 variance instead of turning it inf, or NaN
    # (0 * inf at the first step), for good.
    spread = jnp.sqrt(weight * (1 - weight)) * (clipped - state.norm_mean)
    var = jnp.minimum((1 - weight) * state.norm_var + jnp.square(spread),
                      jnp.finfo(base.STAT_DTYPE).max)
    # The cap follows the recent norms, never frozen: a slow drift of the norm
    # carries it along, while one burst, fed to the mean only as far as the
    # threshold, lifts it by a factor of at most 1 + (1 - decay) * (max_ratio - 1).
    cap = state.cap if self.max_ratio is None else self.max_ratio * mean

    spike = (stat_norm > threshold) | ~finite
    # A skipped finite step feeds its clipped norm as a clipped one does: a norm
    # that stays past the threshold lifts it step by step, and training goes on.
    new_state = SpikeExcessState(
        count=jnp.where(finite, count, state.count),
        norm_mean=jnp.where(finite, mean, state.norm_mean),
        norm_var=jnp.where(finite, var, state.norm_var),
        cap=jnp.where(finite, cap, state.cap),
        threshold=threshold,
        norm=stat_norm,
        spike_count=state.spike_count + spike.astype(jnp.int32),
    )
    if self.on_spike == "skip":
      # Selects, not products: the local part of a non-finite step is exactly 0.
      local = jax.tree.map(lambda x: jnp.where(spike, jnp.zeros_like(x), x), updates)
      global_ = jax.tree.map(lambda x: jnp.where(spike, x, jnp.zeros_like(x)), updates)
      return local, global_, new_state, spike.astype(base.STAT_DTYPE)
    local, global_ = base.clipped_split(updates, kept)
    return local, global_, new_state, jnp.square(1 - kept).astype(base.STAT_DTYPE)


def spike_excess(
    z: float = 3.5,
    decay: float = 0.97,
    warmup: int = 25,
    max_ratio: float | None = 10.0,
    max_norm: float | None = None,
    *,
    on_spike: str = "clip",
) -> SpikeExcess:
  """The part of the updates over an adaptive, z-score threshold on the norm.

  Like ZClip, it keeps a running mean ``mu`` and standard deviation ``sigma``
  of the global norm and treats the part of ``g`` over ``mu + z * sigma`` as
  the global component (``G = (1 - c) * g``, ``c = min(1, threshold / ||g||)``).
  The statistics are fed the clipped norm, so a spike cannot raise the bar for
  the next one. During the first ``warmup`` steps only the caps apply.

  **Drift and bursts.** Gradient norms drift several-fold over a run; the
  statistics follow such a drift, while a burst of one step or a few is cut to
  the threshold, its direction kept. ``z`` sets how far the noise's own tail
  may reach before it is clipped; the README's section on the guard gives what
  each setting clips, as ``tests/spike_excess/test_drift.py`` measures it.

  **What bounds the step.** Two caps bound the threshold:

  - ``max_ratio`` (relative, on by default): the threshold never exceeds
    ``max_ratio`` times ``norm_mean``, the running mean of the guarded
    (clipped) norms before the step. It is never frozen, and since the mean is
    fed clipped norms it rises by at most a factor
    ``1 + (1 - decay) * (max_ratio - 1)`` per step however large the
    gradients grow.
  - ``max_norm`` (absolute, off by default): as ZClip's reference code does.

  The first step has no statistics and passes. A finite gradient whose
  squared norm overflows the float32 sum is measured again, rescaled, and cut
  like any other spike. Non-finite steps count as spikes and leave the
  statistics and the cap unchanged. ZClip's reference setting is
  ``spike_excess(z=2.5, max_ratio=None, max_norm=1.0)``.

  **Skipping.** With ``on_spike="skip"`` a step whose norm exceeds the
  threshold (or is not finite) becomes wholly global (``local = 0``,
  ``G = g``), so :func:`optax_split.guard` and ``scale_global(0.0)``, which
  drop the global branch, turn it into a zero gradient, as MaxText's
  ``skip_step_on_spikes`` and Levanter's ``SkipStepConfig`` do. Unlike
  ``optax.apply_if_finite`` the later stages still run on that zero gradient,
  so their moments keep moving the params. The statistics are fed the
  skipped step's clipped norm, as a clipped step's: one burst is skipped whole
  and lifts the threshold no more than a clipped one, and a norm that rises
  for good lifts it step by step until its steps pass again. (Up to 0.5.0 a
  skipped norm did not feed them, so such a run skipped every later step.)

  Diagnostics in the state: ``norm`` (seen before clipping), ``threshold`` (in
  force at the last step), ``cap`` and ``spike_count``; :func:`diagnostics`
  collects them.

  Args:
    z: How many standard deviations above the mean a norm may go.
    decay: Decay of the EMA statistics after warm-up, in ``[0, 1)``.
    warmup: Steps (at least 1) of plain averaging before the adaptive threshold
      applies.
    max_ratio: Cap on the threshold as a multiple of the running mean of the
      guarded norms, at least 1, or None for no relative cap.
    max_norm: Optional absolute cap on the threshold, at least 0.
    on_spike: ``"clip"`` (the default) takes the part over the threshold as
      ``G``; ``"skip"`` takes the whole step as ``G``. Both feed the
      statistics the clipped norm.

  Returns:
    A :class:`Decomposition` for :func:`optax_split.split`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_split
    >>> tx = optax_split.split(optax_split.spike_excess(warmup=3))
    >>> state = tx.init(jnp.zeros(2))
    >>> for g in ([1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [30.0, 40.0]):
    ...   parts, state = tx.update(jnp.array(g), state)
    >>> print(round(float(optax.tree.norm(parts.local)), 3), state.decomposition.spike_count)
    1.0 1
    >>> print(state.decomposition.norm, state.decomposition.cap)
    50.0 10.0

    Skipping instead of clipping: the spike step is wholly global.

    >>> tx = optax_split.split(optax_split.spike_excess(warmup=3, on_spike="skip"))
    >>> state = tx.init(jnp.zeros(2))
    >>> for g in ([1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [30.0, 40.0]):
    ...   parts, state = tx.update(jnp.array(g), state)
    >>> print(parts.local, parts.global_, state.decomposition.spike_count)
    [0. 0.] [30. 40.] 1
    >>> print(state.decomposition.count)  # its clipped norm fed the statistics
    4

  References:
    Kumar et al., `ZClip: Adaptive Spike Mitigation for LLM Pre-Training
    <https://arxiv.org/abs/2504.02507>`_, 2025.
  """
  return SpikeExcess(z, decay, warmup, max_ratio, max_norm, on_spike)
