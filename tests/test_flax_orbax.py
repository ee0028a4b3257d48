"""Training with Flax (NNX and TrainState) and checkpointing the state with Orbax."""

import functools
import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from flax.training import train_state

import optax_split as osp
from conftest import BUILT_IN_DECOMPOSITIONS

# Effective (local) step 0.1 for SGD and 0.03 for Adam: 0.01 * learning_rate. The default
# split_sgd amplifies the gradient's trend (alpha 7), which already acts like momentum.
OPTIMIZERS = {
    "split_sgd": lambda: osp.split_sgd(learning_rate=10.0),
    "split_adam": lambda: osp.split_adam(learning_rate=3.0),
    "split_muon": lambda: osp.split_muon(learning_rate=3.0),
    # unit_excess needs the params: Flax must pass them to update.
    "split_sgd_unit_excess": lambda: osp.split_sgd(
        learning_rate=10.0, momentum=0.9, decomposition=osp.unit_excess()
    ),
}

INPUTS = jax.random.normal(jax.random.key(0), (64, 4))
TARGETS = jnp.sin(INPUTS[:, :1]) + 0.5 * INPUTS[:, 1:2]
NUM_STEPS = 100


class MLP(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(4, 16, rngs=rngs)
    self.out = nnx.Linear(16, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


def nnx_loss(model):
  return jnp.mean(jnp.square(model(INPUTS) - TARGETS))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_nnx_optimizer_trains(optimizer):
  model = MLP(nnx.Rngs(0))
  opt = nnx.Optimizer(model, OPTIMIZERS[optimizer](), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, opt):
    loss, grads = nnx.value_and_grad(nnx_loss)(model)
    opt.update(model, grads)
    return loss

  initial = float(nnx_loss(model))
  for _ in range(NUM_STEPS):
    train_step(model, opt)
  assert float(nnx_loss(model)) < 0.3 * initial


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_train_state_trains(optimizer):
  model = MLP(nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(params):
    return nnx_loss(nnx.merge(graphdef, params))

  state = train_state.TrainState.create(
      apply_fn=None, params=params, tx=OPTIMIZERS[optimizer]()
  )

  @jax.jit
  def train_step(state):
    return state.apply_gradients(grads=jax.grad(loss)(state.params))

  initial = float(loss(state.params))
  for _ in range(NUM_STEPS):
    state = train_step(state)
  assert float(loss(state.params)) < 0.3 * initial


# ---------------------------------------------------------------------- Orbax ----

PRESETS = {  # momentum, so that split_sgd's state holds a params-shaped trace too
    "split_sgd": lambda d: osp.split_sgd(10.0, momentum=0.9, decomposition=d),
    "split_adam": lambda d: osp.split_adam(1.0, decomposition=d),
}
DECOMPOSITIONS = BUILT_IN_DECOMPOSITIONS


def _quadratic(params):
  return sum(jnp.sum(jnp.square(p.astype(jnp.float32) - 1.0)) for p in jax.tree.leaves(params))


def _as_bits(tree):
  """Each leaf's dtype and raw bytes: equal exactly when the leaves are bit-identical."""
  return jax.tree.map(lambda x: (np.asarray(x).dtype, np.asarray(x).tobytes()), tree)


@pytest.mark.parametrize("decomposition", DECOMPOSITIONS)
@pytest.mark.parametrize("preset", PRESETS)
def test_orbax_restores_the_state_bit_exactly_and_resumes(preset, decomposition, tmp_path):
  tx = PRESETS[preset](DECOMPOSITIONS[decomposition])

  # Op by op: ten cases share the compiled primitives; bit-exactness does not depend on jit.
  def train_step(params, opt_state):
    updates, opt_state = tx.update(jax.grad(_quadratic)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  # Two dtypes in one tree: the checkpoint must keep both.
  params = {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4),
            "bias": jnp.arange(4.0, dtype=jnp.bfloat16)}

  def advance(run, num_steps=3):
    params, opt_state = run["params"], run["opt_state"]
    for _ in range(num_steps):
      params, opt_state = train_step(params, opt_state)
    return {"params": params, "opt_state": opt_state}

  run = advance({"params": params, "opt_state": tx.init(params)})

  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "checkpoint", run)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(
        tmp_path / "checkpoint", jax.tree.map(ocp.utils.to_shape_dtype_struct, run)
    )

  assert jax.tree.structure(restored) == jax.tree.structure(run)
  assert _as_bits(restored) == _as_bits(run)

  resumed, uninterrupted = advance(restored), advance(run)
  assert _as_bits(resumed) == _as_bits(uninterrupted)
  chex.assert_trees_all_equal_shapes_and_dtypes(resumed, run)


# The presets' default guard, whose statistics warm up over its first steps.
_GUARD = inspect.signature(osp.split_sgd).parameters["guard"].default
WARMUP_GUARD = _GUARD if isinstance(_GUARD, osp.SpikeExcess) else osp.spike_excess()
RESUME_PRESETS = {
    "split_sgd": lambda: osp.split_sgd(10.0, guard=WARMUP_GUARD),
    "split_adam": lambda: osp.split_adam(1.0, guard=WARMUP_GUARD),
}


@functools.cache
def _jitted_step(preset: str):
  tx = RESUME_PRESETS[preset]()

  @jax.jit
  def train_step(params, opt_state, scale):
    # A gradient that changes from step to step, so that the statistics move.
    grads = jax.tree.map(lambda g: scale * g, jax.grad(_quadratic)(params))
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return tx, train_step


def _guard_count(opt_state) -> int:
  guards = [s for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, osp.SpikeExcessState))
      if isinstance(s, osp.SpikeExcessState)]
  assert len(guards) == 1
  return int(guards[0].count)


@pytest.mark.parametrize("phase", ["in_warmup", "after_warmup"])
@pytest.mark.parametrize("preset", RESUME_PRESETS)
def test_resume_in_and_after_the_guards_warmup_continues_bit_identically(
    preset, phase, tmp_path
):
  """Save in the middle of the guard's warm-up and after it; the resumed run is the same."""
  warmup = WARMUP_GUARD.warmup
  save_at = warmup // 2 if phase == "in_warmup" else warmup + 15
  tx, train_step = _jitted_step(preset)
  scales = 1.0 + jnp.sin(jnp.arange(save_at + 20, dtype=jnp.float32))

  def advance(run, steps):
    params, opt_state = run["params"], run["opt_state"]
    for i in steps:
      params, opt_state = train_step(params, opt_state, scales[i])
    return {"params": params, "opt_state": opt_state}

  params = {"kernel": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4),
            "bias": jnp.zeros(4, jnp.float32)}
  run = advance({"params": params, "opt_state": tx.init(params)}, range(save_at))
  assert _guard_count(run["opt_state"]) == save_at
  assert (save_at < warmup) == (phase == "in_warmup")

  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "checkpoint", run)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(
        tmp_path / "checkpoint", jax.tree.map(ocp.utils.to_shape_dtype_struct, run)
    )
  assert _as_bits(restored) == _as_bits(run)

  rest = range(save_at, len(scales))  # crosses the end of the warm-up when saved in it
  resumed, uninterrupted = advance(restored, rest), advance(run, rest)
  assert _as_bits(resumed) == _as_bits(uninterrupted)
  assert _guard_count(resumed["opt_state"]) == len(scales)
  chex.assert_tree_all_finite(resumed)
