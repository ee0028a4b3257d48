"""Shared fixtures: small parameter trees of the shapes that models have."""

import contextlib

import jax
import jax.numpy as jnp
import pytest

import optax_split as osp

DTYPES = ("float16", "bfloat16", "float32", "float64")


# Every built-in decomposition at its defaults, for the integration tests.
BUILT_IN_DECOMPOSITIONS = {
    "mean_component": osp.mean_component(),
    "trend_component": osp.trend_component(),
    "norm_excess": osp.norm_excess(max_norm=1.0),
    "spike_excess": osp.spike_excess(),
    "unit_excess": osp.unit_excess(),
}


# The presets' alpha with each built-in decomposition on their step: their default (-1, the
# excess over a budget dropped) for the excess-type ones; 1 for the trend and the mean, whose
# drop would remove the very direction that converges.
PRESET_ALPHA = {"trend_component": 1.0, "mean_component": 1.0}


def preset_alpha(decomposition: str) -> float:
  return PRESET_ALPHA.get(decomposition, -1.0)


@contextlib.contextmanager
def dtype_context(dtype: str):
  """float64 needs JAX's x64 mode; the other dtypes run in the default mode."""
  with jax.enable_x64(dtype == "float64"):
    yield jnp.dtype(dtype)


def model_tree(key: jax.Array, dtype=jnp.float32, scale: float = 1.0) -> dict:
  """A pytree with a conv kernel, a dense kernel, a bias and a scalar."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  tree = {
      "conv": {"kernel": jax.random.normal(k1, (3, 3, 2, 4))},
      "dense": {"kernel": jax.random.normal(k2, (5, 3)), "bias": jax.random.normal(k3, (3,))},
      "scalar": jax.random.normal(k4, ()),
  }
  return jax.tree.map(lambda x: (scale * x).astype(dtype), tree)


@pytest.fixture
def params():
  return model_tree(jax.random.PRNGKey(0))


@pytest.fixture
def grads():
  return model_tree(jax.random.PRNGKey(1))


def guard_state(state):
  """The state of the one :func:`optax_split.guard` inside an optimizer state (a preset's)."""
  is_guard = lambda x: isinstance(x, osp.GuardState)  # noqa: E731
  (found,) = [x for x in jax.tree.leaves(state, is_leaf=is_guard) if is_guard(x)]
  return found.decomposition
