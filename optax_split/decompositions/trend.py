"""``trend_component``: the slow EMA of the updates, Grokfast-EMA as a split."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_split import _numerics, _validation
from optax_split.decompositions import base


class TrendState(NamedTuple):
  """State of :func:`trend_component`.

  Attributes:
    count: Number of steps seen (int32).
    trend: The slow exponential moving average of the updates, params-shaped.
  """

  count: jax.Array
  trend: optax.Updates


@dataclasses.dataclass(frozen=True)
class TrendComponent(base.Decomposition):
  """See :func:`trend_component`."""

  decay: float = 0.98

  def __post_init__(self):
    _validation.check_range(
        "decay", self.decay, low=0.0, high=1.0, high_inclusive=False,
        fix="E.g. trend_component(decay=0.98).",
    )

  def init(self, params):
    return TrendState(count=jnp.zeros([], jnp.int32), trend=optax.tree.zeros_like(params))

  def decompose(self, updates, state, params):
    del params
    # Like Grokfast, the average starts at the first gradient, not at zero: the
    # weights are scalars, (0, 1) at the first step (when the average is still
    # init's zeros) and (decay, 1 - decay) after it, so no per-element select
    # is spent on the start.
    first = state.count == 0

    def leaf(g, m):
      keep = jnp.where(first, 0, jnp.asarray(self.decay, m.dtype))
      take = jnp.where(first, 1, jnp.asarray(1 - self.decay, m.dtype))
      new = keep * m + take * g.astype(m.dtype)
      # A non-finite element must not poison its average for later steps. The
      # guard is per element (one compare and one select in the loop that
      # updates the average anyway), so the step reads the old average once,
      # XLA updates it in place, and no extra pass tests the updates first.
      return jnp.where(jnp.isfinite(g), new, m)

    trend = jax.tree.map(leaf, updates, state.trend)
    global_ = jax.tree.map(lambda m, g: m.astype(g.dtype), trend, updates)
    count = optax.safe_increment(state.count)
    # Only for the diagnostic: without it the compiled step drops these sums.
    share = base.share(_numerics.tree_squared_norm(global_), _numerics.tree_squared_norm(updates))
    return base.rest(updates, global_), global_, TrendState(count=count, trend=trend), share


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
  return TrendComponent(decay)
