"""A finite gradient whose float32 sum of squares overflows: cut to the threshold, not lost.

A float32 gradient of norm above about 1.8e19 has an infinite sum of squares.
``_numerics.tree_norm`` takes its norm again from the elements scaled by their largest
magnitude, so ``spike_excess`` sees a finite norm: the step is cut to the threshold along its
direction and counted as a spike, on every path (the bare split, the presets' guard,
``grouped``), in bfloat16 too. The statistics stay finite also when the norms themselves are
that large for a while (a first step of norm 1e20, a drift up to 1e20 and back): the variance
saturates at float32's largest value rather than overflowing.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_split as osp
from conftest import guard_state, model_tree
from optax_split import _numerics

_HUGE_LEAVES = ("conv", "dense/kernel")  # the leaves that get elements of 3e19 .. 7e19
_WARMUP_STEPS = 6  # normal-sized steps before the huge one (the guard's warm-up is 3)


def _f64_norm(tree) -> float:
  """The global norm in float64, scaled so that no square overflows float64."""
  leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)]
  flat = np.concatenate(leaves) if leaves else np.zeros(0)
  if not flat.size:
    return 0.0
  largest = np.max(np.abs(flat))
  if not np.isfinite(largest) or largest == 0:
    return float(np.linalg.norm(flat))
  return float(largest * np.linalg.norm(flat / largest))


def _cosine(a, b) -> float:
  a = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(a)])
  b = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(b)])
  a, b = a / np.max(np.abs(a)), b / np.max(np.abs(b))
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _huge(tree, seed: int = 0, low: float = 3e19, high: float = 7e19):
  """``tree`` with the elements of ``_HUGE_LEAVES`` replaced by ``+-[low, high]``."""
  rng = np.random.default_rng(seed)

  def replace(path, x):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    if not name.startswith(_HUGE_LEAVES):
      return x
    values = rng.uniform(low, high, x.shape) * rng.choice([-1.0, 1.0], x.shape)
    return jnp.asarray(values, x.dtype)

  return jax.tree_util.tree_map_with_path(replace, tree)


def _normal_grads(dtype=jnp.float32):
  return [model_tree(jax.random.key(10 + i), dtype) for i in range(_WARMUP_STEPS)]


def _all_finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


# --- tree_norm ---------------------------------------------------------------------------------


@functools.cache
def _trees() -> dict[str, dict]:
  normal = model_tree(jax.random.key(0))
  return {
      "normal": normal,
      "zeros": jax.tree.map(jnp.zeros_like, normal),
      "huge": _huge(normal),
      "huge-everywhere": _huge(normal, low=1e20, high=2e20) | {"scalar": jnp.float32(1e20)},
      "huge-and-tiny": _huge(normal) | {"scalar": jnp.float32(1e-30)},
      "near-float32-max": jax.tree.map(lambda x: jnp.full_like(x, 1e37), normal),
  }


@pytest.mark.parametrize("name", list(_trees()))
@pytest.mark.parametrize("transform", ["eager", "jit"])
def test_tree_norm_is_the_float64_norm(name, transform):
  tree = _trees()[name]
  fn = jax.jit(_numerics.tree_norm) if transform == "jit" else _numerics.tree_norm
  norm = fn(tree)
  assert norm.dtype == jnp.float32 and norm.shape == ()
  np.testing.assert_allclose(norm, _f64_norm(tree), rtol=1e-6)


@pytest.mark.parametrize(("poison", "expected"), [
    (np.inf, np.inf), (-np.inf, np.inf), (np.nan, np.nan),
])
@pytest.mark.parametrize("base", ["normal", "huge"])
def test_tree_norm_of_a_non_finite_tree(poison, expected, base):
  tree = _trees()[base]
  tree = tree | {"dense": tree["dense"] | {"bias": tree["dense"]["bias"].at[1].set(poison)}}
  for fn in (_numerics.tree_norm, jax.jit(_numerics.tree_norm)):
    np.testing.assert_array_equal(fn(tree), np.float32(expected))


def test_tree_norm_past_the_float32_range_is_inf():
  # Each element is finite, the norm (about 6.8e38) is not a float32.
  np.testing.assert_array_equal(_numerics.tree_norm(jnp.full(4, 3.4e38)), np.float32(np.inf))


def test_tree_norm_under_vmap():
  cases = ["normal", "zeros", "huge", "huge-everywhere", "near-float32-max"]
  trees = [_trees()[name] for name in cases]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
  batched = jax.jit(jax.vmap(_numerics.tree_norm))
  np.testing.assert_allclose(batched(stacked), [_f64_norm(t) for t in trees], rtol=1e-6)
  # Finite and non-finite rows together: each gets its own answer.
  rows = jnp.array([[3.0, 4.0], [3e19, 4e19], [jnp.inf, 1.0], [jnp.nan, 1e20]])
  np.testing.assert_allclose(batched({"x": rows}),
                             [5.0, 5e19, np.inf, np.nan], rtol=1e-6)


@pytest.mark.parametrize("tree", [
    {}, [], None, {"a": jnp.zeros((0, 3))}, {"a": jnp.zeros((0,)), "b": jnp.zeros((2, 0))},
], ids=["empty-dict", "empty-list", "none", "zero-size", "zero-sizes"])
def test_tree_norm_of_an_empty_tree_is_zero(tree):
  for fn in (_numerics.tree_norm, jax.jit(_numerics.tree_norm)):
    np.testing.assert_array_equal(fn(tree), np.float32(0.0))


def test_tree_norm_with_zero_size_and_huge_leaves():
  tree = {"empty": jnp.zeros((0, 4)), "huge": jnp.array([3e19, 4e19]), "one": jnp.ones(())}
  np.testing.assert_allclose(jax.jit(_numerics.tree_norm)(tree), 5e19, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_tree_norm_of_half_precision_leaves(dtype):
  # bfloat16 holds 1e20, float16 (largest 65504) does not: its norm can exceed its range but
  # never overflows the float32 sum of squares.
  value = 5e19 if dtype == "bfloat16" else 6e4
  tree = {"a": jnp.full((64,), value, dtype), "b": jnp.full((3,), -value / 2, dtype)}
  norm = _numerics.tree_norm(tree)
  assert norm.dtype == jnp.float32
  np.testing.assert_allclose(norm, _f64_norm(tree), rtol=1e-6)


def test_tree_norm_of_float64_leaves_past_the_float64_square():
  with jax.enable_x64(True):
    tree = {"a": jnp.full((4,), 3e200, jnp.float64), "b": jnp.array([4e200, 1.0])}
    norm = jax.jit(_numerics.tree_norm)(tree)
    assert norm.dtype == jnp.float64
    np.testing.assert_allclose(norm, _f64_norm(tree), rtol=1e-12)


# --- spike_excess on a huge step ---------------------------------------------------------------


def _run_split(tx, grads_list):
  """Applies ``tx`` (a split) to each gradient; returns the parts and the state of each step."""
  state = tx.init(grads_list[0])
  update = jax.jit(tx.update)
  parts, states = [], []
  for grads in grads_list:
    step_parts, state = update(grads, state)
    parts.append(step_parts)
    states.append(state)
  return parts, states


def _assert_cut_to_the_threshold(local, grads, threshold, rtol=1e-5):
  assert _all_finite(local)
  np.testing.assert_allclose(_f64_norm(local), threshold, rtol=rtol)
  np.testing.assert_allclose(_cosine(local, grads), 1.0, atol=max(rtol, 1e-6))


def test_the_bare_split_cuts_a_huge_step_to_the_threshold():
  normal = _normal_grads()
  huge = _huge(normal[-1])
  assert not np.isfinite(float(_numerics.tree_squared_norm(huge)))  # the sum overflows
  tx = osp.split(osp.spike_excess(warmup=3), global_share=True)
  parts, states = _run_split(tx, [*normal, huge, *normal[:3]])
  huge_parts, huge_state = parts[_WARMUP_STEPS], states[_WARMUP_STEPS]
  guard = huge_state.decomposition
  before = states[_WARMUP_STEPS - 1].decomposition

  _assert_cut_to_the_threshold(huge_parts.local, huge, guard.threshold)
  assert _all_finite(huge_parts.global_)
  np.testing.assert_allclose(guard.norm, _f64_norm(huge), rtol=1e-5)
  assert float(guard.threshold) < 10 * float(before.norm_mean)
  assert int(guard.spike_count) == int(before.spike_count) + 1
  # Fed as the threshold, like any spike: the statistics stay finite and barely move.
  assert int(guard.count) == int(before.count) + 1
  chex.assert_tree_all_finite((guard.norm_mean, guard.norm_var, guard.cap, guard.threshold))
  assert float(guard.norm_mean) < 1.1 * float(before.norm_mean)
  np.testing.assert_allclose(huge_state.global_share, 1.0, rtol=1e-6)
  # The normal steps after it pass whole.
  for step_parts, state, grads in zip(parts[-3:], states[-3:], normal[:3], strict=True):
    assert int(state.decomposition.spike_count) == int(guard.spike_count)
    chex.assert_trees_all_equal(step_parts.local, grads)


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_split_sgds_guard_cuts_a_huge_step(momentum):
  tx = osp.split_sgd(1.0, guard=osp.spike_excess(warmup=3), decomposition=None,
                     momentum=momentum)
  params = model_tree(jax.random.key(1))
  state = tx.init(params)
  update = jax.jit(tx.update)
  normal = _normal_grads()
  for grads in normal:
    _, state = update(grads, state, params)
  spikes_before = int(osp.diagnostics(state)["guard/spike_count"])
  updates, state = update(_huge(normal[-1]), state, params)
  new_params = optax.apply_updates(params, updates)
  diagnostics = osp.diagnostics(state)
  assert _all_finite(updates) and _all_finite(new_params)
  assert int(diagnostics["guard/spike_count"]) == spikes_before + 1
  chex.assert_tree_all_finite(guard_state(state))
  if momentum is None:
    # The step is -eta_local * (the guarded gradient), eta_local = 0.01 * lr.
    np.testing.assert_allclose(_f64_norm(updates), 0.01 * diagnostics["guard/threshold"],
                               rtol=1e-5)
    np.testing.assert_allclose(_cosine(updates, _huge(normal[-1])), -1.0, atol=1e-6)


@pytest.mark.parametrize("decomposition", ["none", "default"])
def test_split_adams_guard_cuts_a_huge_step(decomposition):
  kwargs = {"decomposition": None} if decomposition == "none" else {}
  tx = osp.split_adam(1.0, guard=osp.spike_excess(warmup=3), **kwargs)
  params = model_tree(jax.random.key(1))
  state = tx.init(params)
  update = jax.jit(tx.update)
  normal = _normal_grads()
  for grads in [*normal, _huge(normal[-1]), *normal[:2]]:
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    assert _all_finite(updates) and _all_finite(params)
  assert int(osp.diagnostics(state)["guard/spike_count"]) == 1
  chex.assert_tree_all_finite(guard_state(state))
  # Adam's second moment took in the cut gradient, not 1e20 squared.
  nu = optax.tree.get(state, "nu")
  assert max(float(jnp.max(x)) for x in jax.tree.leaves(nu)) < 1e3


def test_grouped_cuts_each_huge_leaf_to_its_own_threshold():
  normal = _normal_grads()
  huge = _huge(normal[-1])
  tx = osp.split(osp.grouped(osp.spike_excess(warmup=3)))
  parts, states = _run_split(tx, [*normal, huge])
  groups = states[-1].decomposition.groups
  before = states[-2].decomposition.groups
  assert _all_finite(parts[-1].local) and _all_finite(parts[-1].global_)
  flat_local = dict(jax.tree_util.tree_leaves_with_path(parts[-1].local))
  flat_huge = dict(jax.tree_util.tree_leaves_with_path(huge))
  for path, leaf in flat_huge.items():
    label = jax.tree_util.keystr(path, simple=True, separator="/")
    guard = groups[label]
    chex.assert_tree_all_finite((guard.norm_mean, guard.norm_var, guard.cap, guard.threshold))
    if label.startswith(_HUGE_LEAVES):
      _assert_cut_to_the_threshold(flat_local[path], leaf, guard.threshold)
      assert int(guard.spike_count) == int(before[label].spike_count) + 1
    else:  # the other leaves are left alone
      np.testing.assert_array_equal(flat_local[path], leaf)
      assert int(guard.spike_count) == int(before[label].spike_count)


def test_a_bfloat16_huge_step_is_cut_to_the_threshold():
  normal = _normal_grads(jnp.bfloat16)
  huge = _huge(normal[-1])
  tx = osp.split(osp.spike_excess(warmup=3))
  parts, states = _run_split(tx, [*normal, huge])
  guard = states[-1].decomposition
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(parts[-1].local))
  # bfloat16 rounds each element to 2^-9: the norm to about that.
  _assert_cut_to_the_threshold(parts[-1].local, huge, guard.threshold, rtol=1e-2)
  assert int(guard.spike_count) == 1
  np.testing.assert_allclose(guard.norm, _f64_norm(huge), rtol=1e-5)


def test_a_float16_step_past_float16s_range_is_cut_to_the_threshold():
  # float16 cannot hold 1e20; its largest steps have norms past its own range (65504), which
  # the float32 norm holds.
  normal = _normal_grads(jnp.float16)
  big = _huge(normal[-1], low=3e4, high=6e4)
  assert _f64_norm(big) > 65504
  tx = osp.split(osp.spike_excess(warmup=3))
  parts, states = _run_split(tx, [*normal, big])
  guard = states[-1].decomposition
  assert all(x.dtype == jnp.float16 for x in jax.tree.leaves(parts[-1].local))
  _assert_cut_to_the_threshold(parts[-1].local, big, guard.threshold, rtol=2e-3)
  assert int(guard.spike_count) == 1


@pytest.mark.parametrize("scale", [1e20, 1e200])
def test_a_float64_huge_step_is_cut_to_the_threshold(scale):
  # 1e20 is a float32, so the step feeds the statistics; 1e200 is not: the guard still cuts
  # it (the kept fraction uses the float64 norm) and counts it, and like a non-finite step it
  # leaves the float32 statistics alone.
  with jax.enable_x64(True):
    normal = _normal_grads(jnp.float64)
    huge = _huge(normal[-1], low=0.3 * scale, high=0.7 * scale)
    tx = osp.split(osp.spike_excess(warmup=3))
    parts, states = _run_split(tx, [*normal, huge])
    guard, before = states[-1].decomposition, states[-2].decomposition
    _assert_cut_to_the_threshold(parts[-1].local, huge, guard.threshold)
    assert int(guard.spike_count) == int(before.spike_count) + 1
    assert int(guard.count) == int(before.count) + (scale == 1e20)
    chex.assert_tree_all_finite((guard.norm_mean, guard.norm_var, guard.cap, guard.threshold))


# --- Statistics of huge norms ------------------------------------------------------------------


def test_a_huge_first_step_leaves_the_statistics_finite():
  # The first step has no bound yet and feeds its norm (1e20) to the statistics: the
  # variance of the next steps saturates (it would be about 1e39), and the statistics stay
  # finite and recover as the mean decays (by 0.97 a step).
  tx = osp.split(osp.spike_excess(warmup=3))
  grads = [jnp.full(4, 5e19)] + [jnp.ones(4) * (1 + 0.1 * (i % 3)) for i in range(400)]
  _, states = _run_split(tx, grads)
  guards = [state.decomposition for state in states]
  for guard in guards:
    chex.assert_tree_all_finite((guard.norm_mean, guard.norm_var, guard.cap))
  assert guards[1].norm_var == np.finfo(np.float32).max
  assert guards[-1].norm_var < np.finfo(np.float32).max
  assert np.isfinite(float(guards[-1].threshold))
  np.testing.assert_allclose(guards[-1].norm_mean / guards[3].norm_mean, 0.97 ** 397, rtol=1e-2)


@pytest.mark.parametrize("max_ratio", [10.0, None])
def test_a_drift_to_huge_norms_and_back_leaves_the_statistics_finite(max_ratio):
  # Norms drift from 1 to 1e20 (the squared norm overflows from about 2e19 on) and back to 1:
  # the variance would pass float32's range; it saturates instead, and after the drift the
  # guard clips a burst again.
  num = 3000
  rng = np.random.default_rng(0)
  levels = 1e20 ** np.concatenate([np.linspace(0, 1, num), np.linspace(1, 0, num)])
  levels *= np.exp(0.1 * rng.standard_normal(levels.size))
  levels = np.concatenate([levels, np.ones(2000), [100.0]]).astype(np.float32)
  direction = jnp.asarray(rng.standard_normal(16), jnp.float32)
  direction /= jnp.linalg.norm(direction)
  tx = osp.split(osp.spike_excess(max_ratio=max_ratio))

  @jax.jit
  def run(levels):
    def step(state, level):
      parts, state = tx.update(direction * level, state)
      return state, (state.decomposition, jnp.all(jnp.isfinite(parts.local)))
    return jax.lax.scan(step, tx.init(direction), levels)[1]

  guard, local_finite = jax.device_get(run(levels))
  assert local_finite.all()
  chex.assert_tree_all_finite((guard.norm_mean, guard.norm_var))
  if max_ratio is None:  # no cap: the threshold is inf ("no bound") during the warm-up
    assert np.isinf(guard.cap).all() and np.isfinite(guard.threshold[25:]).all()
  else:
    assert np.isfinite(guard.cap).all() and np.isfinite(guard.threshold[1:]).all()
  assert guard.norm_var.max() == np.finfo(np.float32).max  # saturated on the way
  assert guard.norm[-1] > guard.threshold[-1]  # the burst at the end is clipped
  assert guard.spike_count[-1] > guard.spike_count[-2]
