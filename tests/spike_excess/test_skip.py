"""spike_excess(on_spike="skip"): a spike step is dropped whole; its clipped norm feeds the
statistics as a clipped step's does, and a non-finite step feeds nothing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_split as osp
from conftest import guard_state

_STATISTICS = ("count", "norm_mean", "norm_var", "cap")
_CALM = [jnp.array([1.0, 0.0]), jnp.array([0.0, 1.2]), jnp.array([0.8, 0.0])]
_SPIKE = jnp.array([30.0, 40.0])


def _guard_state(state):
  return guard_state(state)


def _train(tx, grads_list, params, guard_state=lambda s: s):
  """Applies each gradient; returns the params and the guard's state after each step."""
  state = tx.init(params)
  update = jax.jit(tx.update)
  history = []
  for grads in grads_list:
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    history.append((params, guard_state(state)))
  return history


@pytest.mark.parametrize("bad", ["spike", "nan"])
def test_the_bare_chain_with_alpha_minus_one_skips_the_step(bad):
  tx = optax.chain(
      osp.split(osp.spike_excess(warmup=3, on_spike="skip")),
      osp.scale_local(-0.1), osp.scale_global(0.0), osp.combine(),
  )
  spike = _SPIKE if bad == "spike" else jnp.array([1.0, jnp.inf])
  history = _train(tx, [*_CALM, spike, _CALM[0]], jnp.zeros(2),
                   guard_state=lambda s: s[0].decomposition)
  (before, stats_before), (after, stats_after), (last, stats_last) = history[2:]
  # A literal scale_global(0.0) drops the branch that holds the spike (an Inf too)
  # instead of multiplying it by 0, so a skipped step leaves the params as they were.
  chex.assert_trees_all_equal(after, before)
  assert int(stats_after.spike_count) == int(stats_before.spike_count) + 1 == 1
  # A finite spike feeds its clipped norm (the threshold, above the mean); an Inf feeds nothing.
  fed = bad == "spike"
  assert int(stats_after.count) == 3 + fed
  if fed:
    assert float(stats_after.norm_mean) > float(stats_before.norm_mean)
  else:
    for field in _STATISTICS:
      chex.assert_trees_all_equal(getattr(stats_after, field), getattr(stats_before, field))
  # The next calm step is taken and fed.
  assert np.isfinite(last).all() and not np.array_equal(last, after)
  assert int(stats_last.count) == 4 + fed


@pytest.mark.parametrize("decomposition", [osp.mean_component(), osp.norm_excess(1e3)])
def test_the_presets_guard_skips_the_step(decomposition):
  # Without momentum, so that a zero gradient is a zero step.
  tx = osp.split_sgd(1.0, guard=osp.spike_excess(warmup=3, on_spike="skip"),
                     decomposition=decomposition, momentum=None)
  params = {"w": jnp.zeros(2)}
  grads = [{"w": g} for g in (*_CALM, _SPIKE, jnp.array([jnp.nan, 1.0]))]
  history = _train(tx, grads, params, guard_state=_guard_state)
  (before, stats_before), (spiked, stats_spiked), (nan, stats_nan) = history[2:]
  chex.assert_trees_all_equal(spiked, before)
  chex.assert_trees_all_equal(nan, before)  # a non-finite step is a zero step too
  assert int(stats_spiked.count) == int(stats_before.count) + 1  # the spike's clipped norm fed
  for field in _STATISTICS:  # the non-finite step fed nothing
    chex.assert_trees_all_equal(getattr(stats_nan, field), getattr(stats_spiked, field))
  assert int(stats_spiked.spike_count) == 1 and int(stats_nan.spike_count) == 2
  np.testing.assert_allclose(stats_spiked.norm, 50.0)


def test_both_modes_feed_the_clipped_norm_to_the_statistics():
  states = {}
  for mode in ("clip", "skip"):
    tx = osp.split(osp.spike_excess(warmup=3, on_spike=mode))
    state = tx.init(jnp.zeros(2))
    for g in (*_CALM, _SPIKE):
      parts, state = tx.update(g, state)
    states[mode] = (parts, state.decomposition)
  clip_parts, clip_state = states["clip"]
  skip_parts, skip_state = states["skip"]
  for field in _STATISTICS:
    chex.assert_trees_all_equal(getattr(skip_state, field), getattr(clip_state, field))
  assert int(skip_state.count) == 4
  chex.assert_trees_all_equal(skip_parts.local, jnp.zeros(2))
  chex.assert_trees_all_equal(skip_parts.global_, _SPIKE)
  np.testing.assert_allclose(optax.tree.norm(clip_parts.local), clip_state.threshold, rtol=1e-6)


def test_on_spike_is_validated():
  with pytest.raises(ValueError, match='`on_spike` must be "clip" or "skip"'):
    osp.spike_excess(on_spike="drop")
  with pytest.raises(TypeError):
    osp.spike_excess(2.5, 0.97, 25, 10.0, None, "skip")
