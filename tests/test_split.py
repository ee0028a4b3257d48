"""split / combine / branch transformations: plumbing, nesting and misuse."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_split as osp
from conftest import DTYPES, dtype_context, model_tree


def _run(tx, grads, params, steps=1):
  state = tx.init(params)
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
  return updates, state


def test_bare_chain_is_the_reference_step(grads, params):
  eta_local, eta_global = osp.split_rates(2.0, alpha=3.0)
  decomposition = osp.norm_excess(1.0)
  tx = optax.chain(
      osp.split(decomposition), osp.scale_local(-eta_local), osp.scale_global(-eta_global),
      osp.combine(),
  )
  updates, _ = _run(tx, grads, params)
  parts, _ = _run(osp.split(decomposition), grads, params)
  expected = jax.tree.map(lambda g, big_g: -0.02 * (g + 3.0 * big_g), grads, parts.global_)
  chex.assert_trees_all_close(updates, expected, rtol=1e-6)


def test_scale_accepts_schedules(grads, params):
  schedule = optax.linear_schedule(1.0, 0.0, transition_steps=4)
  tx = optax.chain(osp.split(osp.mean_component()), osp.scale_local(schedule),
                   osp.scale_global(schedule), osp.combine())
  state = tx.init(params)
  for step in range(3):
    updates, state = tx.update(grads, state, params)
    expected = optax.tree.scale(schedule(step), grads)
    chex.assert_trees_all_close(updates, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [osp.scale_local, osp.scale_global])
def test_a_rate_of_zero_drops_the_branch_and_a_schedule_multiplies(scale):
  branch = "local" if scale is osp.scale_local else "global_"
  parts = osp.SplitUpdates(local=jnp.array([1.0, jnp.inf]), global_=jnp.array([jnp.nan, 2.0]))
  for zero in (0.0, 0, -0.0, np.float32(0.0)):
    dropped, _ = jax.jit(scale(zero).update)(parts, scale(zero).init(None))
    chex.assert_trees_all_equal(getattr(dropped, branch), jnp.zeros(2))
  # An array or a schedule (or an injected hyperparameter) multiplies: 0 * Inf is NaN.
  for zero in (jnp.asarray(0.0), optax.constant_schedule(0.0)):
    multiplied, _ = jax.jit(scale(zero).update)(parts, scale(zero).init(None))
    assert jnp.isnan(getattr(multiplied, branch)).any()


def test_on_local_holds_params_shaped_state_of_a_stateful_transformation(grads, params):
  tx = optax.chain(osp.split(osp.mean_component()), osp.on_local(optax.trace(decay=0.5)),
                   osp.combine())
  updates, state = _run(tx, grads, params, steps=2)
  trace_state = state[1]
  chex.assert_trees_all_equal_shapes_and_dtypes(trace_state.trace, params)
  parts, _ = _run(osp.split(osp.mean_component()), grads, params)
  expected = jax.tree.map(lambda local, big_g: 1.5 * local + big_g, parts.local, parts.global_)
  chex.assert_trees_all_close(updates, expected, rtol=1e-5, atol=1e-6)


def test_a_split_nests_inside_on_local(grads, params):
  inner = optax.chain(osp.split(osp.norm_excess(1.0)), osp.scale_global(0.0), osp.combine())
  tx = optax.chain(osp.split(osp.mean_component()), osp.on_local(inner),
                   osp.on_global(optax.scale(2.0)), osp.combine())
  updates, _ = _run(tx, grads, params)
  parts, _ = _run(osp.split(osp.mean_component()), grads, params)
  clipped, _ = optax.clip_by_global_norm(1.0).update(parts.local, optax.EmptyState())
  expected = jax.tree.map(lambda local, big_g: local + 2.0 * big_g, clipped, parts.global_)
  chex.assert_trees_all_close(updates, expected, rtol=1e-5, atol=1e-6)


def test_branch_transformations_pass_extra_args_on(grads, params):
  seen = {}

  def update_fn(updates, state, params=None, *, loss=None):
    del params
    seen["loss"] = loss
    return updates, state

  spy = optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)
  tx = optax.chain(osp.split(osp.mean_component()), osp.on_local(spy), osp.combine())
  tx.update(grads, tx.init(params), params, loss=1.5)
  assert seen["loss"] == 1.5


@pytest.mark.parametrize(
    "make, caller",
    [(osp.combine, "combine()"), (lambda: osp.scale_local(0.1), "scale_local()"),
     (lambda: osp.scale_global(0.1), "scale_global()"),
     (lambda: osp.on_local(optax.identity()), "on_local()"),
     (lambda: osp.on_global(optax.identity()), "on_global()")],
)
def test_branch_transformations_on_plain_updates_say_how_to_split(make, caller, grads, params):
  tx = make()
  with pytest.raises(TypeError, match=rf"{caller}.*Put split\(decomposition\) before"):
    tx.update(grads, tx.init(params), params)


def test_split_twice_says_how_to_nest(grads, params):
  tx = optax.chain(osp.split(osp.mean_component()), osp.split(osp.mean_component()))
  with pytest.raises(TypeError, match=r"split already.*on_local\(optax.chain\(split"):
    tx.update(grads, tx.init(params), params)


def test_split_rejects_what_is_not_a_decomposition():
  with pytest.raises(TypeError, match="decomposition such as norm_excess"):
    osp.split(lambda g: g)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.complex64])
def test_integer_and_complex_leaves_are_rejected_by_name(dtype):
  params = {"w": jnp.ones(3), "steps": jnp.ones(2, dtype)}
  tx = osp.split(osp.mean_component())
  with pytest.raises(TypeError, match=r"params\['steps'\] has dtype"):
    tx.init(params)


def test_mismatched_params_and_updates_are_rejected(grads, params):
  tx = osp.split(osp.mean_component())
  state = tx.init(params)
  with pytest.raises(ValueError, match="different tree structures"):
    tx.update(grads, state, {"other": jnp.ones(3)})


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_whole_chain_keeps_shape_and_dtype_under_jit_without_retracing(dtype):
  with dtype_context(dtype) as dt:
    params = model_tree(jax.random.PRNGKey(0), dt)
    grads = model_tree(jax.random.PRNGKey(1), dt)
    eta_local, eta_global = osp.split_rates(optax.constant_schedule(1.0), alpha=jnp.asarray(2.0))
    tx = optax.chain(
        osp.split(osp.trend_component()), osp.scale_local(eta_local),
        osp.scale_global(eta_global), osp.on_local(optax.trace(0.9)), osp.combine(),
    )
    chex.clear_trace_counter()
    update = jax.jit(chex.assert_max_traces(tx.update, n=1))
    state = tx.init(params)
    for _ in range(2):
      updates, state = update(grads, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
