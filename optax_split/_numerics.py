"""Small numerical helpers shared by the decompositions and transformations."""

from typing import Any

import jax
import jax.numpy as jnp


def accumulation_dtype(dtype: Any) -> jnp.dtype:
  """The dtype in which sums over a leaf of ``dtype`` are accumulated.

  Half-precision leaves are summed in float32 so that squared norms neither
  overflow nor lose the small terms; float64 stays float64.
  """
  return jnp.promote_types(dtype, jnp.float32)


def squared_norm(x: jax.Array, axis: Any = None, keepdims: bool = False) -> jax.Array:
  """Sum of squares of ``x`` over ``axis``, accumulated in a safe dtype."""
  x = jnp.asarray(x, accumulation_dtype(x.dtype))
  return jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims)


def tree_squared_norm(tree: Any) -> jax.Array:
  """Squared global norm of a pytree, accumulated in a safe dtype.

  The sum is finite exactly when every element is finite and no square
  overflows, so it also serves as the "is this step usable" test.
  """
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros([], jnp.float32)
  return sum(squared_norm(leaf) for leaf in leaves)


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """``numerator / denominator`` where the denominator is positive, else 0.

  The inner ``where`` keeps the untaken branch finite, so gradients through
  this function stay finite too.
  """
  positive = denominator > 0
  return jnp.where(positive, numerator / jnp.where(positive, denominator, 1), 0)


def kept_fraction(norm: jax.Array, threshold: jax.Array) -> jax.Array:
  """``min(1, threshold / norm)``: the fraction of a vector within a norm budget.

  Finite for a zero norm and for a zero threshold (then nothing is kept),
  unlike ``g / ||g|| * threshold``.
  """
  return jnp.where(norm > threshold, safe_divide(threshold, norm), 1)
