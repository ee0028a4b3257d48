"""spike_excess on synthetic norm traces: drift, bursts, step changes, bad numbers, its bound.

The guard sees random-direction vectors (dimension 256) whose norm follows a prescribed trace,
one jitted ``lax.scan`` per trace, and reports per step the input's norm, the local part's norm,
their cosine and the guard's statistics. What is held:

- a smooth drift of the norm (30x up or down, lognormal noise of 5% or 20%) is followed, not
  throttled: few steps after warm-up are clipped and the last ones are kept whole;
- a burst (10x .. 1000x the recent norm, or three 100x steps in a row) is cut to about the
  recent norm, its direction kept;
- after a step change (x5 for good) the guard clips for a bounded number of steps, then none;
- a NaN or Inf step counts as a spike, leaves the statistics as they were (the steps after it
  are those of a run without it), and is not repaired (docs/integration.md, "Bad numbers");
- the bound: after warm-up every local norm is at most the threshold, the threshold at most
  ``max_ratio`` times the mean before the step, and the mean grows by at most a factor
  ``1 + (1 - decay) * (max_ratio - 1)`` per step, under a sustained explosion too;
- ZClip's reference setting is reachable: its threshold matches an independent NumPy recursion.

A step is "clipped" when the local part's norm is below the input's by more than 1e-5
(relative). The norms are measured here as ``max|x| * ||x / max|x|||``, so that a vector whose
squared norm overflows float32 still has a finite one.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_split as osp
from conftest import guard_state

DIM = 256
WARMUP = 25  # spike_excess's default
DECAY = 0.97
MAX_RATIO = 10.0
GROWTH = 1 + (1 - DECAY) * (MAX_RATIO - 1)  # the most the mean may grow in one step: 1.27
CLIPPED_RTOL = 1e-5
# A pool of random unit directions, cycled: the guard sees only the norm, the direction is
# there to check that clipping keeps it.
_DIRECTIONS = np.random.default_rng(0).standard_normal((509, DIM)).astype(np.float32)
_DIRECTIONS /= np.linalg.norm(_DIRECTIONS, axis=1, keepdims=True)


def _norm(x: jax.Array) -> jax.Array:
  """``||x||``, finite for any finite ``x`` (its square may overflow float32)."""
  largest = jnp.max(jnp.abs(x))
  scale = jnp.where((largest > 0) & jnp.isfinite(largest), largest, 1)
  return scale * jnp.linalg.norm(x / scale)


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  a, b = a / _norm(a), b / _norm(b)
  return jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))


@functools.cache
def _program(guard: osp.SpikeExcess):
  """A jitted run of ``split(guard)`` along ``norms`` (``poisons`` added to one entry).

  Returns per step a dict of arrays: the input's and the local part's norm, their cosine,
  whether the local part is finite, the local part's first entry, and the guard's state
  before (``*_before``) and after the step.
  """
  tx = osp.split(guard)
  directions = jnp.asarray(_DIRECTIONS)

  @jax.jit
  def run(steps, norms, poisons):
    def step(state, inputs):
      t, norm, poison = inputs
      grads = (directions[t % directions.shape[0]] * norm).at[0].add(poison)
      before = state.decomposition
      parts, state = tx.update(grads, state)
      after = state.decomposition
      return state, {
          "input": _norm(grads),
          "local": _norm(parts.local),
          "cosine": _cosine(parts.local, grads),
          "local_finite": jnp.all(jnp.isfinite(parts.local)),
          "local_first": parts.local[0],
          "local_rest_zero": jnp.all(parts.local[1:] == 0),
          "mean_before": before.norm_mean,
          "count": after.count,
          "norm_mean": after.norm_mean,
          "norm_var": after.norm_var,
          "cap": after.cap,
          "threshold": after.threshold,
          "spike_count": after.spike_count,
      }

    return jax.lax.scan(step, tx.init(jnp.zeros(DIM)), (steps, norms, poisons))[1]

  return run


def _run(norms, guard=None, poisons=None, steps=None) -> dict[str, np.ndarray]:
  """``_program(guard)`` along ``norms``; ``steps`` (the indices of the directions) 0, 1, ..."""
  guard = osp.spike_excess() if guard is None else guard
  norms = np.asarray(norms, np.float32)
  poisons = np.zeros_like(norms) if poisons is None else np.asarray(poisons, np.float32)
  steps = np.arange(len(norms)) if steps is None else np.asarray(steps)
  return jax.device_get(_program(guard)(steps, norms, poisons))


def _clipped(out) -> np.ndarray:
  return out["local"] < out["input"] * (1 - CLIPPED_RTOL)


def _drift(num: int, factor: float, sigma: float, seed: int = 0) -> np.ndarray:
  """A norm trace going smoothly from 1 to ``factor``, times lognormal noise ``sigma``."""
  noise = np.exp(sigma * np.random.default_rng(seed).standard_normal(num))
  return factor ** (np.arange(num) / (num - 1)) * noise


# --- Drift -------------------------------------------------------------------------------------

# Four seeds for the shorter runs; 100,000 steps average the noise out on one.
SEEDS = {1000: (0, 1, 2, 3), 10_000: (0, 1, 2, 3), 100_000: (0,)}
# At most this fraction of the steps after warm-up is clipped. The noise's own tail clips a few
# in a thousand steps at z = 3.5 (lognormal noise of 20% has a heavier upper tail than a
# Gaussian's). A drift of 30x over only 1,000 steps (0.34% a step, 11% over the EMA's time
# constant of 33 steps) lets the mean lag behind the norm: with 20% noise it then clips about
# 1% of steps (measured over 100 seeds: mean 0.99%, largest 1.54%), hence its 2%.
_DRIFT_CASES = [
    pytest.param(num, factor, sigma, 0.02 if (num, factor, sigma) == (1000, 30.0, 0.2) else 0.01,
                 id=f"{num}-{'up' if factor > 1 else 'down'}-noise{sigma:.0%}")
    for num in (1000, 10_000, 100_000)
    for factor in (30.0, 1 / 30)
    for sigma in (0.05, 0.2)
]


@pytest.mark.parametrize(("num", "factor", "sigma", "max_clipped"), _DRIFT_CASES)
def test_a_smooth_drift_is_followed_not_throttled(num, factor, sigma, max_clipped):
  for seed in SEEDS[num]:
    out = _run(_drift(num, factor, sigma, seed))
    clipped = _clipped(out)[WARMUP:]
    kept = out["local"] / out["input"]
    assert clipped.mean() <= max_clipped, (seed, clipped.mean())
    assert kept[-100:].mean() > 0.99, (seed, kept[-100:].mean())
    assert kept.min() > 0.5, seed  # what is clipped is clipped a little
    # Not throttled: the cap follows the norm, 30x up or down.
    np.testing.assert_allclose(out["cap"][-1] / out["cap"][WARMUP], factor, rtol=0.5)


def test_zclips_z_of_2_5_clips_the_noise_tail_of_a_drift():
  """Why the default z is 3.5: at ZClip's 2.5 the noise alone clips over 1% of the steps."""
  zclip_z = osp.spike_excess(z=2.5)
  fractions = [_clipped(_run(_drift(10_000, 30.0, 0.2, seed), zclip_z))[WARMUP:].mean()
               for seed in SEEDS[10_000]]
  assert min(fractions) > 0.015, fractions  # measured 2.4-2.5% (0.4-0.5% at z = 3.5)


