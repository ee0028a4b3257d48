"""Gradient accumulation: under ``optax.MultiSteps`` the guard sees one step per k micro-steps.

``optax.MultiSteps(tx, every_k_schedule=k)`` averages k micro-gradients and calls the
inner optimizer once, on their mean. So the statistics of the presets' guard
(``spike_excess``) advance once per real step, fed the norm of the mean gradient, not of
each micro-gradient.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_split as osp

EVERY_K = 3
NUM_REAL_STEPS = 4
PRESETS = {
    "split_sgd": lambda: osp.split_sgd(1.0, momentum=0.9, guard=osp.spike_excess(warmup=2)),
    "split_adam": lambda: osp.split_adam(1.0, guard=osp.spike_excess(warmup=2)),
}


def _guard_state(state) -> osp.SpikeExcessState:
  guards = [s for s in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, osp.SpikeExcessState))
      if isinstance(s, osp.SpikeExcessState)]
  assert len(guards) == 1
  return guards[0]


def _micro_grads(step: int) -> dict:
  """Micro-gradients whose norms differ from their mean's (they partly cancel)."""
  rng = np.random.default_rng(step)
  scale = 1.0 + 10.0 * (step % 5 == 4)  # a spike now and then
  return {"kernel": jnp.asarray(scale * rng.standard_normal((3, 4)), jnp.float32),
          "bias": jnp.asarray(scale * rng.standard_normal(4), jnp.float32)}


@pytest.mark.parametrize("preset", PRESETS)
def test_guard_advances_once_per_k_micro_steps_on_the_mean_gradient(preset):
  tx = optax.MultiSteps(PRESETS[preset](), every_k_schedule=EVERY_K)
  params = {"kernel": jnp.ones((3, 4), jnp.float32), "bias": jnp.zeros(4, jnp.float32)}
  update = jax.jit(tx.update)
  state = tx.init(params)
  window = []
  for step in range(EVERY_K * NUM_REAL_STEPS):
    grads = _micro_grads(step)
    window.append(grads)
    before = _guard_state(state)
    updates, state = update(grads, state, params)
    guard = _guard_state(state)
    real_steps = (step + 1) // EVERY_K
    assert int(guard.count) == real_steps
    if len(window) < EVERY_K:
      # Accumulating: the guard's state and the params do not move.
      chex.assert_trees_all_equal(guard, before)
      chex.assert_trees_all_equal(updates, optax.tree.zeros_like(params))
      continue
    mean = jax.tree.map(lambda *g: sum(g) / EVERY_K, *window)
    micro_norms = [float(optax.tree.norm(g)) for g in window]
    window = []
    np.testing.assert_allclose(float(guard.norm), float(optax.tree.norm(mean)), rtol=1e-5)
    assert all(abs(float(guard.norm) - n) > 1e-3 for n in micro_norms)
    params = optax.apply_updates(params, updates)
  chex.assert_tree_all_finite(params)
