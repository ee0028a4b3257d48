"""What keeps the split step as cheap as its optax equivalent, and that it changes no result."""

import re

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import optax_split as osp
from optax_split.experiments.optimizers import grokfast_ema

DECOMPOSITIONS = {
    "mean": osp.mean_component(keep_axis=0),
    "trend": osp.trend_component(0.9),
    "norm": osp.norm_excess(1.0),
    "spike": osp.spike_excess(warmup=1, max_norm=1.0),
    "unit": osp.unit_excess(0.01),
}


def _params_and_grads():
  keys = jax.random.split(jax.random.key(0), 4)
  params = {"w": jax.random.normal(keys[0], (6, 5)), "b": jax.random.normal(keys[1], (5,))}
  grads = {"w": jax.random.normal(keys[2], (6, 5)), "b": jax.random.normal(keys[3], (5,))}
  return params, grads


def _chain(decomposition, global_share):
  return optax.chain(
      osp.split(decomposition, global_share=global_share),
      osp.scale_local(-0.1),
      osp.scale_global(-0.3),
      osp.combine(),
  )


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("name", sorted(DECOMPOSITIONS))
def test_global_share_off_keeps_the_updates_and_drops_the_diagnostic(name, use_jit):
  params, grads = _params_and_grads()
  with_share = _chain(DECOMPOSITIONS[name], True)
  without = _chain(DECOMPOSITIONS[name], False)
  state_on, state_off = with_share.init(params), without.init(params)
  update_on, update_off = with_share.update, without.update
  if use_jit:
    update_on, update_off = jax.jit(update_on), jax.jit(update_off)
  for _ in range(3):
    updates_on, state_on = update_on(grads, state_on, params)
    updates_off, state_off = update_off(grads, state_off, params)
    chex.assert_trees_all_close(updates_off, updates_on, rtol=1e-6, atol=1e-7)
  assert optax.tree.get(state_off, "global_share") is None
  share = optax.tree.get(state_on, "global_share")
  chex.assert_shape(share, ())
  chex.assert_type(share, jnp.float32)


def test_global_share_is_opt_in_for_split_and_on_where_it_is_free():
  params, grads = _params_and_grads()
  _, state = osp.split(osp.trend_component()).update(grads, osp.split(
      osp.trend_component()).init(params), params)
  assert optax.tree.get(state, "global_share") is None
  # The presets' and split_step's default split of the step has it for free.
  for tx in (osp.split_sgd(1.0), osp.split_adam(1.0), osp.split_step(optax.sgd(1.0))):
    _, state = tx.update(grads, tx.init(params), params)
    chex.assert_shape(optax.tree.get(state, "global_share"), ())


def test_global_share_must_be_a_bool():
  with pytest.raises(TypeError, match="global_share.*global_share=False"):
    osp.split(osp.norm_excess(1.0), global_share=1)


def test_unit_excess_share_is_the_ratio_of_squared_norms():
  params, grads = _params_and_grads()
  tx = osp.split(osp.unit_excess(0.01), global_share=True)
  parts, state = tx.update(grads, tx.init(params), params)
  expected = optax.tree.norm(parts.global_, squared=True) / optax.tree.norm(grads, squared=True)
  chex.assert_trees_all_close(optax.tree.get(state, "global_share"), expected, rtol=1e-5)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
@pytest.mark.parametrize("use_jit", [False, True])
def test_trend_keeps_the_average_of_a_non_finite_element(bad, use_jit):
  params, grads = _params_and_grads()
  tx = osp.split(osp.trend_component(0.5))
  update = jax.jit(tx.update) if use_jit else tx.update
  _, state = update(grads, tx.init(params), params)
  _, clean_state = update(grads, state, params)
  poisoned = {"w": grads["w"].at[2, 3].set(bad), "b": grads["b"]}
  parts, new_state = update(poisoned, state, params)
  old_trend, clean_trend = state.decomposition.trend, clean_state.decomposition.trend
  expected = {"w": clean_trend["w"].at[2, 3].set(old_trend["w"][2, 3]), "b": clean_trend["b"]}
  chex.assert_trees_all_equal(new_state.decomposition.trend, expected)
  chex.assert_trees_all_equal(parts.global_, expected)
  assert not jnp.isfinite(optax.tree.norm(parts.local))  # the step itself is not finite


def _temp_bytes(tx, params, grads):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), grads)
  return lowered.compile().memory_analysis().temp_size_in_bytes


def test_trend_step_updates_its_average_in_place():
  # A params-sized buffer is 256 KiB here; the split may add only scalars.
  params = {"w": jnp.zeros((256, 256))}
  grads = {"w": jnp.ones((256, 256))}
  split_tx = optax.chain(_chain(osp.trend_component(0.9), False), optax.identity())
  ema_tx = optax.chain(optax.ema(0.9, debias=False), optax.sgd(0.1))
  assert _temp_bytes(split_tx, params, grads) <= _temp_bytes(ema_tx, params, grads) + 4096


@pytest.mark.parametrize("preset", [osp.split_sgd, osp.split_adam])
def test_presets_pass_global_share_on(preset):
  params, grads = _params_and_grads()
  with_share, without = preset(1.0), preset(1.0, global_share=False)
  state_on, state_off = with_share.init(params), without.init(params)
  for _ in range(3):
    updates_on, state_on = jax.jit(with_share.update)(grads, state_on, params)
    updates_off, state_off = jax.jit(without.update)(grads, state_off, params)
    chex.assert_trees_all_close(updates_off, updates_on, rtol=1e-6, atol=1e-7)
  assert optax.tree.get(state_off, "global_share") is None
  chex.assert_shape(optax.tree.get(state_on, "global_share"), ())