# --- Bursts ------------------------------------------------------------------------------------

_BURST_STARTS = (400, 800, 1200, 1600)
_BURSTS = {"10x": (10.0, 1), "100x": (100.0, 1), "1000x": (1000.0, 1), "3x100x": (100.0, 3)}


def _burst_bound(burst: str, sigma: float) -> float:
  """The most a burst step keeps, relative to the median of the 50 input norms before it.

  The threshold is about ``mean + 3.5 sigma`` of the recent norms: 1.2x the median at 5%
  noise, 1.7x at 20%. Each burst step feeds the statistics its clipped norm, at the
  threshold, so within a run of bursts the threshold rises a little; the third 100x step in
  a row at 20% noise keeps 2.03x the median (measured), hence its 2.5x.
  """
  return 2.5 if (burst, sigma) == ("3x100x", 0.2) else 2.0


@pytest.mark.parametrize("sigma", [0.05, 0.2], ids=lambda sigma: f"noise{sigma:.0%}")
@pytest.mark.parametrize("background", ["constant", "drift"])
@pytest.mark.parametrize("burst", list(_BURSTS))
def test_a_burst_is_cut_to_the_recent_norm_along_its_direction(burst, background, sigma):
  factor, length = _BURSTS[burst]
  trace = _drift(2000, 1.0 if background == "constant" else 30.0, sigma, seed=5)
  bursts = np.zeros(trace.shape, bool)
  for start in _BURST_STARTS:
    bursts[start:start + length] = True
  out = _run(np.where(bursts, factor * trace, trace))
  clipped = _clipped(out)
  spikes = np.diff(out["spike_count"], prepend=0) > 0
  calm = ~bursts & (np.arange(trace.size) >= WARMUP)

  for step in np.flatnonzero(bursts):
    recent = np.median(out["input"][step - 50:step])
    assert clipped[step] and spikes[step], step
    assert out["local"][step] <= _burst_bound(burst, sigma) * recent, (
        step, out["local"][step] / recent)
    np.testing.assert_allclose(out["cosine"][step], 1.0, atol=1e-5)
  # The bursts do not lower the bar: the other steps are clipped (by the noise's tail) as
  # rarely as in the same run without the bursts (measured: as often or less; one more is
  # allowed).
  assert clipped[calm].sum() <= _clipped(_run(trace))[calm].sum() + 1


