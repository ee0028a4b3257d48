"""A long run of the exploding RNN with NaN and Inf gradients injected at random steps.

Each preset is wrapped in ``optax.apply_if_finite(tx, max_consecutive_errors=K)``, as
docs/integration.md ("Bad numbers") tells users to. What the docs promise, tested here:

- bad steps (single ones and bursts of up to K in a row) are skipped entirely: the
  params never turn non-finite, every statistic of the state stays finite, and the
  run ends with the params of a clean, unwrapped run fed the same batches minus the
  bad steps;
- a burst longer than K: ``apply_if_finite`` gives up and applies the (K + 1)-th bad
  step, so the params turn NaN at exactly that step; optax-split's own statistics (the
  guard's norm statistics, the trend) still hold no NaN or Inf, while Adam's moments do.

Speed: one jitted ``lax.scan`` program per kind of run (guarded, clean), each running
both presets; the two scenarios share the guarded program. The batches are made with
NumPy beforehand: JAX's random numbers inside the scan would triple its compile time.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_split as osp
from optax_split.experiments.tasks.adding import TanhRNN

NUM_STEPS = 2000
MAX_ERRORS = 3  # apply_if_finite's max_consecutive_errors
# The presets at a rate where the RNN (rho = 1.5) trains; their local step is 0.01 x it.
PRESETS = {
    "split_sgd": lambda: osp.split_sgd(learning_rate=1.0, momentum=0.5),
    "split_adam": lambda: osp.split_adam(learning_rate=0.3),
}
POISONS = (jnp.nan, jnp.inf, -jnp.inf)

# The adding task's RNN and loss (optax_split.experiments.tasks.adding), built here without
# the task's evaluation sets, which would cost compilations this test does not need.
LENGTH, BATCH_SIZE = 10, 16
MODEL = TanhRNN(hidden=8, rho=1.5)


def loss(params, batch):
  x, y = batch
  return jnp.mean(jnp.square(MODEL.apply(params, x) - y))


def make_batches(rng: np.random.Generator, num: int):
  """``num`` batches of the adding problem, as the task's ``sample`` makes them (NumPy)."""
  values = rng.random((num, BATCH_SIZE, LENGTH), np.float32)
  half = LENGTH // 2
  first = rng.integers(0, half, (num, BATCH_SIZE, 1))
  second = rng.integers(half, LENGTH, (num, BATCH_SIZE, 1))
  positions = np.arange(LENGTH)
  markers = ((positions == first) | (positions == second)).astype(np.float32)
  return np.stack([values, markers], axis=-1), np.sum(values * markers, axis=-1)


def guarded(name: str) -> optax.GradientTransformation:
  return optax.apply_if_finite(PRESETS[name](), max_consecutive_errors=MAX_ERRORS)


def _poisoned(grads, poison):
  """``grads`` with ``poison`` (NaN, Inf or 0 for none) in the first entry of every leaf."""
  return jax.tree.map(lambda g: g.reshape(-1).at[0].add(poison).reshape(g.shape), grads)


def _statistics_finite(state) -> jax.Array:
  """Whether every float leaf of ``state`` (statistics and buffers) is finite."""
  leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _tree_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


@functools.cache
def guarded_program():
  """Both presets, guarded, along ``batches`` with ``poisons`` added (0: a clean step).

  Returns the final params and states, and per step whether the params and the state
  were finite.
  """
  txs = {name: guarded(name) for name in PRESETS}

  @jax.jit
  def run(params, batches, poisons):
    states = {name: tx.init(params) for name, tx in txs.items()}
    carry = ({name: params for name in txs}, states)

    def step(carry, inputs):
      all_params, states = carry
      batch, poison = inputs
      trace = {}
      for name, tx in txs.items():
        grads = jax.grad(loss)(all_params[name], batch)
        updates, states[name] = tx.update(_poisoned(grads, poison), states[name],
                                          all_params[name])
        all_params[name] = optax.apply_updates(all_params[name], updates)
        trace[name] = (_tree_finite(all_params[name]), _statistics_finite(states[name]))
      return (all_params, states), trace

    return jax.lax.scan(step, carry, (batches, poisons))

  return run


@functools.cache
def clean_program():
  """Both presets, unwrapped, along ``batches``: the final params."""
  txs = {name: PRESETS[name]() for name in PRESETS}

  @jax.jit
  def run(params, batches):
    def step(carry, batch):
      all_params, states = carry
      for name, tx in txs.items():
        grads = jax.grad(loss)(all_params[name], batch)
        updates, states[name] = tx.update(grads, states[name], all_params[name])
        all_params[name] = optax.apply_updates(all_params[name], updates)
      return (all_params, states), None

    carry = ({name: params for name in txs}, {name: tx.init(params) for name, tx in txs.items()})
    return jax.lax.scan(step, carry, batches)[0][0]

  return run


