"""split_step and the presets' split of the step: equivalences, leaf handling, the bound, misuse."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_split as osp
from conftest import model_tree


def _trajectory(tx, params, steps, seed=1):
  """The updates of ``steps`` steps on fresh random gradients, the params moving."""
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for step in range(steps):
    grads = model_tree(jax.random.PRNGKey(seed + step))
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out


def _kernels(params):
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "muon"])
def test_alpha_minus_one_is_adaptive_grad_clip_of_the_kernels_step(optimizer, params):
  """With the rate folded in: AGC placed after the optimizer, on the leaves of 2+ dims."""
  make = {"sgd": lambda: optax.sgd(3.0, momentum=0.9),
          "adamw": lambda: optax.adamw(0.3, weight_decay=0.1),
          "muon": lambda: optax.contrib.muon(0.3)}[optimizer]
  ours = osp.split_step(make(), decomposition=osp.unit_excess(0.01, eps=1e-3, min_ndim=2))
  reference = optax.chain(make(), optax.masked(optax.adaptive_grad_clip(0.01, eps=1e-3),
                                               _kernels))
  for got, want in zip(_trajectory(ours, params, 5), _trajectory(reference, params, 5),
                       strict=True):
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-8)


def test_the_default_budget_has_no_floor_and_matches_agc_where_no_unit_is_zero(params):
  ours = osp.split_step(optax.adamw(0.3))
  reference = optax.chain(optax.adamw(0.3), optax.masked(optax.adaptive_grad_clip(0.01, eps=0.0),
                                                         _kernels))
  for got, want in zip(_trajectory(ours, params, 3), _trajectory(reference, params, 3),
                       strict=True):
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-8)


def test_it_is_lambs_trust_ratio_where_the_unit_is_the_whole_leaf():
  """LAMB rescales each leaf's Adam step to ``lr * ||w||``; the split cuts it to that.

  They coincide on 1-D leaves (one unit each) whenever the raw step exceeds the budget.
  """
  params = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([0.3, 0.4])}
  grads = [jax.tree.map(lambda p, k=k: jnp.sin(p * (k + 1)) + 0.1, params) for k in range(4)]
  lamb = optax.lamb(0.01, eps=1e-6)
  huge_adam = optax.chain(optax.scale_by_adam(eps=1e-6), optax.scale(-1e3))
  ours = osp.split_step(huge_adam, decomposition=osp.unit_excess(0.01, eps=0.0))
  lamb_state, our_state = lamb.init(params), ours.init(params)
  for g in grads:
    want, lamb_state = lamb.update(g, lamb_state, params)
    got, our_state = ours.update(g, our_state, params)
    chex.assert_trees_all_close(got, want, rtol=1e-5)
    params = optax.apply_updates(params, got)


@pytest.mark.parametrize("rate", [1e-2, 1.0, 1e6])
def test_no_kernel_unit_moves_by_more_than_the_budget_at_any_rate(rate, params):
  tx = osp.split_step(optax.sgd(rate))
  for updates in _trajectory(tx, params, 1):
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
      if u.ndim >= 2:
        axes = (0,) if u.ndim <= 3 else tuple(range(u.ndim - 1))
        step = np.sqrt(np.sum(np.square(np.asarray(u)), axis=axes))
        weight = np.sqrt(np.sum(np.square(np.asarray(p)), axis=axes))
        assert np.all(step <= 0.01 * weight * (1 + 1e-5))


def test_biases_scalars_and_zero_units_are_left_alone():
  params = {"kernel": jnp.array([[1.0, 0.0], [1.0, 0.0]]), "bias": jnp.zeros(2),
            "scalar": jnp.zeros(())}
  grads = jax.tree.map(lambda p: jnp.full(jnp.shape(p), 5.0), params)
  tx = osp.split_step(optax.sgd(1.0))
  updates, _ = tx.update(grads, tx.init(params), params)
  chex.assert_trees_all_close(updates["bias"], -grads["bias"])
  chex.assert_trees_all_close(updates["scalar"], -grads["scalar"])
  # The zero column moves freely (a zero budget would freeze it for good); the other is cut.
  chex.assert_trees_all_close(updates["kernel"][:, 1], jnp.array([-5.0, -5.0]))
  np.testing.assert_allclose(np.linalg.norm(updates["kernel"][:, 0]), 0.01 * np.sqrt(2),
                             rtol=1e-5)


_BOUNDED = osp.unit_excess(0.01, eps=0.0, min_ndim=2, bound_small_leaves=True)


def test_bounded_small_leaves_move_within_the_kernels_rms_when_zero():
  # Kernel weights of RMS 0.5: a zero bias (and a zero scalar) may move 0.01 * 0.5 per element.
  params = {"kernel": jnp.full((3, 2), 0.5), "bias": jnp.zeros(4), "scalar": jnp.zeros(())}
  grads = jax.tree.map(lambda p: jnp.full(jnp.shape(p), 5.0), params)
  tx = osp.split_step(optax.sgd(1.0), decomposition=_BOUNDED)
  updates, _ = tx.update(grads, tx.init(params), params)
  chex.assert_trees_all_close(updates["bias"], jnp.full(4, -0.005), rtol=1e-6)
  chex.assert_trees_all_close(updates["scalar"], jnp.array(-0.005), rtol=1e-6)


@pytest.mark.parametrize("rate", [1e-2, 1.0, 1e6])
def test_bounded_small_leaves_move_at_most_their_budget_at_any_rate(rate, params):
  # Each small leaf is one unit: its step is at most 0.01 * max(its norm, sqrt(size) * r).
  kernels = [p for p in jax.tree.leaves(params) if p.ndim >= 2]
  rms = np.sqrt(sum(np.sum(np.square(p)) for p in kernels) / sum(p.size for p in kernels))
  tx = osp.split_step(optax.sgd(rate), decomposition=_BOUNDED)
  for updates in _trajectory(tx, params, 1):
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
      if u.ndim < 2:
        floor = max(np.linalg.norm(np.ravel(p)), np.sqrt(np.size(p)) * rms)
        assert np.linalg.norm(np.ravel(u)) <= 0.01 * floor * (1 + 1e-5)


def test_bounded_small_leaves_leave_kernels_as_they_were(params, grads):
  plain = osp.split_step(optax.sgd(100.0))
  bounded = osp.split_step(optax.sgd(100.0), decomposition=_BOUNDED)
  want, _ = plain.update(grads, plain.init(params), params)
  got, _ = bounded.update(grads, bounded.init(params), params)
  for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    if w.ndim >= 2:
      chex.assert_trees_all_equal(g, w)


def _flax_attention_like():
  # Flax's nn.MultiHeadDotProductAttention stores a query bias 2-D, (heads, head_dim).
  params = {"query": {"kernel": jnp.full((4, 2, 3), 0.5), "bias": jnp.full((2, 3), 0.5)},
            "norm": {"scale": jnp.ones((4,))}}
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 5.0), params)
  return params, grads


def test_named_small_leaves_are_left_alone_whatever_their_dimensions():
  params, grads = _flax_attention_like()
  by_ndim = osp.split_step(optax.sgd(1.0), decomposition=osp.unit_excess(
      0.01, eps=0.0, min_ndim=2))
  by_name = osp.split_step(optax.sgd(1.0), decomposition=osp.unit_excess(
      0.01, eps=0.0, min_ndim=2, small_leaf_names=("bias", "scale")))
  cut, _ = by_ndim.update(grads, by_ndim.init(params), params)
  alone, _ = by_name.update(grads, by_name.init(params), params)
  # By dimensions the 2-D bias is a kernel, its units cut to 1% of their norm ...
  np.testing.assert_allclose(np.linalg.norm(cut["query"]["bias"], axis=0),
                             0.01 * np.linalg.norm(params["query"]["bias"], axis=0), rtol=1e-5)
  # ... by name it is a bias, left alone, and the kernel's step is the same either way.
  chex.assert_trees_all_close(alone["query"]["bias"], -grads["query"]["bias"])
  chex.assert_trees_all_equal(alone["query"]["kernel"], cut["query"]["kernel"])
  chex.assert_trees_all_close(alone["norm"]["scale"], -grads["norm"]["scale"])


def test_named_small_leaves_are_bounded_as_one_unit_when_asked():
  # Only the bias's small middle column has a gradient: as a kernel its unit's budget would
  # be 1% of that column's norm (1e-4); as one unit it is 1% of the whole bias's norm.
  bias = jnp.array([[1.0, 0.01, 0.5], [0.0, 0.0, 0.5]])
  params = {"kernel": jnp.full((4, 3), 0.1), "bias": bias}
  grads = {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros((2, 3)).at[:, 1].set(5.0)}
  tx = osp.split_step(optax.sgd(1.0), decomposition=osp.unit_excess(
      0.01, eps=0.0, min_ndim=2, small_leaf_names=("bias",), bound_small_leaves=True))
  updates, _ = tx.update(grads, tx.init(params), params)
  # Its norm (1.22) is above the floor sqrt(6) x the kernel's RMS (0.1): the norm counts.
  np.testing.assert_allclose(np.linalg.norm(updates["bias"]), 0.01 * np.linalg.norm(bias),
                             rtol=1e-5)


def test_exempt_leaves_are_left_alone_while_the_other_small_leaves_are_bounded():
  params, grads = _flax_attention_like()
  params["norm"]["bias"] = jnp.full((4,), 0.5)
  grads["norm"]["bias"] = jnp.full((4,), 5.0)
  bounded = osp.unit_excess(0.01, eps=0.0, min_ndim=2, bound_small_leaves=True)
  steps = {}
  for exempt in ((), ("scale",)):
    tx = osp.split_step(optax.sgd(1.0), decomposition=dataclasses.replace(
        bounded, exempt_leaf_names=exempt))
    steps[exempt] = tx.update(grads, tx.init(params), params)[0]
  # The scale is bounded as one unit unless exempt; then its step is SGD's, whole.
  np.testing.assert_allclose(np.linalg.norm(steps[()]["norm"]["scale"]),
                             0.01 * np.linalg.norm(params["norm"]["scale"]), rtol=1e-5)
  chex.assert_trees_all_close(steps[("scale",)]["norm"]["scale"], -grads["norm"]["scale"])
  # The bias, bounded either way, and the kernels do not depend on the exemption.
  for path in (("norm", "bias"), ("query", "kernel"), ("query", "bias")):
    chex.assert_trees_all_close(steps[("scale",)][path[0]][path[1]], steps[()][path[0]][path[1]])
  np.testing.assert_allclose(np.linalg.norm(steps[()]["norm"]["bias"]),
                             0.01 * np.linalg.norm(params["norm"]["bias"]), rtol=1e-5)


def test_per_tensor_units_share_one_budget_across_a_kernel():
  # The second column is small: per unit its budget is tiny, per tensor it shares the leaf's.
  params = {"kernel": jnp.array([[1.0, 0.01], [0.0, 0.0]])}
  grads = {"kernel": jnp.array([[0.0, 1.0], [0.0, 0.0]])}
  steps = {}
  for per_tensor in (False, True):
    tx = osp.split_step(optax.sgd(1.0), decomposition=osp.unit_excess(
        0.01, eps=0.0, per_tensor=per_tensor))
    steps[per_tensor] = tx.update(grads, tx.init(params), params)[0]["kernel"][0, 1]
  np.testing.assert_allclose(steps[False], -0.01 * 0.01, rtol=1e-5)
  np.testing.assert_allclose(steps[True], -0.01 * np.sqrt(1 + 0.01**2), rtol=1e-5)


@pytest.mark.parametrize("rate", [1e-2, 1.0, 1e6])
def test_per_tensor_units_bound_each_leafs_step_by_its_norm(rate, params):
  tx = osp.split_step(optax.sgd(rate), decomposition=osp.unit_excess(
      0.01, eps=0.0, per_tensor=True))
  for updates in _trajectory(tx, params, 1):
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
      assert np.linalg.norm(np.ravel(u)) <= 0.01 * np.linalg.norm(np.ravel(p)) * (1 + 1e-5)


@pytest.mark.parametrize("alpha", [-1.0, -0.5, 0.0, 1.0])
def test_alpha_reweights_the_excess_of_the_step(alpha, params, grads):
  inner = optax.adam(0.5)
  tx = osp.split_step(inner, alpha)
  got, _ = tx.update(grads, tx.init(params), params)
  step, _ = inner.update(grads, inner.init(params), params)
  bare = osp.split(osp.defaults.STEP_DECOMPOSITION)
  parts, _ = bare.update(step, bare.init(params), params)
  chex.assert_trees_all_close(got, jax.tree.map(lambda u, g: u + alpha * g, step,
                                                parts.global_), rtol=1e-5, atol=1e-8)


def test_alpha_may_be_traced_and_scheduled(params, grads):
  @jax.jit
  def first_step(alpha):
    tx = osp.split_step(optax.sgd(1e3), alpha)
    return tx.update(grads, tx.init(params), params)[0]

  chex.assert_trees_all_close(first_step(jnp.float32(0.0)),
                              jax.tree.map(lambda g: -1e3 * g, grads), rtol=1e-6)
  scheduled = osp.split_step(optax.sgd(1e3), alpha=lambda count: 0.0 * count)
  chex.assert_trees_all_close(scheduled.update(grads, scheduled.init(params), params)[0],
                              first_step(jnp.float32(0.0)), rtol=1e-6)


def test_the_state_holds_the_share_of_the_step_that_was_cut(params, grads):
  tx = osp.split_step(optax.sgd(1e3))
  updates, state = tx.update(grads, tx.init(params), params)
  step = jax.tree.map(lambda g: -1e3 * g, grads)
  cut = jax.tree.map(lambda s, u: s - u, step, updates)
  expected = optax.tree.norm(cut, squared=True) / optax.tree.norm(step, squared=True)
  chex.assert_trees_all_close(osp.diagnostics(state)["split/global_share"], expected, rtol=1e-4)


def test_split_adam_with_the_slow_trend_is_ademamix_over_200_steps():
  params = model_tree(jax.random.PRNGKey(0))
  b3 = optax.linear_schedule(0.9, 0.999, 100)
  slow_alpha = optax.linear_schedule(0.0, 5.0, 100)
  ours = osp.split_adam(3.0, decomposition=None, guard=None, b1=0.8, b2=0.99, b3=b3,
                        slow_alpha=slow_alpha, weight_decay=0.1)
  reference = optax.contrib.ademamix(0.03, b1=0.8, b2=0.99, b3=b3, alpha=slow_alpha,
                                     weight_decay=0.1)

  def run(tx):
    def step(carry, key):
      params, state = carry
      grads = model_tree(key)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), updates

    keys = jax.random.split(jax.random.PRNGKey(3), 200)
    return jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), keys))(params)

  (ours_params, _), ours_updates = run(ours)
  (ref_params, _), ref_updates = run(reference)
  chex.assert_trees_all_close(ours_updates, ref_updates, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(ours_params, ref_params, rtol=1e-5, atol=1e-6)


def test_the_slow_trend_is_the_global_component_of_adams_first_moment():
  """(l + (1 + alpha) G) / denominator, l = mu_hat - m, G = m: the reference formula."""
  params, grads = jnp.zeros(3), jnp.array([1.0, -2.0, 0.5])
  tx = osp.split_adam(100.0, decomposition=None, guard=None, b1=0.5, b2=0.5, b3=0.75,
                      slow_alpha=2.0, eps=0.0)
  updates, state = tx.update(grads, tx.init(params), params)
  moments = optax.tree.get(state, "m1"), optax.tree.get(state, "m2"), optax.tree.get(state, "nu")
  mu_hat, slow, nu_hat = moments[0] / 0.5, moments[1], moments[2] / 0.5
  local, global_ = mu_hat - slow, slow
  expected = -(local + 3.0 * global_) / jnp.sqrt(nu_hat)
  chex.assert_trees_all_close(updates, expected, rtol=1e-6)


def test_split_adam_defaults_are_guard_adamw_rate_and_the_step_split(params):
  ours = osp.split_adam(10.0, weight_decay=0.1)
  reference = optax.chain(
      optax.chain(osp.split(osp.spike_excess(), global_share=False), osp.scale_global(0.0),
                  osp.combine()),
      optax.adamw(0.1, weight_decay=0.1),
      optax.masked(optax.adaptive_grad_clip(0.01, eps=0.0), _kernels),
  )
  for got, want in zip(_trajectory(ours, params, 30), _trajectory(reference, params, 30),
                       strict=True):
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_split_step_keeps_dtypes_and_compiles_once(dtype):
  params = model_tree(jax.random.PRNGKey(0), jnp.dtype(dtype))
  grads = model_tree(jax.random.PRNGKey(1), jnp.dtype(dtype))
  tx = osp.split_step(optax.adamw(1.0))
  chex.clear_trace_counter()  # chex counts per source location, across cases

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(3):
    params, state = step(params, state)
  chex.assert_trees_all_equal_dtypes(params, grads)


def test_misuse_names_the_argument():
  with pytest.raises(TypeError, match=r"split_step\(\) wraps an optax optimizer.*adamw"):
    osp.split_step(0.1)
  with pytest.raises(ValueError, match="`alpha` must lie in"):
    osp.split_step(optax.sgd(0.1), alpha=-2.0)
  with pytest.raises(TypeError, match="`decomposition` must be a decomposition"):
    osp.split_step(optax.sgd(0.1), decomposition=0.01)
  with pytest.raises(ValueError, match="`min_ndim` must be an int"):
    osp.unit_excess(min_ndim=-1)
  with pytest.raises(ValueError, match="`b3` must lie in"):
    osp.split_adam(1.0, b3=1.0)


def test_inject_hyperparams_and_multi_steps_wrap_it(params, grads):
  tx = optax.inject_hyperparams(osp.split_step)(optax.sgd(1e3), alpha=-1.0)
  tx = optax.MultiSteps(tx, every_k_schedule=2)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  chex.assert_trees_all_close(updates, jax.tree.map(jnp.zeros_like, grads))  # accumulating
  updates, state = jax.jit(tx.update)(grads, state, params)
  reference = osp.split_step(optax.sgd(1e3))
  chex.assert_trees_all_close(updates, reference.update(grads, reference.init(params), params)[0],
                              rtol=1e-5)
  assert float(optax.tree.get(state, "alpha")) == -1.0
