"""grouped(): a decomposition per group of leaves, each with its own state."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_split as osp
from conftest import BUILT_IN_DECOMPOSITIONS, DTYPES, dtype_context, model_tree

# Small warm-up and a low cap so that the spike statistics act within a few steps.
DECOMPOSITIONS = dict(BUILT_IN_DECOMPOSITIONS, spike_excess=osp.spike_excess(warmup=2, z=1.0))


def _steps(key, n=4):
  """``n`` gradients of the model tree; the last one is a spike."""
  keys = jax.random.split(key, n)
  return [model_tree(k, scale=30.0 if i == n - 1 else 1.0) for i, k in enumerate(keys)]


def _run(tx, grads_list, params):
  state = tx.init(params)
  outs = []
  for grads in grads_list:
    out, state = tx.update(grads, state, params)
    outs.append(out)
  return outs, state


@pytest.mark.parametrize("name", sorted(DECOMPOSITIONS))
def test_per_leaf_groups_match_one_split_per_leaf(name, params):
  decomposition = DECOMPOSITIONS[name]
  grads_list = _steps(jax.random.PRNGKey(2))
  outs, state = _run(osp.split(osp.grouped(decomposition)), grads_list, params)

  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  for path, param in leaves:
    label = jax.tree_util.keystr(path, simple=True, separator="/")
    leaf_grads = [jax.tree_util.tree_flatten_with_path(g)[0] for g in grads_list]
    leaf_grads = [dict(g)[path] for g in leaf_grads]
    want, want_state = _run(osp.split(decomposition), leaf_grads, param)
    get = lambda tree, path=path: dict(jax.tree_util.tree_flatten_with_path(tree)[0])[path]  # noqa: E731
    for got_parts, want_parts in zip(outs, want, strict=True):
      chex.assert_trees_all_close(get(got_parts.local), want_parts.local, rtol=1e-6, atol=1e-7)
      chex.assert_trees_all_close(get(got_parts.global_), want_parts.global_, rtol=1e-6, atol=1e-7)
    inner = state.decomposition.groups[label]
    chex.assert_trees_all_close(
        jax.tree.leaves(inner), jax.tree.leaves(want_state.decomposition), rtol=1e-6
    )
  assert sorted(state.decomposition.groups) == ["conv/kernel", "dense/bias", "dense/kernel",
                                                 "scalar"]
  del treedef


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", sorted(DECOMPOSITIONS))
def test_one_group_is_bit_identical_to_the_inner_decomposition(name, jit, params):
  decomposition = DECOMPOSITIONS[name]
  one = osp.grouped(decomposition, lambda p: jax.tree.map(lambda _: "all", p))
  grads_list = _steps(jax.random.PRNGKey(3))
  maybe_jit = jax.jit if jit else (lambda f: f)
  results = []
  for d in (decomposition, one):
    tx = osp.split(d)
    update = maybe_jit(tx.update)
    state = tx.init(params)
    for grads in grads_list:
      parts, state = update(grads, state, params)
    results.append((parts, state))
  (want, want_state), (got, got_state) = results
  chex.assert_trees_all_equal(got, want)
  chex.assert_trees_all_equal(got_state.global_share, want_state.global_share)
  chex.assert_trees_all_equal(got_state.decomposition.groups["all"], want_state.decomposition)


def test_global_share_combines_the_groups(params, grads):
  grads = dict(grads, dense=jax.tree.map(lambda x: 10 * x, grads["dense"]))
  tx = osp.split(osp.grouped(osp.norm_excess(max_norm=1.0), {"conv": "a", "dense": "b",
                                                              "scalar": "a"}),
                 global_share=True)
  parts, state = tx.update(grads, tx.init(params), params)
  want = optax.tree.norm(parts.global_, squared=True) / optax.tree.norm(grads, squared=True)
  np.testing.assert_allclose(state.global_share, want, rtol=1e-5)
  assert sorted(state.decomposition.groups) == ["a", "b"]
  # Each group is clipped to its own budget.
  for key in ("conv", "dense"):
    assert float(optax.tree.norm(jax.tree.leaves(parts.local[key]))) <= 1.0 + 1e-5


def test_labels_by_module_give_per_module_statistics(params, grads):
  labels = lambda p: {k: k for k in p}  # noqa: E731  (a label per module: a prefix of p)
  tx = osp.split(osp.grouped(osp.spike_excess(), labels))
  _, state = tx.update(grads, tx.init(params), params)
  norms = {k: s.norm for k, s in state.decomposition.groups.items()}
  assert sorted(norms) == ["conv", "dense", "scalar"]
  for key, norm in norms.items():
    np.testing.assert_allclose(norm, optax.tree.norm(grads[key]), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_keeps_dtypes_and_compiles_once(dtype):
  chex.clear_trace_counter()
  with dtype_context(dtype) as dt:
    params = model_tree(jax.random.PRNGKey(0), dt)
    tx = optax.chain(osp.split(osp.grouped(osp.spike_excess())), osp.scale_global(0.0),
                     osp.combine())
    update = jax.jit(chex.assert_max_traces(tx.update, n=1))
    state = tx.init(params)
    for _ in range(2):
      updates, state = update(params, state, params)
    chex.assert_trees_all_equal_dtypes(updates, params)
    chex.assert_trees_all_equal_shapes(updates, params)


@pytest.mark.parametrize("preset", [osp.split_sgd, osp.split_adam])
def test_composes_with_the_presets_guard_and_decomposition(preset, params, grads):
  tx = preset(1.0, guard=osp.grouped(osp.spike_excess()),
              decomposition=osp.grouped(osp.unit_excess()))
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  chex.assert_tree_all_finite(updates)
  chex.assert_trees_all_equal_shapes(updates, params)


def test_mismatched_labels_name_the_argument(params):
  tx = osp.split(osp.grouped(osp.spike_excess(), {"conv": "a", "dense": "b"}))
  with pytest.raises(ValueError, match="(?s)`param_labels` does not match.*lambda p"):
    tx.init(params)


def test_per_leaf_labels_that_collide_name_the_fix():
  params = {"a/b": jnp.zeros(2), "a": {"b": jnp.zeros(2)}}
  with pytest.raises(ValueError, match="same key path label.*`param_labels`"):
    osp.split(osp.grouped(osp.spike_excess())).init(params)
  labels = lambda p: jax.tree_util.tree_map_with_path(  # noqa: E731
      lambda path, _: jax.tree_util.keystr(path), p)
  state = osp.split(osp.grouped(osp.spike_excess(), labels)).init(params)
  assert sorted(state.decomposition.groups) == ["['a']['b']", "['a/b']"]


def test_dict_labels_are_hashable_for_static_use():
  decomposition = osp.grouped(osp.spike_excess(), {"a": "x", "b": "y"})
  assert hash(decomposition) == hash(decomposition)


def test_misuse_fails_early():
  with pytest.raises(TypeError, match="expects a decomposition"):
    osp.grouped("spike")
  with pytest.raises(TypeError, match="`param_labels`"):
    osp.split(osp.grouped(osp.spike_excess(), lambda p: jax.tree.map(lambda _: 1.5, p))).init(
        jnp.zeros(2))


def test_the_share_of_several_groups_stays_finite_when_the_squares_overflow():
  # At 1e20 times the scale, ||g||^2 overflows float32 while every norm is finite: the
  # share must come out as at the normal scale, not as inf / inf.
  def share(scale):
    # At the first step only the absolute cap acts: spike_excess measures an overflowing
    # norm again, so each group's own share is right at both scales.
    guard = osp.spike_excess(warmup=1, max_ratio=None, max_norm=2.5 * scale)
    tx = osp.split(osp.grouped(guard), global_share=True)
    params = {"a": jnp.zeros(2), "b": jnp.zeros(3)}
    grads = {"a": jnp.array([3.0, 4.0]) * scale, "b": jnp.array([0.1, 0.0, 0.0]) * scale}
    _, state = tx.update(grads, tx.init(params), params)
    return optax.tree.get(state, "global_share")

  assert jnp.sum(jnp.square(jnp.float32(5e20))) == jnp.inf
  # a is cut from norm 5 to 2.5 (share 0.25 of its 25), b is within budget.
  np.testing.assert_allclose(share(1.0), 0.25 * 25 / 25.01, rtol=1e-6)
  np.testing.assert_allclose(share(1e20), share(1.0), rtol=1e-5)
