"""Decompositions: each picks the global component ``G`` of an updates pytree.

The local component is the rest, ``l = g - G``; :func:`optax_split.split` forms
it. A decomposition is a small frozen object, not a callable, so that
``optax.inject_hyperparams`` treats it as a static argument rather than a
schedule.
"""

import abc
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_split import _numerics, _validation

# The statistics of the adaptive decompositions live in float32 whatever the
# params' dtype, so that the state's dtypes never depend on the updates.
_STAT_DTYPE = jnp.float32


class Decomposition(abc.ABC):
  """Picks the global component of an updates pytree.

  Subclasses implement :meth:`init` and :meth:`decompose`; see
  :class:`NormExcess` for a minimal one.
  """

  @abc.abstractmethod
  def init(self, params: optax.Params) -> Any:
    """Returns the initial state (an ``optax.EmptyState`` when stateless)."""

  @abc.abstractmethod
  def decompose(
      self, updates: optax.Updates, state: Any, params: optax.Params | None
  ) -> tuple[optax.Updates, optax.Updates, Any, jax.Array]:
    """Returns ``(local, global_, new_state, global_share)``.

    ``local + global_`` equals ``updates`` to rounding, and both have the
    structure, shapes and dtypes of ``updates``. Each decomposition forms the
    two parts in the most accurate way it can (a clipped part is ``c * g``,
    not ``g - (1 - c) * g``, which cancels catastrophically in low precision).
    ``global_share`` is ``||global_||^2 / ||updates||^2`` (0 for zero updates),
    a float32 scalar computed as cheaply as the decomposition allows.
    """


def _share(global_sq: jax.Array, total_sq: jax.Array) -> jax.Array:
  return _numerics.safe_divide(global_sq, total_sq).astype(_STAT_DTYPE)


def _map_unzip(fn, n: int, tree: Any, *rest: Any) -> tuple[Any, ...]:
  """``jax.tree.map`` for a ``fn`` that returns an ``n``-tuple: a tuple of trees."""
  outer = jax.tree.structure(tree)
  parts = outer.flatten_up_to(jax.tree.map(fn, tree, *rest))
  return tuple(outer.unflatten([part[i] for part in parts]) for i in range(n))


def _rest(updates: Any, global_: Any) -> Any:
  """The local part ``g - G``."""
  return jax.tree.map(lambda g, big_g: g - big_g, updates, global_)


def _clipped_split(updates: Any, kept: jax.Array) -> tuple[Any, Any]:
  """``(kept * g, (1 - kept) * g)`` leaf by leaf, keeping each leaf's dtype."""
  excess = 1 - kept
  local = jax.tree.map(lambda x: (kept * x).astype(x.dtype), updates)
  global_ = jax.tree.map(lambda x: (excess * x).astype(x.dtype), updates)
  return local, global_


# ------------------------------------------------------------------ mean ----


