"""The optimizer registry: every name builds, rates are effective, options parse."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_split as osp
from optax_split.experiments import optimizers

PARAMS = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, -0.1])}
GRADS = {"w": jnp.array([[0.3, -0.2], [0.1, 0.4]]), "b": jnp.array([0.2, 0.0])}


def _first_step(tx, grads=GRADS):
  updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
  return updates


def _build(spec, rate, weight_decay=0.0, **grid):
  """What the runner does: Adam-like optimizers also get the task's ``b2``."""
  b2 = {"b2": 0.999} if spec.adaptive else {}
  return spec.build(rate, weight_decay, **b2, **grid)


@pytest.mark.parametrize("name", optimizers.NAMES)
def test_every_optimizer_builds_from_a_traced_rate_and_a_schedule(name):
  spec = optimizers.get(name)
  grid = {k: v[0] for k, v in spec.grid.items()}
  step = jax.jit(lambda rate: _first_step(_build(spec, rate, **grid)))
  chex.assert_trees_all_equal_shapes_and_dtypes(step(jnp.float32(0.01)), PARAMS)
  # A schedule (the task's warm-up times the swept rate): zero at the first step.
  scheduled = jax.jit(lambda rate: _first_step(_build(spec, lambda count: rate * count, **grid)))
  chex.assert_trees_all_equal(scheduled(jnp.float32(0.01)), jax.tree.map(jnp.zeros_like, PARAMS))


def test_practitioner_baselines_are_what_they_say():
  rate, b2 = 0.01, 0.98
  grads = [GRADS, jax.tree.map(lambda g: -2.0 * g, GRADS)]

  def steps(tx):
    state, out = tx.init(PARAMS), []
    for g in grads:
      updates, state = tx.update(g, state, PARAMS)
      out.append(updates)
    return out

  msgd = optimizers.get("msgd_clip").build(rate, 0.0, max_norm=0.1)
  want = optax.chain(optax.clip_by_global_norm(0.1), optax.sgd(rate, momentum=0.9))
  chex.assert_trees_all_close(steps(msgd), steps(want), rtol=1e-6)
  adamw = optimizers.get("adamw_clip").build(rate, 0.1, b2=b2, max_norm=1.0)
  want = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(rate, b2=b2, weight_decay=0.1))
  chex.assert_trees_all_close(steps(adamw), steps(want), rtol=1e-6)
  # Grokfast-EMA's reference: g + 2 * EMA_0.98(g), the EMA started at the first gradient.
  ema = GRADS
  reweighted = []
  for g in grads:
    ema = jax.tree.map(lambda m, x: 0.98 * m + 0.02 * x, ema, g)
    reweighted.append(jax.tree.map(lambda x, m: x + 2.0 * m, g, ema))
  adam = optax.adam(rate, b2=b2)
  state, want = adam.init(PARAMS), []
  for g in reweighted:
    updates, state = adam.update(g, state, PARAMS)
    want.append(updates)
  got = steps(optimizers.get("grokfast").build(rate, 0.0, b2=b2))
  chex.assert_trees_all_close(got, want, rtol=1e-5)
  # ZClip: with no history yet its only bound is the absolute cap 1.0.
  big = jax.tree.map(lambda g: 100.0 * g, GRADS)
  zclip = optimizers.get("zclip").build(rate, 0.0, b2=b2)
  clipped = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(rate, b2=b2))
  chex.assert_trees_all_close(_first_step(zclip, big), _first_step(clipped, big), rtol=1e-5)


def test_presets_take_the_same_effective_step_as_sgd():
  # alpha = 0 and no guard: split_sgd at effective rate r is SGD at rate r.
  split = optimizers.get("split_sgd:alpha=0,guard=none").build(0.03, 0.0)
  chex.assert_trees_all_close(_first_step(split), _first_step(optax.sgd(0.03)), rtol=1e-6)
  adam = optimizers.get("split_adam:alpha=0,guard=none").build(0.003, 0.0, b2=0.999)
  chex.assert_trees_all_close(_first_step(adam), _first_step(optax.adam(0.003)), rtol=1e-6)


def test_preset_options_reach_the_preset():
  spec = optimizers.get("split_sgd:alpha=-0.5,budget=0.001,cap=0.5,ratio=none,z=3,momentum=0.5")
  got = _first_step(spec.build(0.01, 0.0))
  tx = osp.split_sgd(1.0, -0.5, decomposition=osp.unit_excess(0.001, eps=0.0, min_ndim=2),
                     guard=osp.spike_excess(z=3.0, max_ratio=None, max_norm=0.5), momentum=0.5)
  chex.assert_trees_all_close(got, _first_step(tx))
  plain = optimizers.get("split_adam:decomposition=none,guard=none,b3=0.9,slow_alpha=2")
  want = osp.split_adam(1.0, decomposition=None, guard=None, b3=0.9, slow_alpha=2.0)
  chex.assert_trees_all_close(_first_step(plain.build(0.01, 0.0, b2=0.999)), _first_step(want))


