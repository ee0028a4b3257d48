"""The published update-side clippers against their papers' rules, step by step in NumPy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_split.experiments import anchors

STEPS = 6
B1, EPS = 0.9, 1e-8


def _params():
  rng = np.random.RandomState(0)
  return {"bias": rng.normal(size=3), "kernel": rng.normal(size=(4, 3)),
          "embed": 0.1 * rng.normal(size=(5, 2))}


def _grads(spike_step=3, spike=30.0):
  """A few steps of gradients; every leaf's gradient bursts at ``spike_step``."""
  rng = np.random.RandomState(1)
  out = []
  for t in range(STEPS):
    scale = spike if t == spike_step else 1.0
    g = {"bias": rng.normal(size=3), "kernel": rng.normal(size=(4, 3)),
         "embed": rng.normal(size=(5, 2))}
    g["kernel"][:, 2] *= 1e-3  # A unit whose gradient stays small.
    out.append({k: scale * v for k, v in g.items()})
  return out


def _run(make, hparams, grads, *, jit):
  """Applies ``make(**hparams)`` to ``grads`` in turn; the parameters after each step.

  With ``jit`` the hyperparameters are traced arguments of one compiled step,
  as under the runner's vmap.
  """
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _params())
  state = make(**hparams).init(params)

  def step(hparams, g, state, params):
    updates, state = make(**hparams).update(g, state, params)
    return optax.apply_updates(params, updates), state

  if jit:
    step = jax.jit(chex.assert_max_traces(step, n=1))
    hparams = {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()}
  trajectory = []
  for g in grads:
    params, state = step(hparams, jax.tree.map(jnp.float32, g), state, params)
    trajectory.append(params)
  return trajectory


def _adam(m, v, g, t, b2):
  """Adam's moments and its bias-corrected step, in float64."""
  m = B1 * m + (1 - B1) * g
  v = b2 * v + (1 - b2) * g**2
  m_hat, v_hat = m / (1 - B1**t), v / (1 - b2**t)
  return m, v, m_hat / (np.sqrt(v_hat) + EPS)


def _assert_close(trajectory, expected):
  for t, (got, want) in enumerate(zip(trajectory, expected, strict=True)):
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=f"step {t} {k}")


JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])


@JIT
def test_stable_adamw_is_the_papers_algorithm(jit):
  lr, wd, b2 = 0.05, 0.1, 0.99
  grads = _grads()

  # Wortsman et al. (2023), Algorithm 1: debiased betas, the per-tensor rate.
  params = _params()
  v = {k: np.zeros_like(p) for k, p in params.items()}
  u = {k: np.zeros_like(p) for k, p in params.items()}
  expected, factors = [], []
  for t, g in enumerate(grads, start=1):
    b1_hat = B1 * (1 - B1 ** (t - 1)) / (1 - B1**t)
    b2_hat = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
    params = dict(params)
    for k in params:
      v[k] = b1_hat * v[k] + (1 - b1_hat) * g[k]
      u[k] = b2_hat * u[k] + (1 - b2_hat) * g[k] ** 2
      rms = np.sqrt(np.mean(g[k] ** 2 / np.maximum(u[k], EPS**2)))
      eta = lr / max(1.0, rms)
      factors.append(max(1.0, rms))
      params[k] = params[k] - eta * wd * params[k] - eta * v[k] / (np.sqrt(u[k]) + EPS)
    expected.append(params)
  assert max(factors) > 1.5 and min(factors) == 1.0  # The clip acts, and not always.

  make = lambda learning_rate, weight_decay: anchors.stable_adamw(  # noqa: E731
      learning_rate, b2=b2, weight_decay=weight_decay)
  _assert_close(_run(make, {"learning_rate": lr, "weight_decay": wd}, grads, jit=jit), expected)


@JIT
def test_adam_update_rms_clip_divides_each_step_by_its_rms(jit):
  lr, wd, b2, threshold = 0.05, 0.1, 0.95, 0.9
  grads = _grads()

  params = _params()
  m = {k: np.zeros_like(p) for k, p in params.items()}
  v = {k: np.zeros_like(p) for k, p in params.items()}
  expected, factors = [], []
  for t, g in enumerate(grads, start=1):
    params = dict(params)
    for k in params:
      m[k], v[k], step = _adam(m[k], v[k], g[k], t, b2)
      factor = max(1.0, np.sqrt(np.mean(step**2)) / threshold)
      factors.append(factor)
      params[k] = params[k] - lr * (step / factor + wd * params[k])
    expected.append(params)
  assert max(factors) > 1.0 and min(factors) == 1.0

  make = lambda learning_rate, weight_decay: anchors.adam_update_rms_clip(  # noqa: E731
      learning_rate, b2=b2, weight_decay=weight_decay, threshold=threshold)
  _assert_close(_run(make, {"learning_rate": lr, "weight_decay": wd}, grads, jit=jit), expected)