@dataclasses.dataclass(frozen=True)
class MeanComponent(Decomposition):
  """See :func:`mean_component`."""

  keep_axis: int = -1

  def init(self, params):
    del params
    return optax.EmptyState()

  def _leaf(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    if x.ndim <= 1:
      return jnp.zeros_like(x), jnp.zeros([], _numerics.accumulation_dtype(x.dtype))
    if not -x.ndim <= self.keep_axis < x.ndim:
      raise ValueError(
          f"mean_component(keep_axis={self.keep_axis}) does not fit a leaf of shape "
          f"{x.shape}. Choose keep_axis in [-{x.ndim}, {x.ndim}), e.g. -1 for Flax "
          "(in, out) kernels or 0 for PyTorch-style (out, in) ones."
      )
    keep = self.keep_axis % x.ndim
    reduce_axes = tuple(i for i in range(x.ndim) if i != keep)
    acc = _numerics.accumulation_dtype(x.dtype)
    mean = jnp.mean(x, axis=reduce_axes, keepdims=True, dtype=acc)
    # ||G||^2 for one unit is (its size) * mean^2: no second pass over G.
    unit_size = x.size // x.shape[keep]
    return jnp.broadcast_to(mean.astype(x.dtype), x.shape), unit_size * jnp.sum(
        jnp.square(mean)
    )

  def decompose(self, updates, state, params):
    del params
    global_, global_sq = _map_unzip(self._leaf, 2, updates)
    total_sq = _numerics.tree_squared_norm(updates)
    share = _share(sum(jax.tree.leaves(global_sq), 0.0), total_sq)
    return _rest(updates, global_), global_, state, share


def mean_component(keep_axis: int = -1) -> MeanComponent:
  """The per-unit mean of each leaf: gradient centralisation as a split.

  For a leaf with more than one dimension, ``G`` is the mean over every axis
  but ``keep_axis``, broadcast back; leaves with one dimension or none have
  ``G = 0``. With ``alpha = -1`` and ``keep_axis = 0`` the split step equals
  ``optax.centralize()``. The default ``-1`` suits Flax kernels, whose output
  units sit on the last axis (``(in, out)`` and ``(h, w, in, out)``).

  Args:
    keep_axis: The axis whose entries are the units; the mean runs over the
      others.

  Returns:
    A :class:`Decomposition` for :func:`optax_split.split`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_split
    >>> grads = {"w": jnp.array([[1.0, 2.0], [3.0, 6.0]])}
    >>> tx = optax_split.split(optax_split.mean_component())
    >>> parts, _ = tx.update(grads, tx.init(grads))
    >>> print(parts.global_["w"])
    [[2. 4.]
     [2. 4.]]

  References:
    Yong et al., `Gradient Centralization: A New Optimization Technique for Deep
    Neural Networks <https://arxiv.org/abs/2004.01461>`_, 2020.
  """
  if not isinstance(keep_axis, int) or isinstance(keep_axis, bool):
    raise TypeError(f"`keep_axis` must be an int, got {keep_axis!r}. E.g. mean_component(-1).")
  return MeanComponent(keep_axis)


# ----------------------------------------------------------------- trend ----


class TrendState(NamedTuple):
  """State of :func:`trend_component`.

  Attributes:
    count: Number of steps seen (int32).
    trend: The slow exponential moving average of the updates, params-shaped.
  """

  count: jax.Array
  trend: optax.Updates


@dataclasses.dataclass(frozen=True)
class TrendComponent(Decomposition):
  """See :func:`trend_component`."""

  decay: float = 0.98

  def init(self, params):
    return TrendState(count=jnp.zeros([], jnp.int32), trend=optax.tree.zeros_like(params))

  def decompose(self, updates, state, params):
    del params
    first = state.count == 0

    def leaf(g, m):
      # Like Grokfast, the average starts at the first gradient, not at zero.
      previous = jnp.where(first, g.astype(m.dtype), m)
      new = (self.decay * previous + (1 - self.decay) * g).astype(m.dtype)
      # A non-finite element must not poison its average for later steps. The
      # guard is per element, so the step reads the old average once and XLA
      # updates it in place: no extra pass over the updates to test them first.
      return jnp.where(jnp.isfinite(g), new, m)

    trend = jax.tree.map(leaf, updates, state.trend)
    global_ = jax.tree.map(lambda m, g: m.astype(g.dtype), trend, updates)
    count = optax.safe_increment(state.count)
    # Only for the diagnostic: without it the compiled step drops these sums.
    share = _share(_numerics.tree_squared_norm(global_), _numerics.tree_squared_norm(updates))
    return _rest(updates, global_), global_, TrendState(count=count, trend=trend), share


def trend_component(decay: float = 0.98) -> TrendComponent:
  """The slow trend of the updates: an exponential moving average.

  ``G_t = m_t = decay * m_{t-1} + (1 - decay) * g_t``, with ``m`` started at
  the first gradient. With ``alpha = lambda`` the split step is Grokfast-EMA,
  ``g + lambda * m_t``. A non-finite element of the updates leaves its entry of
  ``m`` unchanged (the rest of the step updates as usual), so NaN or Inf never
  enters the average. State: one params-shaped buffer and a counter.

  Args:
    decay: The EMA's decay, in ``[0, 1)``; larger is slower.

  Returns:
    A :class:`Decomposition` for :func:`optax_split.split`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_split
    >>> tx = optax_split.split(optax_split.trend_component(decay=0.5))
    >>> state = tx.init(jnp.zeros(2))
    >>> parts, state = tx.update(jnp.array([2.0, 0.0]), state)
    >>> parts, state = tx.update(jnp.array([0.0, 2.0]), state)
    >>> print(parts.global_)
    [1. 1.]

  References:
    Lee et al., `Grokfast: Accelerated Grokking by Amplifying Slow Gradients
    <https://arxiv.org/abs/2405.20233>`_, 2024.
  """
  _validation.check_range(
      "decay", decay, low=0.0, high=1.0, high_inclusive=False,
      fix="E.g. trend_component(decay=0.98).",
  )
  return TrendComponent(decay)


# ---------------------------------------------------------- norm excess ----


@dataclasses.dataclass(frozen=True)
class NormExcess(Decomposition):
  """See :func:`norm_excess`."""

  max_norm: float

  def init(self, params):
    del params
    return optax.EmptyState()

  def decompose(self, updates, state, params):
    del params
    norm = jnp.sqrt(_numerics.tree_squared_norm(updates))
    kept = _numerics.kept_fraction(norm, self.max_norm)
    local, global_ = _clipped_split(updates, kept)
    return local, global_, state, jnp.square(1 - kept).astype(_STAT_DTYPE)


def norm_excess(max_norm: float) -> NormExcess:
  """The part of the updates over a global-norm budget.

  ``G = (1 - c) * g`` with ``c = min(1, max_norm / ||g||)``, so the local part
  ``c * g`` is ``g`` clipped to ``max_norm``. With ``alpha = -1`` the split step
  equals ``optax.clip_by_global_norm(max_norm)``, but it stays finite for a
  zero gradient (also with ``max_norm = 0``).

  Args:
    max_norm: The global-norm budget, at least 0.

  Returns:
    A :class:`Decomposition` for :func:`optax_split.split`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_split
    >>> tx = optax_split.split(optax_split.norm_excess(max_norm=2.5))
    >>> grads = jnp.array([3.0, 4.0])
    >>> parts, _ = tx.update(grads, tx.init(grads))
    >>> print(parts.local, parts.global_)
    [1.5 2. ] [1.5 2. ]

  References:
    Pascanu et al., `On the difficulty of training Recurrent Neural Networks
    <https://arxiv.org/abs/1211.5063>`_, 2013.
  """
  _validation.check_range(
      "max_norm", max_norm, low=0.0, fix="E.g. norm_excess(max_norm=1.0)."
  )
  return NormExcess(max_norm)


# --------------------------------------------------------- spike excess ----


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
class SpikeExcess(Decomposition):
  """See :func:`spike_excess`."""

  z: float = 2.5
  decay: float = 0.97
  warmup: int = 25
  max_norm: float | None = None

  def init(self, params):
    del params
    zero = jnp.zeros([], _STAT_DTYPE)
    return SpikeExcessState(
        count=jnp.zeros([], jnp.int32),
        norm_mean=zero,
        norm_var=zero,
        threshold=jnp.asarray(self._cap(), _STAT_DTYPE),
        spike_count=jnp.zeros([], jnp.int32),
    )

  def _cap(self) -> float:
    return float("inf") if self.max_norm is None else self.max_norm

  def decompose(self, updates, state, params):
    del params
    norm = jnp.sqrt(_numerics.tree_squared_norm(updates))
    stat_norm = norm.astype(_STAT_DTYPE)
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
    weight = jnp.where(in_warmup, 1 / count.astype(_STAT_DTYPE), 1 - self.decay)
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
    local, global_ = _clipped_split(updates, kept)
    return local, global_, new_state, jnp.square(1 - kept).astype(_STAT_DTYPE)


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


# ---------------------------------------------------------- unit excess ----


def _unit_axes(x: jax.Array) -> tuple[int, ...]:
  """Axes that make one unit, as in ``optax.adaptive_grad_clip``."""
  if x.ndim <= 1:
    return tuple(range(x.ndim))
  if x.ndim <= 3:
    return (0,)
  if x.ndim <= 5:
    return tuple(range(x.ndim - 1))
  raise ValueError(
      f"unit_excess does not know the units of a leaf of shape {x.shape}. Reshape "
      "it, or leave it out with optax.masked(...)."
  )


@dataclasses.dataclass(frozen=True)
class UnitExcess(Decomposition):
  """See :func:`unit_excess`."""

  clipping: float = 0.01
  eps: float = 1e-3

  def init(self, params):
    del params
    return optax.EmptyState()

  def _leaf(self, g: jax.Array, p: jax.Array) -> tuple[jax.Array, ...]:
    axes = _unit_axes(g)
    g_sq = _numerics.squared_norm(g, axis=axes, keepdims=True)
    p_norm = jnp.sqrt(_numerics.squared_norm(p, axis=axes, keepdims=True))
    budget = self.clipping * jnp.maximum(p_norm, self.eps)
    kept = _numerics.kept_fraction(jnp.sqrt(g_sq), budget)
    local = (kept * g).astype(g.dtype)
    global_ = ((1 - kept) * g).astype(g.dtype)
    # Both sums in one reduction: XLA would rewrite a lone sum of ``g_sq`` into a
    # second full pass over the squares of ``g``.
    sums = jnp.stack([jnp.square(1 - kept) * g_sq, g_sq]).reshape(2, -1).sum(axis=1)
    global_sq, total_sq = sums[0], sums[1]
    return local, global_, global_sq, total_sq

  def decompose(self, updates, state, params):
    if params is None:
      raise ValueError(
          "unit_excess needs the params, to set each unit's budget from its weight "
          "norm. Pass them: tx.update(grads, state, params)."
      )
    local, global_, global_sq, total_sq = _map_unzip(self._leaf, 4, updates, params)
    share = _share(sum(jax.tree.leaves(global_sq), 0.0), sum(jax.tree.leaves(total_sq), 0.0))
    return local, global_, state, share


def unit_excess(clipping: float = 0.01, eps: float = 1e-3) -> UnitExcess:
  """The part of each unit's update over a budget set by its weight norm.

  For each unit (the rows of a ``(in, out)`` kernel's output column, a conv
  filter, a whole bias), ``G = (1 - c) * g`` with
  ``c = min(1, clipping * max(||W||, eps) / ||g||)``. With ``alpha = -1`` the
  split step equals ``optax.adaptive_grad_clip(clipping, eps)`` (AGC). Needs
  ``params`` in ``update``.

  Args:
    clipping: Largest allowed ratio of a unit's update norm to its weight norm.
    eps: Floor on the weight norm, so zero-initialised units can move.

  Returns:
    A :class:`Decomposition` for :func:`optax_split.split`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_split
    >>> tx = optax_split.split(optax_split.unit_excess(clipping=0.1))
    >>> params, grads = jnp.array([3.0, 4.0]), jnp.array([1.0, 0.0])
    >>> parts, _ = tx.update(grads, tx.init(params), params)
    >>> print(parts.local)
    [0.5 0. ]

  References:
    Brock et al., `High-Performance Large-Scale Image Recognition Without
    Normalization <https://arxiv.org/abs/2102.06171>`_, 2021.
  """
  _validation.check_range(
      "clipping", clipping, low=0.0, low_inclusive=False, fix="E.g. unit_excess(clipping=0.01)."
  )
  _validation.check_range("eps", eps, low=0.0, fix="E.g. unit_excess(eps=1e-3).")
  return UnitExcess(clipping, eps)