def test_the_design_sweeps_options_reach_the_step_split():
  spec = optimizers.get(
      "split_adam:units=tensor,small=bound,kernels=flax,exempt=scale,budget=0.003")
  want = osp.split_adam(1.0, decomposition=osp.unit_excess(
      0.003, eps=0.0, min_ndim=2, per_tensor=True, bound_small_leaves=True,
      small_leaf_names=("bias", "scale"), exempt_leaf_names=("scale",)))
  chex.assert_trees_all_close(_first_step(spec.build(0.01, 0.0, b2=0.999)), _first_step(want))
  # At a rate where the budget binds, each option changes the step on these params (a bias,
  # a kernel whose two units differ in norm).
  default = _first_step(optimizers.get("split_adam").build(100.0, 0.0, b2=0.999))
  for option in ("units=tensor", "small=bound", "budget=0.003"):
    other = _first_step(optimizers.get(f"split_adam:{option}").build(100.0, 0.0, b2=0.999))
    assert not all(jnp.allclose(a, b) for a, b in zip(jax.tree.leaves(default),
                                                      jax.tree.leaves(other), strict=True))


def test_the_options_change_each_presets_own_default():
  # split_sgd bounds its small leaves by default: small=alone is its old step split, and an
  # option that leaves `small` unsaid keeps the bound.
  alone = optimizers.get("split_sgd:small=alone").build(100.0, 0.0)
  want = osp.split_sgd(1e4, decomposition=osp.defaults.STEP_DECOMPOSITION)
  chex.assert_trees_all_close(_first_step(alone), _first_step(want))
  default = _first_step(optimizers.get("split_sgd").build(100.0, 0.0))
  assert not jnp.allclose(default["b"], _first_step(alone)["b"])  # the bias's budget binds
  budget = optimizers.get("split_sgd:budget=0.003").build(100.0, 0.0)
  want = osp.split_sgd(1e4, decomposition=osp.unit_excess(0.003, eps=0.0, min_ndim=2,
                                                           bound_small_leaves=True))
  chex.assert_trees_all_close(_first_step(budget), _first_step(want))
  # split_muon exempts the norms' gains: exempt=none is split_sgd's bound on every small leaf.
  params = {**PARAMS, "scale": jnp.ones(2)}
  grads = {**GRADS, "scale": jnp.array([0.5, -0.5])}

  def first_step(tx):
    return tx.update(grads, tx.init(params), params)[0]["scale"]

  bound_all = first_step(optimizers.get("split_muon:exempt=none").build(1.0, 0.0, b2=0.999))
  want = first_step(osp.split_muon(100.0, decomposition=osp.defaults.SGD_STEP_DECOMPOSITION))
  chex.assert_trees_all_close(bound_all, want)
  default = first_step(optimizers.get("split_muon").build(1.0, 0.0, b2=0.999))
  # Bounded: 1% of the scale's norm, floored at sqrt(2) x the kernel's RMS (the larger here).
  floor = np.sqrt(2) * np.sqrt(np.mean(np.square(PARAMS["w"])))
  np.testing.assert_allclose(np.linalg.norm(bound_all), 0.01 * floor, rtol=1e-5)
  assert np.linalg.norm(default) > 0.5  # Adam's first step at rate 1.0, whole


def test_weight_decay_is_decoupled_and_scaled_by_the_rate():
  spec = optimizers.get("sgd")
  zero = jax.tree.map(jnp.zeros_like, GRADS)
  got = _first_step(spec.build(0.1, 0.5), zero)
  chex.assert_trees_all_close(got, jax.tree.map(lambda p: -0.1 * 0.5 * p, PARAMS))


def test_grouped_guard_keeps_statistics_per_module():
  params = {"params": {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
                       "Dense_1": {"kernel": jnp.ones((2, 1))}}}
  spec = optimizers.get("split_adam:grouped=module")
  tx = spec.build(0.01, 0.0, b2=0.999)
  _, state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  logs = osp.diagnostics(state)
  assert {"guard/Dense_0/norm", "guard/Dense_1/norm"} <= set(logs)
  chex.assert_trees_all_close(logs["guard/Dense_0/norm"], jnp.sqrt(6.0))


@pytest.mark.parametrize("name, message", [
    ("lion", "Unknown optimizer 'lion'"),
    ("sgd:max_norm=1", "sgd has no option 'max_norm'; it takes \\['weight_decay'\\]"),
    ("sgd_clip:max_norm", "Bad option 'max_norm'.*key=value"),
    ("split_adam:decomposition=spike", "Unknown decomposition='spike'"),
    ("split_adam:grouped=layer", "Unknown grouped='layer'"),
    ("split_adam:guard=zclip", "Unknown guard='zclip'"),
    ("split_adam:units=row", "Unknown units='row': use units=unit or =tensor"),
    ("split_adam:small=floor", "Unknown small='floor'"),
    ("split_adam:kernels=haiku", "Unknown kernels='haiku'"),
])
def test_bad_names_say_what_is_accepted(name, message):
  with pytest.raises(ValueError, match=message):
    optimizers.get(name)


def test_registry_entries_are_typed_specs_and_presets():
  assert all(isinstance(s, optimizers.OptimizerSpec) for s in optimizers.BASELINES.values())
  assert all(isinstance(p, optimizers.Preset) for p in optimizers.PRESETS.values())
  assert optimizers.NAMES[:3] == ("sgd", "sgd_clip", "sgd_agc")
  assert optimizers.get("adamw_clip:max_norm=1").grid == {"max_norm": (1.0,)}
  assert optimizers.BASELINES["adamw_clip"].grid["max_norm"] == (0.1, 1.0, 10.0)  # Untouched.