# --- Step change -------------------------------------------------------------------------------

CHANGE_AT = 1000
# The guard has adapted within this many steps after the change (measured: it clips the
# first 26 steps at 5% noise, 15 of the first 16 at 20%).
ADAPTATION = 50
# Clipped steps after the change (seed 0): 26 at 5% noise, 15 at 20%; bounded with half as
# much again.
_STEP_CHANGE_BOUNDS = {0.05: 39, 0.2: 23}


@pytest.mark.parametrize(("half_width", "max_clipped"), list(_STEP_CHANGE_BOUNDS.items()),
                         ids=[f"noise{w:.0%}" for w in _STEP_CHANGE_BOUNDS])
def test_a_step_change_is_clipped_briefly_then_followed(half_width, max_clipped):
  # Bounded (uniform) noise: its tail never reaches mean + 3.5 sigma, so that once the guard
  # has adapted no step is clipped at all (lognormal noise clips a few in a thousand
  # anywhere; the drift tests hold those).
  noise = 1 + half_width * np.random.default_rng(0).uniform(-1, 1, 2000)
  out = _run(noise * np.where(np.arange(2000) < CHANGE_AT, 1.0, 5.0))
  clipped = _clipped(out)
  after = clipped[CHANGE_AT:]
  assert after[0]  # the change is clipped at first
  assert after.sum() <= max_clipped, after.sum()
  assert not after[ADAPTATION:].any(), np.flatnonzero(after)
  assert not clipped[WARMUP:CHANGE_AT].any()
  # What is clipped is cut to the threshold, never below the level before the change.
  assert (out["local"][CHANGE_AT:][after] >= out["norm_mean"][CHANGE_AT - 1]).all()
  np.testing.assert_allclose(out["norm_mean"][-1] / out["norm_mean"][CHANGE_AT - 1], 5, rtol=0.05)


# --- Bad numbers -------------------------------------------------------------------------------

# Non-finite entries added to one entry at these steps: single ones and a burst of three.
_POISONS = {100: np.nan, 150: np.inf, 200: -np.inf, 250: np.nan, 251: np.inf, 252: np.nan}
_BAD_NUM = 300


def _poisons() -> tuple[np.ndarray, np.ndarray]:
  poisons = np.zeros(_BAD_NUM, np.float32)
  for step, value in _POISONS.items():
    poisons[step] = value
  return poisons, poisons == 0


_STATISTICS = ("count", "norm_mean", "norm_var", "cap", "threshold")


