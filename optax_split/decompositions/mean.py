"""``mean_component``: the per-unit mean, gradient centralisation as a split."""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from optax_split import _numerics
from optax_split.decompositions import base


@dataclasses.dataclass(frozen=True)
class MeanComponent(base.Decomposition):
  """See :func:`mean_component`."""

  keep_axis: int = -1

  def __post_init__(self):
    if not isinstance(self.keep_axis, int) or isinstance(self.keep_axis, bool):
      raise TypeError(
          f"`keep_axis` must be an int, got {self.keep_axis!r}. E.g. mean_component(-1)."
      )

  def init(self, params):
    del params
    return optax.EmptyState()

  def _leaf(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    if x.ndim <= 1 or x.size == 0:
      # No units to average over (and the mean of a zero-size leaf would be NaN).
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
    global_, global_sq = base.map_unzip(self._leaf, 2, updates)
    total_sq = _numerics.tree_squared_norm(updates)
    share = base.share(sum(jax.tree.leaves(global_sq), 0.0), total_sq)
    return base.rest(updates, global_), global_, state, share


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
  return MeanComponent(keep_axis)