def _fault_schedule(rng: np.random.Generator) -> np.ndarray:
  """Per step the poison to add: 0 mostly; single bad steps and bursts of 2..MAX_ERRORS."""
  poisons = np.zeros(NUM_STEPS, np.float32)
  step = 5
  while step < NUM_STEPS - MAX_ERRORS:
    length = 1 if rng.random() < 0.6 else int(rng.integers(2, MAX_ERRORS + 1))
    poisons[step:step + length] = rng.choice(np.array(POISONS, np.float32), size=length)
    step += length + 1 + int(rng.integers(0, 60))  # at least one good step between
  return poisons


@functools.cache
def _initial():
  params = jax.jit(MODEL.init)(jax.random.key(0), jnp.zeros((1, LENGTH, 2), jnp.float32))
  return params, make_batches(np.random.default_rng(1), NUM_STEPS)


@pytest.fixture(scope="module")
def faulty_run():
  params, batches = _initial()
  poisons = _fault_schedule(np.random.default_rng(0))
  (final_params, states), trace = guarded_program()(params, batches, poisons)
  good = poisons == 0
  clean = clean_program()(params, jax.tree.map(lambda x: x[good], batches))
  return poisons, final_params, states, trace, clean


@pytest.mark.parametrize("preset", PRESETS)
def test_bad_steps_never_reach_the_params_or_the_statistics(preset, faulty_run):
  poisons, final_params, states, trace, _ = faulty_run
  params_finite, state_finite = (np.asarray(x) for x in trace[preset])
  assert (poisons != 0).sum() > 50 and np.any(np.isnan(poisons)) and np.any(np.isinf(poisons))
  assert params_finite.all()
  # Every statistic is finite from the third step on: before that the guard's cap and
  # threshold are still inf ("no bound yet"), by design.
  assert state_finite[2:].all()
  assert int(states[preset].total_notfinite) == (poisons != 0).sum()
  # The guard of the presets took in every good step, and no bad one.
  spike_states = [s for s in jax.tree.leaves(
      states[preset], is_leaf=lambda x: isinstance(x, osp.SpikeExcessState))
      if isinstance(s, osp.SpikeExcessState)]
  for s in spike_states:
    assert int(s.count) == (poisons == 0).sum()


@pytest.mark.parametrize("preset", PRESETS)
def test_guarded_run_matches_a_clean_run_without_the_bad_steps(preset, faulty_run):
  _, final_params, _, _, clean = faulty_run
  # Equal to float32 rounding: two compiled programs may fuse the same arithmetic differently.
  chex.assert_trees_all_close(final_params[preset], clean[preset], rtol=1e-5, atol=1e-5)


@functools.cache
def long_burst_run():
  """A burst of MAX_ERRORS + 2 NaN steps at step 40: apply_if_finite gives up."""
  params, batches = _initial()
  poisons = np.zeros(NUM_STEPS, np.float32)
  poisons[40:40 + MAX_ERRORS + 2] = np.nan
  return guarded_program()(params, batches, poisons)


@pytest.mark.parametrize("preset", PRESETS)
def test_a_burst_longer_than_the_limit_reaches_the_params(preset):
  (final_params, states), trace = long_burst_run()
  params_finite = np.asarray(trace[preset][0])
  # Bad steps 40, 41, 42 are skipped; apply_if_finite applies the fourth, step 43.
  first_bad = 40 + MAX_ERRORS
  assert params_finite[:first_bad].all()
  assert not params_finite[first_bad:].any()
  inner = states[preset].inner_state
  # optax-split's own statistics take in no NaN or Inf ...
  own = [s for s in jax.tree.leaves(
      inner, is_leaf=lambda x: isinstance(x, (osp.SpikeExcessState, osp.TrendState)))
      if isinstance(s, (osp.SpikeExcessState, osp.TrendState))]
  assert own
  for s in own:
    if isinstance(s, osp.SpikeExcessState):
      chex.assert_tree_all_finite((s.count, s.norm_mean, s.norm_var, s.cap))
      assert int(s.count) == 40  # the good steps before the burst
    else:
      chex.assert_tree_all_finite(s.trend)
  # ... while optax's momentum or Adam moments in the chain turn NaN for good.
  moments = optax.tree.get(inner, "trace" if preset == "split_sgd" else "mu")
  assert not bool(_tree_finite(moments))
