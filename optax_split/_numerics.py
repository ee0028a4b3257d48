"""Small numerical helpers shared by the decompositions and transformations."""

import functools
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


def tree_norm(tree: Any) -> jax.Array:
  """Global norm of a pytree that stays finite when only its square overflows.

  A finite gradient of norm above about 1.8e19 overflows the float32 sum of
  squares; only then (``lax.cond``: no cost on other steps) the norm is taken
  again, each leaf scaled by its own largest magnitude. It is inf or NaN
  exactly when an element is, or when the norm itself exceeds the dtype's range.
  """
  squared = tree_squared_norm(tree)

  def rescaled() -> jax.Array:
    dtype = squared.dtype
    leaves = [leaf.astype(dtype) for leaf in jax.tree.leaves(tree) if leaf.size]
    largest_each = [jnp.max(jnp.abs(leaf)) for leaf in leaves]
    largest = functools.reduce(jnp.maximum, largest_each, jnp.zeros([], dtype))
    scale = jnp.where((largest > 0) & jnp.isfinite(largest), largest, 1)

    def relative_squared_norm(leaf: jax.Array, most: jax.Array) -> jax.Array:
      # ||leaf||^2 / scale^2 from the leaf scaled by its own largest magnitude: a divisor
      # that depends on every leaf makes XLA's CPU backend hold a leaf-sized temporary
      # (tests/test_step_cost.py). Two multiplies by 1 / sqrt(most), because XLA turns a
      # division into a multiply by the reciprocal, and 1 / most is subnormal (flushed to
      # zero) for most above about 8.5e37.
      half = jax.lax.rsqrt(jnp.where(most > 0, most, 1))
      return squared_norm(leaf * half * half) * jnp.square(most / scale)

    scaled = sum(relative_squared_norm(leaf, most)
                 for leaf, most in zip(leaves, largest_each, strict=True))
    return jnp.where(jnp.isfinite(largest), scale * jnp.sqrt(scaled), largest + squared)

  return jax.lax.cond(squared == jnp.inf, rescaled, lambda: jnp.sqrt(squared))


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