@JIT
def test_agc_adamw_clips_each_kernel_unit_before_adam(jit):
  lr, wd, b2, clipping = 0.05, 0.1, 0.95, 0.3
  grads = _grads()

  params = _params()
  m = {k: np.zeros_like(p) for k, p in params.items()}
  v = {k: np.zeros_like(p) for k, p in params.items()}
  expected, clipped, kept = [], 0, 0
  for t, g in enumerate(grads, start=1):
    params = dict(params)
    for k in params:
      grad = g[k]
      if grad.ndim >= 2:  # Per column (unit): at most clipping x the column's weight norm.
        g_norm = np.sqrt((grad**2).sum(axis=0))
        max_norm = clipping * np.maximum(np.sqrt((params[k] ** 2).sum(axis=0)), 1e-3)
        over = g_norm >= max_norm
        clipped, kept = clipped + over.sum(), kept + (~over).sum()
        grad = np.where(over, grad * max_norm / np.maximum(g_norm, 1e-6), grad)
      m[k], v[k], step = _adam(m[k], v[k], grad, t, b2)
      params[k] = params[k] - lr * (step + wd * params[k])
    expected.append(params)
  assert clipped > 0 and kept > 0

  make = lambda learning_rate, weight_decay: anchors.agc_adamw(  # noqa: E731
      learning_rate, b2=b2, weight_decay=weight_decay, clipping=clipping)
  _assert_close(_run(make, {"learning_rate": lr, "weight_decay": wd}, grads, jit=jit), expected)


@JIT
def test_adagc_clips_each_tensor_against_its_ema(jit):
  lr, wd, b2 = 0.05, 0.1, 0.95
  relative, decay, warmup, max_norm, eps = 1.04, 0.9, 2, 3.0, 1e-6
  grads = _grads(spike_step=4)

  # Wang et al. (2025): global clipping and the running minimum during the
  # warm-up, then each tensor against relative x the EMA of its clipped norms.
  params = _params()
  m = {k: np.zeros_like(p) for k, p in params.items()}
  v = {k: np.zeros_like(p) for k, p in params.items()}
  gamma = {}
  expected, events = [], {"global": 0, "tensor": 0, "kept": 0}
  for t, g in enumerate(grads, start=1):
    g = dict(g)
    if t <= warmup:
      total = np.sqrt(sum((x**2).sum() for x in g.values()))
      if max_norm / (total + eps) < 1:
        events["global"] += 1
        g = {k: x * max_norm / (total + eps) for k, x in g.items()}
      for k, x in g.items():
        gamma[k] = min(gamma.get(k, np.inf), np.linalg.norm(x))
    else:
      for k, x in g.items():
        norm = np.linalg.norm(x)
        if norm > relative * gamma[k]:
          events["tensor"] += 1
          g[k] = x * relative * gamma[k] / (norm + eps)
          norm = relative * gamma[k]
        else:
          events["kept"] += 1
        gamma[k] = decay * gamma[k] + (1 - decay) * norm
    params = dict(params)
    for k in params:
      m[k], v[k], step = _adam(m[k], v[k], g[k], t, b2)
      params[k] = params[k] - lr * (step + wd * params[k])
    expected.append(params)
  assert events["global"] > 0 and events["tensor"] > 0 and events["kept"] > 0

  def make(learning_rate, weight_decay, relative, decay, max_norm):
    return anchors.adagc(learning_rate, b2=b2, weight_decay=weight_decay, relative=relative,
                         decay=decay, warmup=warmup, max_norm=max_norm)

  hparams = {"learning_rate": lr, "weight_decay": wd, "relative": relative, "decay": decay,
             "max_norm": max_norm}
  _assert_close(_run(make, hparams, grads, jit=jit), expected)


def test_adagc_state_counts_and_keeps_a_scalar_per_tensor():
  tx = anchors.clip_by_adagc(warmup=1)
  params = jax.tree.map(jnp.float32, _params())
  state = tx.init(params)
  for g in _grads()[:3]:
    _, state = tx.update(jax.tree.map(jnp.float32, g), state)
  chex.assert_type(state.count, jnp.int32)
  assert int(state.count) == 3
  chex.assert_shape(jax.tree.leaves(state.gamma), ())


@pytest.mark.parametrize("name", ["stable_adamw", "adam_update_rms_clip", "agc_adamw", "adagc"])
def test_a_schedule_sets_the_rate(name):
  make = getattr(anchors, name)
  grads = _grads()[:3]
  schedule = lambda count: 0.01 * (count + 1)  # noqa: E731
  # A run at the schedule's first rate takes the same first step.
  first = _run(lambda learning_rate: make(learning_rate), {"learning_rate": schedule}, grads,
               jit=False)
  fixed = _run(lambda learning_rate: make(learning_rate), {"learning_rate": 0.01}, grads,
               jit=False)
  chex.assert_trees_all_close(first[0], fixed[0], rtol=1e-6)
  assert not np.allclose(first[2]["kernel"], fixed[2]["kernel"])


@pytest.mark.parametrize("call, match", [
    (lambda: anchors.adam_update_rms_clip(1e-3, threshold=0.0), "`threshold` must be > 0"),
    (lambda: anchors.agc_adamw(1e-3, clipping=-1.0), r"`clipping`.*clipping=0.01"),
    (lambda: anchors.stable_adamw(1e-3, b2=1.0), r"`b2`.*b2=0.95"),
    (lambda: anchors.adagc(1e-3, warmup=-1), r"`warmup`.*warmup=100"),
    (lambda: anchors.clip_by_adagc(decay=1.5), r"`decay`.*decay=0.99"),
])
def test_bad_hyperparameters_name_the_argument_and_the_fix(call, match):
  with pytest.raises(ValueError, match=match):
    call()
