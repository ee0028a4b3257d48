"""A soak: 20,000 steps of the exploding RNN under ``split_sgd``'s guard, bursts and a drift.

``split_sgd`` at its defaults (the guard ``spike_excess()``, momentum 0.9, the step's split)
trains the adding task's tanh RNN (rho 1.5, whose gradients explode now and then) under
``jax.jit(chunk, donate_argnums=(0, 1))``, each call a ``lax.scan`` of 1,000 steps. The
gradient is multiplied by a scale growing smoothly 30x over the run, and by 100 or 1e4 at a
few fixed steps (bursts). What is held:

- the params and the guard's statistics are finite at the end;
- after warm-up every guarded gradient norm is at most the threshold in force: the guarded
  gradient is measured from the momentum trace (``trace_t - 0.9 * trace_{t-1}``), not from
  the guard's own state;
- every injected burst is counted as a spike;
- the guard clips few of the other steps (the RNN's own spikes and the noise's tail).

Speed: a small RNN (hidden 8, sequences of 10); one compilation, 20 calls.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_split as osp
from conftest import guard_state
from optax_split.experiments.tasks.adding import TanhRNN, make_sequences

NUM_STEPS, CHUNK = 20_000, 1_000
WARMUP = 25  # spike_excess's default
MOMENTUM = 0.9  # split_sgd's default
DRIFT = 30.0  # the gradient's scale grows smoothly by this factor over the run
BURSTS = {1_000: 100.0, 4_321: 1e4, 7_000: 100.0, 7_001: 100.0, 7_002: 100.0, 11_111: 1e4,
          15_000: 100.0, 18_765: 1e4, 19_990: 1e4}
# Clipped steps that were not injected bursts, as a fraction of the steps after warm-up:
# measured 0.58% (0.35-0.38% without the drift and the bursts).
# They are the RNN's own spikes, clipped a little (median norm 1.09x the threshold). Held to
# about three times that.
MAX_OTHER_CLIPPED = 0.015

# The adding task's RNN and loss (optax_split.experiments.tasks.adding), built here without
# the task's evaluation sets, as tests/test_faults.py does.
LENGTH, BATCH_SIZE = 10, 16
MODEL = TanhRNN(hidden=8, rho=1.5)


def loss(params, batch):
  x, y = batch
  return jnp.mean(jnp.square(MODEL.apply(params, x) - y))


@jax.jit
def make_batches(key: jax.Array):
  """``CHUNK`` batches of the adding problem, sampled as the task samples them."""
  return jax.vmap(lambda k: make_sequences(k, BATCH_SIZE, LENGTH))(jax.random.split(key, CHUNK))


def _factors() -> np.ndarray:
  """Per step, what the gradient is multiplied by: the drift, times any burst."""
  factors = DRIFT ** (np.arange(NUM_STEPS) / (NUM_STEPS - 1))
  for step, burst in BURSTS.items():
    factors[step] *= burst
  return factors.astype(np.float32)


@functools.cache
def _chunk_program():
  tx = osp.split_sgd(learning_rate=1.0)

  def chunk(params, state, batches, factors):
    def step(carry, inputs):
      params, state = carry
      batch, factor = inputs
      grads = jax.tree.map(lambda g: factor * g, jax.grad(loss)(params, batch))
      old_trace = optax.tree.get(state, "trace")
      updates, state = tx.update(grads, state, params)
      # The guarded gradient, as it entered the momentum.
      guarded = jax.tree.map(lambda new, old: new - MOMENTUM * old,
                             optax.tree.get(state, "trace"), old_trace)
      diagnostics = osp.diagnostics(state)
      log = {
          "guarded": optax.tree.norm(guarded),
          "norm": diagnostics["guard/norm"],
          "threshold": diagnostics["guard/threshold"],
          "spike_count": diagnostics["guard/spike_count"],
      }
      return (optax.apply_updates(params, updates), state), log

    return jax.lax.scan(step, (params, state), (batches, factors))

  return tx, jax.jit(chunk, donate_argnums=(0, 1))


def run_soak(factors: np.ndarray, seed: int = 0):
  """Trains along ``factors``; returns the final params and state and the per-step logs."""
  tx, chunk = _chunk_program()
  params = jax.jit(MODEL.init)(jax.random.key(seed), jnp.zeros((1, LENGTH, 2), jnp.float32))
  state = tx.init(params)
  keys = jax.random.split(jax.random.key(seed + 1), NUM_STEPS // CHUNK)
  logs = []
  for start, key in zip(range(0, NUM_STEPS, CHUNK), keys, strict=True):
    batches = make_batches(key)
    (params, state), log = chunk(params, state, batches, factors[start:start + CHUNK])
    logs.append(log)
  logs = jax.device_get(jax.tree.map(lambda *xs: jnp.concatenate(xs), *logs))
  return jax.device_get(params), jax.device_get(state), logs


@pytest.fixture(scope="module")
def soak():
  return run_soak(_factors())


def _spikes(logs) -> np.ndarray:
  return np.diff(logs["spike_count"], prepend=0) > 0


def test_the_params_and_the_statistics_end_finite(soak):
  params, state, _ = soak
  for leaf in jax.tree.leaves(params):
    assert np.isfinite(leaf).all()
  guard = guard_state(state)
  for field in ("norm_mean", "norm_var", "cap", "threshold", "norm"):
    assert np.isfinite(getattr(guard, field)), field
  assert int(guard.count) == NUM_STEPS  # every step was finite, so every one fed it


def test_every_guarded_norm_is_at_most_the_threshold(soak):
  _, _, logs = soak
  after = slice(WARMUP, None)
  assert np.isfinite(logs["threshold"][after]).all()
  ratio = logs["guarded"][after] / logs["threshold"][after]
  assert ratio.max() <= 1 + 1e-4, ratio.max()
  # Where the guard clipped, the guarded norm is the threshold; elsewhere the gradient.
  spikes = _spikes(logs)[after]
  np.testing.assert_allclose(ratio[spikes], 1.0, rtol=1e-4)
  np.testing.assert_allclose(logs["guarded"][after][~spikes], logs["norm"][after][~spikes],
                             rtol=1e-4)


def test_the_bursts_are_counted_as_spikes(soak):
  _, _, logs = soak
  steps = np.array(list(BURSTS))
  assert _spikes(logs)[steps].all(), steps[~_spikes(logs)[steps]]
  # ... and cut to a few times the norms before them (measured: at most 5.0x their median).
  for step in steps:
    recent = np.median(logs["norm"][step - 50:step])
    assert logs["guarded"][step] <= 10 * recent, (step, logs["guarded"][step] / recent)


def test_few_other_steps_are_clipped(soak):
  _, _, logs = soak
  other = np.ones(NUM_STEPS, bool)
  other[list(BURSTS)] = False
  other[:WARMUP] = False
  fraction = _spikes(logs)[other].mean()
  assert fraction <= MAX_OTHER_CLIPPED, fraction
  # The drift is followed: the threshold at the end is about 30x that after warm-up.
  early = np.median(logs["threshold"][WARMUP:WARMUP + 500])
  late = np.median(logs["threshold"][-500:])
  assert late > 5 * early, late / early
