"""The public guard: the presets' ZClip-style clip as a transformation of its own."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_split as osp
from conftest import model_tree


def _run(tx, grads_seq, params):
  state = tx.init(params)
  for grads in grads_seq:
    updates, state = tx.update(grads, state, params)
  return updates, state


@pytest.mark.parametrize("decomposition", [osp.spike_excess(warmup=3), osp.norm_excess(1.0),
                                           osp.grouped(osp.spike_excess(warmup=3))])
def test_guard_is_the_local_part_of_the_split(decomposition):
  params = model_tree(jax.random.key(0))
  grads_seq = [model_tree(jax.random.key(i), scale=1.0 + 30.0 * (i == 5)) for i in range(1, 7)]
  guarded, _ = _run(osp.guard(decomposition), grads_seq, params)
  dropped, _ = _run(optax.chain(osp.split(decomposition), osp.scale_global(0.0), osp.combine()),
                    grads_seq, params)
  chex.assert_trees_all_equal(guarded, dropped)


def test_guard_defaults_to_the_presets_guard_and_reports_as_guard():
  params = {"w": jnp.zeros(2)}
  tx = optax.chain(osp.guard(), optax.sgd(0.1))
  state = tx.init(params)
  assert state[0].decomposition == osp.defaults.GUARD.init(params)
  calm = [jnp.array([1.0, 0.0]), jnp.array([0.0, 1.2]), jnp.array([0.8, 0.0])] * 10
  for g in [*calm, jnp.array([300.0, 400.0])]:
    updates, state = tx.update({"w": g}, state, params)
  names = osp.diagnostics(state)
  assert set(names) == {"guard/cap", "guard/norm", "guard/spike_count", "guard/threshold"}
  assert int(names["guard/spike_count"]) == 1
  np.testing.assert_allclose(optax.tree.norm(updates), 0.1 * names["guard/threshold"],
                             rtol=1e-6)


def test_guard_skips_a_non_finite_step_under_jit():
  tx = osp.guard(osp.spike_excess(warmup=2, on_spike="skip"))
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g in ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [jnp.nan, 1.0, 0.0], [jnp.inf, 0.0, 0.0]):
    updates, state = update({"w": jnp.array(g)}, state, params)
    chex.assert_tree_all_finite(updates)
  chex.assert_trees_all_equal(updates, {"w": jnp.zeros(3)})
  assert int(state.decomposition.spike_count) == 2


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_guard_keeps_dtypes_and_compiles_once(dtype):
  params = model_tree(jax.random.key(0), jnp.dtype(dtype))
  grads = model_tree(jax.random.key(1), jnp.dtype(dtype))
  tx = osp.guard()
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state):
    return tx.update(grads, state, params)

  state = tx.init(params)
  for _ in range(3):
    updates, state = step(state)
  chex.assert_trees_all_equal_dtypes(updates, grads)
  chex.assert_trees_all_equal_shapes(updates, grads)


def test_guard_refuses_what_is_not_a_decomposition():
  with pytest.raises(TypeError, match=r"guard\(\): `decomposition` must be a decomposition"):
    osp.guard(1.0)
  with pytest.raises(TypeError, match="integer"):
    osp.guard().update({"w": jnp.ones(2, jnp.int32)}, osp.guard().init({"w": jnp.zeros(2)}))


def test_skipping_follows_a_lasting_rise_and_skips_a_burst():
  # Norms about 1, one burst of 100, then about 10 for good. Each skipped step feeds its clipped
  # norm to the statistics, so the threshold follows the lasting rise and its steps pass again;
  # statistics frozen on a skip (0.5.0) would skip every step after the rise.
  tx = jax.jit(osp.guard(osp.spike_excess(on_spike="skip")).update)
  state = osp.guard(osp.spike_excess(on_spike="skip")).init(jnp.zeros(2))
  rng = np.random.default_rng(0)
  norms = [*(1 + 0.1 * rng.standard_normal(60)), 100.0, *(10 + rng.standard_normal(200))]
  passed = []
  for norm in norms:
    updates, state = tx(jnp.array([norm, 0.0], jnp.float32), state)
    passed.append(bool(jnp.any(updates != 0)))
  assert passed[40:60] == [True] * 20
  assert not passed[60]  # the burst, skipped whole
  assert not passed[61]  # the first steps of the rise are skipped too
  assert all(passed[-100:])  # then the threshold has followed it
