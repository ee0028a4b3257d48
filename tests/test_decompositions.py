"""Each decomposition: lossless, equivalent to its known special case, finite, unpoisoned."""

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_split as osp
from conftest import DTYPES, dtype_context, model_tree

DECOMPOSITIONS = {
    "mean": osp.mean_component(),
    "mean_axis0": osp.mean_component(keep_axis=0),
    "trend": osp.trend_component(decay=0.9),
    "norm": osp.norm_excess(max_norm=1.0),
    "spike": osp.spike_excess(warmup=2, max_norm=5.0),
    "unit": osp.unit_excess(clipping=0.05),
}

TOLERANCE = {"float16": 2e-3, "bfloat16": 2e-2, "float32": 1e-6, "float64": 1e-12}


def _split_parts(decomposition, updates, params, steps=1):
  tx = osp.split(decomposition, global_share=True)
  state = tx.init(params)
  for _ in range(steps):
    parts, state = tx.update(updates, state, params)
  return parts, state


def _drop_global_step(decomposition, grads, params, steps=1):
  """The split step with alpha = -1 and unit rate: the local part only."""
  tx = optax.chain(osp.split(decomposition), osp.scale_global(0.0), osp.combine())
  state = tx.init(params)
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
  return updates


_shapes = st.sampled_from([(), (7,), (4, 3), (2, 3, 5), (3, 3, 2, 4)])


@hypothesis.settings(deadline=None, max_examples=12)
@hypothesis.given(
    shapes=st.lists(_shapes, min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    name=st.sampled_from(sorted(DECOMPOSITIONS)),
    dtype=st.sampled_from(DTYPES),
)
def test_split_then_combine_returns_the_input(shapes, seed, scale, name, dtype):
  with dtype_context(dtype) as dt:
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
    grads = [
        (scale * jax.random.normal(k, s)).astype(dt) for k, s in zip(keys, shapes, strict=True)
    ]
    params = [jax.random.normal(k, s).astype(dt) for k, s in zip(keys[::-1], shapes, strict=True)]
    tx = optax.chain(osp.split(DECOMPOSITIONS[name]), osp.combine())
    out, _ = tx.update(grads, tx.init(params), params)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, grads)
    tol = TOLERANCE[dtype]
    for o, g in zip(out, grads, strict=True):
      np.testing.assert_allclose(
          np.asarray(o, np.float64), np.asarray(g, np.float64), rtol=tol, atol=tol * scale
      )


@pytest.mark.parametrize("name", sorted(DECOMPOSITIONS))
@pytest.mark.parametrize(
    "dtype, use_jit", [(dtype, True) for dtype in DTYPES] + [("float32", False)]
)
def test_branches_keep_structure_shape_and_dtype(name, dtype, use_jit):
  with dtype_context(dtype) as dt:
    params = model_tree(jax.random.PRNGKey(0), dt)
    grads = model_tree(jax.random.PRNGKey(1), dt)
    tx = osp.split(DECOMPOSITIONS[name], global_share=True)
    update = tx.update
    chex.clear_trace_counter()
    if use_jit:
      update = jax.jit(chex.assert_max_traces(tx.update, n=1))
    state = tx.init(params)
    for _ in range(2):  # the second call must not retrace
      parts, state = update(grads, state, params)
    for branch in parts:
      chex.assert_trees_all_equal_shapes_and_dtypes(branch, grads)
    chex.assert_type(state.global_share, jnp.float32)
    chex.assert_shape(state.global_share, ())


def test_mean_component_with_alpha_minus_one_is_gradient_centralisation(grads, params):
  expected, _ = optax.centralize().update(grads, optax.EmptyState())
  got = _drop_global_step(osp.mean_component(keep_axis=0), grads, params)
  chex.assert_trees_all_close(got, expected, atol=1e-6)


def test_mean_component_default_centres_flax_kernels_per_output_unit():
  kernel = jnp.arange(12.0).reshape(4, 3)  # (in, out)
  parts, _ = _split_parts(osp.mean_component(), kernel, kernel)
  chex.assert_trees_all_close(parts.global_, jnp.broadcast_to(kernel.mean(0), (4, 3)))


def test_norm_excess_with_alpha_minus_one_is_clip_by_global_norm(grads, params):
  for max_norm in (0.5, 3.0, 100.0):
    expected, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    got = _drop_global_step(osp.norm_excess(max_norm), grads, params)
    chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-7)


def test_unit_excess_with_alpha_minus_one_is_adaptive_grad_clip(grads, params):
  for clipping in (0.01, 0.3, 10.0):
    agc = optax.adaptive_grad_clip(clipping)
    expected, _ = agc.update(grads, agc.init(params), params)
    got = _drop_global_step(osp.unit_excess(clipping), grads, params)
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-7)


def _grokfast_ema(grad_sequence, alpha, lamb):
  """Grokfast-EMA as published: the EMA starts at the first gradient."""
  ema, out = None, []
  for g in grad_sequence:
    g = np.asarray(g, np.float64)
    ema = g if ema is None else ema
    ema = ema * alpha + g * (1 - alpha)
    out.append(g + lamb * ema)
  return out


def test_trend_component_with_alpha_lambda_is_grokfast_ema():
  decay, lamb = 0.9, 2.0
  grads = [jax.random.normal(jax.random.PRNGKey(i), (4, 3)) for i in range(6)]
  tx = optax.chain(osp.split(osp.trend_component(decay)), osp.scale_global(1 + lamb),
                   osp.combine())
  state = tx.init(grads[0])
  for g, expected in zip(grads, _grokfast_ema(grads, decay, lamb), strict=True):
    got, state = tx.update(g, state)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(DECOMPOSITIONS))