def test_a_non_finite_step_is_a_spike_and_leaves_the_statistics_alone():
  trace = _drift(_BAD_NUM, 1.0, 0.2, seed=3)
  poisons, good = _poisons()
  out = _run(trace, poisons=poisons)
  clean = _run(trace[good], steps=np.flatnonzero(good))  # the run without the bad steps
  bad = ~good
  spikes = np.diff(out["spike_count"], prepend=0) > 0

  assert spikes[bad].all()
  assert int(out["spike_count"][-1]) == int(clean["spike_count"][-1]) + bad.sum()
  for field in ("norm_mean", "norm_var", "cap", "threshold"):
    assert np.isfinite(out[field][1:]).all(), field  # inf only at the first step: no bound yet
  # The bad steps leave the statistics as they were: the good steps, the ones after the bad
  # ones included, are those of the clean run.
  for field in _STATISTICS:
    np.testing.assert_allclose(out[field][good], clean[field], rtol=1e-6, err_msg=field)
  np.testing.assert_allclose(out["local"][good], clean["local"], rtol=1e-6)
  np.testing.assert_allclose(out["spike_count"][good] - np.cumsum(bad)[good],
                             clean["spike_count"])
  assert out["local_finite"][good].all()
  # In "clip" mode a non-finite step is not repaired (docs/integration.md, "Bad numbers"):
  # an inf norm keeps the fraction 0 of the step, so the local part is 0 but for the inf
  # entry (0 * inf = NaN); a NaN norm is not over the threshold, so the step passes whole.
  assert not out["local_finite"][bad].any()
  infinite = np.isinf(poisons)
  assert out["local_rest_zero"][infinite].all()
  assert np.isnan(out["local_first"][bad]).all()
  assert not out["local_rest_zero"][np.isnan(poisons)].any()


@functools.cache
def _preset_program(on_spike: str):
  """``split_sgd``'s guard alone on a trace: no momentum, no split of the step."""
  tx = osp.split_sgd(1.0, guard=osp.spike_excess(on_spike=on_spike), decomposition=None,
                     momentum=None)
  directions = jnp.asarray(_DIRECTIONS)

  @jax.jit
  def run(steps, norms, poisons):
    def step(state, inputs):
      t, norm, poison = inputs
      grads = {"w": (directions[t % directions.shape[0]] * norm).at[0].add(poison)}
      updates, state = tx.update(grads, state)
      guard = guard_state(state)
      return state, (updates["w"], guard, osp.diagnostics(state))

    return jax.lax.scan(step, tx.init({"w": jnp.zeros(DIM)}), (steps, norms, poisons))[1]

  return run


@pytest.mark.parametrize("on_spike", ["clip", "skip"])
def test_the_presets_guard_on_a_non_finite_step(on_spike):
  trace = _drift(_BAD_NUM, 1.0, 0.2, seed=3).astype(np.float32)
  poisons, good = _poisons()
  run = _preset_program(on_spike)
  updates, guard, diagnostics = jax.device_get(run(np.arange(_BAD_NUM), trace, poisons))
  clean_updates, clean_guard, _ = jax.device_get(
      run(np.flatnonzero(good), trace[good], np.zeros(good.sum(), np.float32)))
  bad = ~good

  spikes = np.diff(diagnostics["guard/spike_count"], prepend=0) > 0
  assert spikes[bad].all()
  for field in ("norm_mean", "norm_var", "cap", "threshold"):
    assert np.isfinite(getattr(guard, field)[1:]).all(), field
    np.testing.assert_allclose(getattr(guard, field)[good], getattr(clean_guard, field),
                               rtol=1e-6, err_msg=field)
  np.testing.assert_array_equal(diagnostics["guard/threshold"], guard.threshold)
  # The steps after the bad ones are those of the clean run.
  chex.assert_trees_all_close(updates[good], clean_updates, rtol=1e-6, atol=1e-12)
  if on_spike == "skip":
    # Skipped: the guard keeps only the local part, exactly 0 here.
    np.testing.assert_array_equal(updates[bad], 0.0)
  else:
    # Clipped, not repaired: the non-finite entry reaches the update (docs/integration.md).
    assert not np.isfinite(updates[bad]).all(axis=1).any()


# --- The bound ---------------------------------------------------------------------------------


def _explosion() -> np.ndarray:
  """100 calm steps, then the norm grows 1.5x a step for 200 steps (to about 1.6e35).

  From about the 110th step of growth on the input's squared norm overflows float32.
  """
  calm = _drift(100, 1.0, 0.2, seed=7)
  return np.concatenate([calm, 1.5 ** np.arange(1, 201)])


def _bursty_drift() -> np.ndarray:
  trace = _drift(2000, 30.0, 0.2, seed=8)
  trace[[300, 700, 701, 702, 1500]] *= np.array([1e3, 1e2, 1e2, 1e2, 1e4])
  return trace