def _compiled_step_text(tx, params, grads) -> str:
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), grads).compile(
  ).as_text()


def _elementwise_ops(tx) -> int:
  """Arithmetic instructions over whole kernels in the compiled update-and-apply step.

  The kernel is (96, 96); the instructions that make or move a (96, 96) array
  without arithmetic (parameters, broadcasts, bitcasts, fusions, copies) are
  not counted. Both sides of a comparison are compiled by the same XLA, so the
  count compares the work each does per element, not XLA versions.
  """
  keys = jax.random.split(jax.random.key(0), 2)
  params = {"w": jax.random.normal(keys[0], (96, 96)), "b": jnp.zeros(96)}
  grads = {"w": jax.random.normal(keys[1], (96, 96)), "b": jnp.ones(96)}
  ops = re.findall(r"= f32\[96,96\]\{1,0\} ([\w-]+)\(", _compiled_step_text(tx, params, grads))
  moves = {"parameter", "bitcast", "broadcast", "fusion", "tuple", "constant", "copy"}
  return sum(op not in moves for op in ops)


def _dropping(decomposition, alpha=-1.0):
  return optax.chain(osp.split(decomposition), osp.scale_local(-0.1),
                     osp.scale_global(-(1 + alpha) * 0.1), osp.combine())


@pytest.mark.parametrize("split_tx, optax_tx, extra", [
    # alpha = -1: the dropped global branch is never read, so the split costs at
    # most what the optax chain it replaces costs (norm_excess has no divide).
    (_dropping(osp.norm_excess(1.0)),
     optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1)), 0),
    (_dropping(osp.mean_component(keep_axis=0)),
     optax.chain(optax.centralize(), optax.sgd(0.1)), 0),
    (_dropping(osp.unit_excess(0.01)),
     optax.chain(optax.adaptive_grad_clip(0.01), optax.sgd(0.1)), 0),
    (osp.split_step(optax.adamw(0.1)),
     optax.chain(optax.adamw(0.1), optax.masked(optax.adaptive_grad_clip(0.01, eps=0.0),
                                                lambda p: jax.tree.map(lambda x: x.ndim >= 2, p))),
     0),
    # Grokfast-EMA: the chain computes -lr (g - m) - (1 + lambda) lr m where optax
    # writes -lr (g + lambda m); XLA does not reassociate floats: one subtract more.
    (_dropping(osp.trend_component(0.98), alpha=2.0),
     optax.chain(grokfast_ema(0.98, 2.0), optax.sgd(0.1)), 1),
], ids=["norm_excess", "mean_component", "unit_excess", "split_step", "trend_component"])
def test_the_split_does_no_more_work_per_element_than_its_optax_twin(split_tx, optax_tx, extra):
  assert _elementwise_ops(split_tx) <= _elementwise_ops(optax_tx) + extra


def _temporary_bytes(tx, params, grads) -> int:
  """Temporary memory of the compiled update-and-apply step, params and state donated."""

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = jax.tree.map(jnp.copy, params)
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), grads).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def _layers(n: int) -> tuple[dict, dict]:
  keys = jax.random.split(jax.random.key(0), n)
  params = {f"layer{i}": {"kernel": jax.random.normal(keys[i], (512, 512)),
                          "bias": jnp.zeros(512)} for i in range(n)}
  return params, jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)


@pytest.mark.parametrize("guarded", [
    pytest.param(lambda: optax.chain(osp.split(osp.spike_excess(max_norm=1.0)),
                                     osp.scale_global(0.0), osp.combine(), optax.sgd(0.1)),
                 id="split(spike_excess)"),
    pytest.param(lambda: optax.chain(osp.guard(), optax.sgd(0.1)), id="guard"),
    pytest.param(lambda: osp.split_sgd(1.0, decomposition=None), id="split_sgd's guard"),
])
def test_the_guard_holds_no_leaf_sized_temporary(guarded):
  # The overflow branch of the guard's norm must not make the compiled step keep a copy
  # of a leaf: its temporary stays within a few kilobytes of optax's clip.
  params, grads = _layers(2)
  leaf_bytes = 512 * 512 * 4
  ours = _temporary_bytes(guarded(), params, grads)
  reference = _temporary_bytes(optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1)),
                               params, grads)
  assert ours < reference + leaf_bytes // 16, (ours, reference)


def test_bounding_the_small_leaves_holds_no_copy_per_kernel():
  # The small leaves' floor reads every kernel; without an order on that read XLA
  # kept a copy of each kernel, so the extra temporaries grew with the model.
  leaf_bytes = 512 * 512 * 4
  extra = []
  for n in (2, 4):
    params, grads = _layers(n)
    bounded = _temporary_bytes(osp.split_sgd(1.0), params, grads)
    alone = _temporary_bytes(
        osp.split_sgd(1.0, decomposition=osp.defaults.STEP_DECOMPOSITION), params, grads)
    extra.append(bounded - alone)
  assert extra[1] < extra[0] + leaf_bytes // 16, extra
