"""diagnostics(state): every diagnostic of a nested optimizer state under a stable name."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_split as osp

GUARD = {"guard/norm", "guard/threshold", "guard/cap", "guard/spike_count"}


def _stepped(tx, grads, params):
  _, state = tx.update(grads, tx.init(params), params)
  return state


@pytest.mark.parametrize("preset", [osp.split_sgd, osp.split_adam])
@pytest.mark.parametrize("global_share", [True, False])
def test_the_presets_names_at_their_defaults(preset, global_share, grads, params):
  state = _stepped(preset(0.1, global_share=global_share), grads, params)
  got = osp.diagnostics(state)
  assert set(got) == GUARD | ({"split/global_share"} if global_share else set())
  for value in got.values():
    chex.assert_shape(value, ())
  chex.assert_type(got["guard/spike_count"], jnp.int32)
  np.testing.assert_allclose(got["guard/norm"], optax.tree.norm(grads), rtol=1e-6)


def test_no_guard_and_a_spike_excess_split(grads, params):
  tx = osp.split_sgd(0.1, guard=None, decomposition=osp.spike_excess(), global_share=True)
  got = osp.diagnostics(_stepped(tx, grads, params))
  assert list(got) == ["split/cap", "split/global_share", "split/norm", "split/spike_count",
                       "split/threshold"]


def test_grouped_guard_names_each_group(grads, params):
  tx = osp.split_sgd(0.1, guard=osp.grouped(osp.spike_excess()), global_share=False)
  got = osp.diagnostics(_stepped(tx, grads, params))
  labels = ["conv/kernel", "dense/bias", "dense/kernel", "scalar"]
  quantities = ["cap", "norm", "spike_count", "threshold"]
  assert list(got) == [f"guard/{label}/{q}" for label in labels for q in quantities]
  np.testing.assert_allclose(got["guard/dense/kernel/norm"],
                             jnp.linalg.norm(grads["dense"]["kernel"]), rtol=1e-6)


def test_nested_splits_are_numbered_in_chain_order(grads, params):
  tx = optax.chain(
      osp.split(osp.spike_excess(), global_share=True),
      osp.on_local(optax.chain(osp.split(osp.norm_excess(1.0), global_share=True),
                               osp.combine())),
      osp.combine(),
      osp.split(osp.mean_component(), global_share=False),
      osp.combine(),
  )
  got = osp.diagnostics(_stepped(tx, grads, params))
  assert list(got) == ["split/cap", "split/global_share", "split/norm", "split/spike_count",
                       "split/threshold", "split_2/global_share"]


def test_two_presets_in_one_chain(grads, params):
  tx = optax.chain(osp.split_sgd(0.1, global_share=False), osp.split_sgd(0.1, guard=None,
                                                                         global_share=False))
  assert set(osp.diagnostics(_stepped(tx, grads, params))) == GUARD


@pytest.mark.parametrize("wrap", ["inject_hyperparams", "multi_steps", "apply_if_finite",
                                  "partition", "dict"])
def test_found_inside_optax_wrappers(wrap, grads, params):
  if wrap == "inject_hyperparams":
    tx = optax.inject_hyperparams(osp.split_sgd)(learning_rate=0.1, alpha=1.0, global_share=True)
  elif wrap == "multi_steps":
    tx = optax.MultiSteps(osp.split_adam(0.1, global_share=True), every_k_schedule=2)
  elif wrap == "apply_if_finite":
    tx = optax.apply_if_finite(osp.split_sgd(0.1, global_share=True), max_consecutive_errors=3)
  elif wrap == "partition":
    tx = optax.partition({"a": osp.split_sgd(0.1, global_share=True), "b": optax.sgd(0.1)},
                         lambda p: jax.tree.map(lambda _: "a", p))
  else:
    tx = osp.split_sgd(0.1, global_share=True)
  state = _stepped(tx, grads, params)
  if wrap == "dict":
    state = {"opt_state": state, "step": jnp.zeros([], jnp.int32)}
  assert set(osp.diagnostics(state)) == GUARD | {"split/global_share"}


def test_jit_compatible_and_equal_to_eager(grads, params):
  tx = osp.split_adam(0.1, guard=osp.grouped(osp.spike_excess()), global_share=True)
  state = _stepped(tx, grads, params)

  @jax.jit
  def step(grads, state):
    _, state = tx.update(grads, state, params)
    return state, osp.diagnostics(state)

  state, logged = step(grads, state)
  eager = osp.diagnostics(state)
  assert list(logged) == list(eager)
  chex.assert_trees_all_equal(logged, eager)
  assert all(isinstance(v, jax.Array) for v in logged.values())


def test_stateless_chains_have_none():
  assert osp.diagnostics(optax.sgd(0.1).init(jnp.zeros(2))) == {}


def test_flax_nnx_optimizer_state():
  nnx = pytest.importorskip("flax.nnx")
  model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, osp.split_adam(1.0, global_share=True), wrt=nnx.Param)
  got = osp.diagnostics(optimizer.opt_state)
  assert set(got) == GUARD | {"split/global_share"}
  assert all(isinstance(v, jax.Array) for v in got.values())
