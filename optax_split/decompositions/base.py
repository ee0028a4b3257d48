"""The decomposition interface and the helpers the built-in ones share.

A decomposition picks the global component ``G`` of an updates pytree; the
local component is the rest, ``l = g - G``. A decomposition is a small frozen
object, not a callable, so that ``optax.inject_hyperparams`` treats it as a
static argument rather than a schedule.
"""

import abc
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_split import _numerics

# The statistics of the adaptive decompositions live in float32 whatever the
# params' dtype, so that the state's dtypes never depend on the updates.
STAT_DTYPE = jnp.float32


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


def share(global_sq: jax.Array, total_sq: jax.Array) -> jax.Array:
  """``||G||^2 / ||g||^2`` as a float32 scalar, 0 for zero updates."""
  return _numerics.safe_divide(global_sq, total_sq).astype(STAT_DTYPE)


def map_unzip(fn, n: int, tree: Any, *rest: Any) -> tuple[Any, ...]:
  """``jax.tree.map`` for a ``fn`` that returns an ``n``-tuple: a tuple of trees."""
  outer = jax.tree.structure(tree)
  parts = outer.flatten_up_to(jax.tree.map(fn, tree, *rest))
  return tuple(outer.unflatten([part[i] for part in parts]) for i in range(n))


def rest(updates: Any, global_: Any) -> Any:
  """The local part ``g - G``."""
  return jax.tree.map(lambda g, big_g: g - big_g, updates, global_)


def clipped_split(updates: Any, kept: jax.Array) -> tuple[Any, Any]:
  """``(kept * g, (1 - kept) * g)`` leaf by leaf, keeping each leaf's dtype."""
  excess = 1 - kept
  local = jax.tree.map(lambda x: (kept * x).astype(x.dtype), updates)
  global_ = jax.tree.map(lambda x: (excess * x).astype(x.dtype), updates)
  return local, global_
