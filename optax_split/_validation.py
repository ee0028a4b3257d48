"""Argument checks that fail early, name the argument and show the fix."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def concrete_value(value: Any) -> np.ndarray | None:
  """``value`` as a NumPy array, or None when it is traced (unknown until run time)."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return np.asarray(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def check_range(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    fix: str,
) -> None:
  """Raises ValueError when a concrete ``value`` lies outside ``[low, high]``.

  Traced values (for instance under ``optax.inject_hyperparams`` inside ``jit``)
  are not checked: their value is not known when the transformation is built.
  """
  array = concrete_value(value)
  if array is None:
    return
  if jnp.issubdtype(array.dtype, jnp.floating):
    # Also bfloat16 and float8, which NumPy does not count as floats: what
    # optax.inject_hyperparams makes of a hyperparameter for low-precision params.
    array = array.astype(np.float64)
  elif array.dtype.kind not in "biu":
    raise TypeError(f"`{name}` must be a real number, got {value!r}. {fix}")
  bad = np.zeros(array.shape, bool)
  if low is not None:
    bad |= (array < low) if low_inclusive else (array <= low)
  if high is not None:
    bad |= (array > high) if high_inclusive else (array >= high)
  bad |= np.isnan(array)
  if np.any(bad):
    left = "[" if low_inclusive else "("
    right = "]" if high_inclusive else ")"
    interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    raise ValueError(f"`{name}` must lie in {interval}, got {value!r}. {fix}")


def as_arrays(tree: Any) -> Any:
  """``tree`` with every leaf a JAX array: Python numbers and NumPy arrays converted.

  optax's own transformations accept such leaves; the decompositions read
  ``.dtype`` and ``.ndim``. A no-op for JAX arrays and tracers.
  """
  return jax.tree.map(jnp.asarray, tree)


def check_float_leaves(tree: Any, *, what: str, caller: str) -> None:
  """Raises TypeError if any leaf of ``tree`` is not a real floating array."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      where = jax.tree_util.keystr(path) or "the leaf"
      raise TypeError(
          f"{caller} needs real floating-point {what}, but {what}{where} has dtype "
          f"{dtype}. Cast integer leaves to a float dtype, keep complex parameters as "
          "separate real and imaginary parts, or exclude such leaves with "
          "optax.masked(...) / optax.partition(...)."
      )


def check_same_structure(updates: Any, params: Any, *, caller: str) -> None:
  """Raises ValueError if ``params`` is given and does not match ``updates``."""
  if params is None:
    return
  updates_def = jax.tree.structure(updates)
  params_def = jax.tree.structure(params)
  if updates_def != params_def:
    raise ValueError(
        f"{caller} got `updates` and `params` with different tree structures:\n"
        f"  updates: {updates_def}\n  params:  {params_def}\n"
        "Pass the params that the updates are for: tx.update(grads, state, params)."
    )