@pytest.mark.parametrize("params_scale", [0.0, 1.0])
def test_zero_gradients_give_finite_parts_and_share(name, params_scale):
  params = model_tree(jax.random.PRNGKey(0), scale=params_scale)
  zeros = optax.tree.zeros_like(params)
  parts, state = _split_parts(DECOMPOSITIONS[name], zeros, params, steps=3)
  chex.assert_tree_all_finite((parts, state))
  chex.assert_trees_all_close(parts.local, zeros)
  assert float(state.global_share) == 0.0


def test_norm_excess_with_zero_budget_is_finite_where_optax_is_not(grads, params):
  zeros = optax.tree.zeros_like(grads)
  optax_out, _ = optax.clip_by_global_norm(0.0).update(zeros, optax.EmptyState())
  assert not np.isfinite(np.asarray(optax_out["scalar"]))  # what we improve on
  parts, _ = _split_parts(osp.norm_excess(0.0), zeros, params)
  chex.assert_tree_all_finite(parts)
  parts, _ = _split_parts(osp.norm_excess(0.0), grads, params)
  chex.assert_trees_all_close(parts.local, zeros)  # a zero budget keeps nothing


@pytest.mark.parametrize("name", sorted(DECOMPOSITIONS))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_step_does_not_poison_later_steps(name, bad, params):
  decomposition = DECOMPOSITIONS[name]
  tx = jax.jit(osp.split(decomposition).update)
  steps = [model_tree(jax.random.PRNGKey(10 + i)) for i in range(4)]
  poisoned = jax.tree.map(lambda x: x.at[...].set(bad), steps[0])

  def run(sequence):
    state = osp.split(decomposition).init(params)
    for g in sequence:
      parts, state = tx(g, state, params)
    return parts, state

  clean_parts, clean_state = run(steps)
  parts, state = run(steps[:2] + [poisoned] + steps[2:])
  chex.assert_tree_all_finite(parts)
  chex.assert_trees_all_close(parts, clean_parts, rtol=1e-5, atol=1e-6)
  if isinstance(decomposition, osp.SpikeExcess):
    spikes = state.decomposition.spike_count - clean_state.decomposition.spike_count
    assert int(spikes) == 1  # the bad step is counted as a spike


@pytest.mark.parametrize("name", sorted(DECOMPOSITIONS))
def test_global_share_is_the_squared_norm_ratio(name, grads, params):
  parts, state = _split_parts(DECOMPOSITIONS[name], grads, params, steps=3)
  expected = optax.tree.norm(parts.global_, squared=True) / optax.tree.norm(grads, squared=True)
  np.testing.assert_allclose(state.global_share, expected, rtol=1e-5, atol=1e-7)
  assert optax.tree.get(state, "global_share") is state.global_share


def test_spike_excess_threshold_follows_statistics_and_respects_the_cap():
  tx = osp.split(osp.spike_excess(z=2.0, warmup=3, max_norm=4.0))
  state = tx.init(jnp.zeros(2))
  for norm in (1.0, 2.0, 3.0):  # warm-up: only the cap applies
    parts, state = tx.update(jnp.array([norm, 0.0]), state)
    assert float(state.decomposition.threshold) == 4.0
  mean, std = 2.0, np.sqrt(2 / 3)  # population statistics of 1, 2, 3
  parts, state = tx.update(jnp.array([100.0, 0.0]), state)
  np.testing.assert_allclose(state.decomposition.threshold, mean + 2.0 * std, rtol=1e-6)
  np.testing.assert_allclose(parts.local, [mean + 2.0 * std, 0.0], rtol=1e-6)
  assert int(optax.tree.get(state, "spike_count")) == 1

  uncapped = osp.split(osp.spike_excess(z=100.0, warmup=1, max_norm=4.0))
  state = uncapped.init(jnp.zeros(1))
  for _ in range(5):
    parts, state = uncapped.update(jnp.array([50.0]), state)
  assert float(parts.local[0]) <= 4.0  # the cap bounds what adaptive statistics do not


@pytest.mark.parametrize(
    "factory, kwargs, argument",
    [
        (osp.trend_component, {"decay": 1.0}, "decay"),
        (osp.trend_component, {"decay": -0.1}, "decay"),
        (osp.norm_excess, {"max_norm": -1.0}, "max_norm"),
        (osp.spike_excess, {"decay": 1.5}, "decay"),
        (osp.spike_excess, {"z": 0.0}, "z"),
        (osp.spike_excess, {"warmup": 0}, "warmup"),
        (osp.spike_excess, {"max_norm": -2.0}, "max_norm"),
        (osp.unit_excess, {"clipping": 0.0}, "clipping"),
        (osp.unit_excess, {"eps": -1.0}, "eps"),
    ],
)
def test_bad_hyperparameters_name_the_argument(factory, kwargs, argument):
  with pytest.raises(ValueError, match=f"`{argument}`.*E.g."):
    factory(**kwargs)


def test_mean_component_rejects_a_keep_axis_that_does_not_fit():
  tx = osp.split(osp.mean_component(keep_axis=2))
  with pytest.raises(ValueError, match="keep_axis=2.*Choose keep_axis"):
    tx.update(jnp.ones((3, 3)), tx.init(jnp.ones((3, 3))))


def test_unit_excess_without_params_says_how_to_pass_them(grads, params):
  tx = osp.split(osp.unit_excess())
  with pytest.raises(ValueError, match=r"needs the params.*tx.update\(grads, state, params\)"):
    tx.update(grads, tx.init(params))


def test_decompositions_are_static_for_inject_hyperparams():
  for decomposition in DECOMPOSITIONS.values():
    assert not callable(decomposition)
    hash(decomposition)  # usable as a static argument of jit