_BOUND_CASES = {
    "explosion": (_explosion, osp.spike_excess()),
    # z so large that the relative cap alone sets the threshold: the bound is then reached.
    "explosion-cap-only": (_explosion, osp.spike_excess(z=1e6)),
    "bursty-drift": (_bursty_drift, osp.spike_excess()),
    "drift-down": (lambda: _drift(2000, 1 / 30, 0.2, seed=9), osp.spike_excess()),
}


@pytest.mark.parametrize("case", list(_BOUND_CASES))
def test_the_bound(case):
  trace, guard = _BOUND_CASES[case]
  out = _run(trace(), guard=guard)
  after = slice(WARMUP, None)
  threshold, mean_before = out["threshold"][after], out["mean_before"][after]
  assert np.isfinite(out["local"]).all() and out["local_finite"].all()
  for field in ("norm_mean", "norm_var", "cap", "threshold"):
    assert np.isfinite(out[field][1:]).all(), field
  # Every guarded norm is at most the threshold in force ...
  assert (out["local"][after] <= threshold * (1 + 1e-5)).all()
  # ... the threshold at most max_ratio times the mean of the recent clipped norms ...
  assert (threshold <= MAX_RATIO * mean_before * (1 + 1e-6)).all()
  # ... and that mean grows by at most 1 + (1 - decay) * (max_ratio - 1) a step.
  growth = out["norm_mean"][after] / mean_before
  assert (growth <= GROWTH * (1 + 1e-6)).all(), growth.max()
  if case.startswith("explosion"):
    exploding = slice(100, None)
    clipped = _clipped(out)[exploding]
    assert clipped[10:].all()
    # The guarded norm is the threshold, along the input's direction, with the input
    # more than 1e10 times over it at the end.
    np.testing.assert_allclose(out["local"][exploding][clipped],
                               out["threshold"][exploding][clipped], rtol=1e-5)
    np.testing.assert_allclose(out["cosine"][exploding], 1.0, atol=1e-5)
    assert out["input"][-1] > 1e10 * out["local"][-1]
    assert int(out["spike_count"][-1]) >= 190
    if case == "explosion-cap-only":
      # The relative cap sets the threshold, and the mean grows at exactly the bound's rate.
      np.testing.assert_allclose(growth[-150:], GROWTH, rtol=1e-5)


# --- ZClip's reference setting -----------------------------------------------------------------


def _zclip_thresholds(norms, z, decay, warmup, max_norm) -> np.ndarray:
  """ZClip's thresholds, in float64: warm-up a running mean and variance, then EMAs."""
  mean = var = 0.0
  count = 0
  thresholds = []
  for norm in np.asarray(norms, np.float64):
    in_warmup = count < warmup
    threshold = max_norm if in_warmup else min(mean + z * np.sqrt(var), max_norm)
    clipped = min(norm, threshold)
    count += 1
    weight = 1 / count if in_warmup else 1 - decay
    var = (1 - weight) * (var + weight * (clipped - mean) ** 2)
    mean = mean + weight * (clipped - mean)
    thresholds.append(threshold)
  return np.array(thresholds)


def test_zclips_reference_setting_is_reachable():
  # 100 calm steps at 0.5 with bursts, then a drift up to 3, past max_norm = 1.
  trace = np.concatenate([0.5 * _drift(100, 1.0, 0.2, seed=11), 0.5 * _drift(100, 6.0, 0.1)])
  trace[[40, 60, 61, 90]] *= np.array([5.0, 3.0, 3.0, 20.0])
  trace = trace.astype(np.float32)
  guard = osp.spike_excess(z=2.5, decay=0.97, warmup=25, max_ratio=None, max_norm=1.0)
  out = _run(trace, guard=guard)
  expected = _zclip_thresholds(out["input"], z=2.5, decay=0.97, warmup=25, max_norm=1.0)
  np.testing.assert_allclose(out["threshold"], expected, rtol=1e-5)
  np.testing.assert_allclose(out["local"], np.minimum(out["input"], expected), rtol=1e-5)
  assert (out["cap"] == np.inf).all()
  # Both regimes occur: the z-score threshold under max_norm, and max_norm itself.
  assert (expected[WARMUP:] < 1.0).any() and (expected[WARMUP:] == 1.0).any()
  assert _clipped(out)[[40, 60, 61, 90]].all()
