"""Training loops that donate params and optimizer state work with every transformation.

``jax.jit(step, donate_argnums=(0, 1))`` hands the buffers of the params and the state to
XLA, which refuses a call where one buffer is donated twice ("Attempt to donate the same
buffer twice"). That happens as soon as an ``init`` puts one array in two leaves of its
state, or returns a leaf of the params itself. :func:`assert_no_aliased_leaves` checks
that for every case below; then the cases train for a few steps with donation, under
``jax.jit`` and under Flax's ``nnx.jit``.

Speed: every case of a family trains in one shared, jitted program (a dict of params and
a dict of states), so the whole file compiles a handful of small programs.
"""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import optax_split as osp
from conftest import BUILT_IN_DECOMPOSITIONS, preset_alpha

NUM_STEPS = 4


def buffer_addresses(leaf: jax.Array) -> list[int]:
  """The device addresses of an array's buffers (one per addressable shard)."""
  return [shard.data.unsafe_buffer_pointer() for shard in leaf.addressable_shards]


def assert_no_aliased_leaves(**trees) -> None:
  """Fails if two array leaves of ``trees`` (taken together) share a device buffer.

  Args:
    **trees: Pytrees that one call donates together, e.g. ``params=...,
      opt_state=...``; their names appear in the message.
  """
  seen = {}
  for name, tree in trees.items():
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      if not isinstance(leaf, jax.Array):
        continue
      where = name + jax.tree_util.keystr(path)
      for address in buffer_addresses(leaf):
        if address in seen:
          raise AssertionError(
              f"{where} and {seen[address]} share one buffer: a loop that donates them "
              "fails with 'Attempt to donate the same buffer twice'."
          )
        seen[address] = where


def test_the_alias_check_finds_a_shared_buffer():
  zero = jnp.zeros([])
  with pytest.raises(AssertionError, match=r"opt_state\[1\] and opt_state\[0\]"):
    assert_no_aliased_leaves(params={"w": jnp.ones(2)}, opt_state=(zero, zero))
  params = {"w": jnp.ones(2)}
  with pytest.raises(AssertionError, match=r"opt_state\['w'\] and params\['w'\]"):
    assert_no_aliased_leaves(params=params, opt_state=params)


# ------------------------------------------------------------------- the cases ----

D = BUILT_IN_DECOMPOSITIONS


def _bare(d: osp.Decomposition, alpha: float = 1.0) -> optax.GradientTransformation:
  eta_local, eta_global = osp.split_rates(0.1, alpha)
  return optax.chain(
      osp.split(d), osp.scale_local(-eta_local), osp.scale_global(-eta_global), osp.combine()
  )


def _nested(d: osp.Decomposition) -> optax.GradientTransformation:
  """A split inside ``on_local``, stateful transformations on both branches."""
  inner = optax.chain(
      osp.split(d), osp.on_local(optax.trace(0.9)), osp.scale_global(0.5), osp.combine()
  )
  return optax.chain(
      osp.split(d), osp.on_local(inner), osp.on_global(optax.adam(1e-3)),
      osp.scale_local(-1e-3), osp.combine(),
  )


def _wrapped(d: osp.Decomposition) -> optax.GradientTransformation:
  """Stateful inner transformations and schedules on each branch."""
  return optax.chain(
      osp.split(d),
      osp.on_local(optax.sgd(optax.linear_schedule(1e-3, 1e-4, 10), momentum=0.9)),
      osp.on_global(optax.chain(optax.trace(0.5), optax.scale_by_adam())),
      osp.scale_global(optax.cosine_decay_schedule(-1e-3, 10)),
      osp.combine(),
  )


FAMILIES = {
    # Every decomposition with the presets' stateful extras (momentum, weight decay);
    # the defaults; schedules for the rate and alpha.
    "presets": {
        **{f"split_sgd_momentum_wd-{n}": osp.split_sgd(
            1.0, preset_alpha(n), decomposition=d, momentum=0.9, nesterov=True,
            weight_decay=1e-4) for n, d in D.items()},
        **{f"split_adam_wd-{n}": osp.split_adam(1.0, preset_alpha(n), decomposition=d,
                                                weight_decay=1e-4) for n, d in D.items()},
        "split_sgd": osp.split_sgd(1.0),
        "split_adam": osp.split_adam(1.0),
        "split_sgd_scheduled": osp.split_sgd(
            optax.cosine_decay_schedule(1.0, 10), alpha=optax.linear_schedule(1.0, 0.0, 10)
        ),
    },
    "bare_chain": {n: _bare(d) for n, d in D.items()},
    "nested_split": {n: _nested(d) for n, d in D.items()},
    "on_branches": {n: _wrapped(d) for n, d in D.items()},
    "optax_wrappers": {
        "inject_hyperparams": optax.inject_hyperparams(osp.split_sgd)(1.0, momentum=0.9),
        "multi_steps": optax.MultiSteps(osp.split_adam(1.0), every_k_schedule=2),
        "apply_if_finite": optax.apply_if_finite(osp.split_sgd(1.0), max_consecutive_errors=3),
        "clip_then_split_adam": optax.chain(optax.clip_by_global_norm(1.0), osp.split_adam(1.0)),
    },
}
ALL_CASES = [(family, name) for family, txs in FAMILIES.items() for name in txs]


def make_params() -> dict:
  """Small params of the shapes models have: a kernel, a bias, a scalar.

  Strongly typed (``jnp.full(3, 0.5)`` would be weakly typed, and the params after a
  step are not, so the step would be traced twice).
  """
  return {
      "kernel": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(2, 3),
      "bias": jnp.full(3, 0.5, jnp.float32),
      "scale": jnp.ones([], jnp.float32),
  }


def loss(params):
  target = jnp.array([[1.0, -1.0, 0.5], [0.0, 2.0, -0.5]])
  return (jnp.sum(jnp.square(params["kernel"] - target)) + jnp.sum(jnp.square(params["bias"]))
          + jnp.square(params["scale"] - 2.0))


@pytest.mark.parametrize("family, name", ALL_CASES, ids=[f"{f}-{n}" for f, n in ALL_CASES])
@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_init_returns_no_aliased_leaves(family, name, jitted):
  tx = FAMILIES[family][name]
  params = make_params()
  init = jax.jit(tx.init) if jitted else tx.init
  assert_no_aliased_leaves(params=params, opt_state=init(params))


def _multi_step(txs: dict):
  """One step of every optimizer of ``txs`` on its own params and state, donated."""

  @chex.assert_max_traces(n=1)
  def step(params, states):
    new_params, new_states = {}, {}
    for name, tx in txs.items():
      updates, new_states[name] = tx.update(jax.grad(loss)(params[name]), states[name],
                                            params[name])
      new_params[name] = optax.apply_updates(params[name], updates)
    return new_params, new_states

  return jax.jit(step, donate_argnums=(0, 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_trains_under_jit_with_donated_params_and_state(family):
  txs = FAMILIES[family]
  params = {name: make_params() for name in txs}
  states = {name: tx.init(params[name]) for name, tx in txs.items()}
  initial_loss = {name: loss(p) for name, p in params.items()}
  reference = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (params, states))
  chex.clear_trace_counter()
  step = _multi_step(txs)
  for _ in range(NUM_STEPS):
    assert_no_aliased_leaves(params=params, opt_state=states)
    donated = jax.tree.leaves(params)
    params, states = step(params, states)
    # The params were donated indeed. (Of the state, the write-only diagnostics, which
    # the step never reads, are pruned from its inputs and so not donated.)
    assert all(x.is_deleted() for x in donated)
  chex.assert_trees_all_equal_shapes_and_dtypes((params, states), reference)
  chex.assert_tree_all_finite(params)
  for name, p in params.items():
    assert loss(p) < initial_loss[name], name


# --------------------------------------------------------------------- Flax NNX ----


class Tiny(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.dense = nnx.Linear(3, 2, rngs=rngs)
    self.scale = nnx.Param(jnp.ones([]))

  def __call__(self, x):
    return self.scale[...] * self.dense(x)


NNX_INPUTS = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)


def nnx_loss(model):
  return jnp.mean(jnp.square(model(NNX_INPUTS) - 1.0))


NNX_OPTIMIZERS = ("split_sgd", "split_adam", "split_sgd_momentum_wd-unit_excess",
                  "split_adam_wd-spike_excess")


def test_trains_under_nnx_jit_with_donated_model_and_optimizer():
  txs = {name: FAMILIES["presets"][name] for name in NNX_OPTIMIZERS}
  models = [Tiny(nnx.Rngs(0)) for _ in txs]
  optimizers = [nnx.Optimizer(m, tx, wrt=nnx.Param) for m, tx in zip(models, txs.values(),
                                                                     strict=True)]
  initial = [float(nnx_loss(m)) for m in models]

  @nnx.jit(donate_argnums=(0, 1))
  def train_step(models, optimizers):
    for model, optimizer in zip(models, optimizers, strict=True):
      optimizer.update(model, nnx.grad(nnx_loss)(model))

  for _ in range(NUM_STEPS):
    for name, model, optimizer in zip(txs, models, optimizers, strict=True):
      assert_no_aliased_leaves(**{f"{name}.model": nnx.state(model),
                                  f"{name}.optimizer": nnx.state(optimizer, nnx.OptState)})
    train_step(models, optimizers)
  for name, model, before in zip(txs, models, initial, strict=True):
    chex.assert_tree_all_finite(nnx.state(model))
    assert float(nnx_loss(model)) < before, name
