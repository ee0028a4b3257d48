"""The optax contract: every preset and the bare split chain, for every built-in
decomposition, behaves like one of optax's own optimizers.

Modelled on optax's own optimizer tests (``alias_test.py``, ``contrib/_common_test.py``):
convergence on their small targets, extra ``update`` arguments, ``inject_hyperparams``,
``MultiSteps``, dtype and ``lax.cond`` stability, ``tree.map_params``, abstract ``init``;
then composition with optax's wrappers, non-finite gradients and bad input.

Speed: 18 cases times many checks would mean hundreds of small XLA compilations, so only
the runs that need it are compiled: convergence and no-retracing, one cached, jitted
``lax.scan`` per case. Dtypes and shapes under ``jit`` and ``lax.cond`` are decided when
tracing, so ``jax.eval_shape`` checks them without compiling; values (``inject_hyperparams``,
schedules, ``MultiSteps``, compositions, non-finite steps) are checked op by op, where the
compiled primitives are shared by all cases.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import optax_split as osp
from conftest import BUILT_IN_DECOMPOSITIONS, preset_alpha

# optax's own optimizers at optax's own rates, as effective rates: the presets' local
# step is 0.01 * learning_rate. split_sgd(0.1, momentum=0.9) steps like optax's
# sgd(1e-3, momentum=0.9) entry and split_adam(10.0) like adam(1e-1); the bare chain's
# local rate is 1e-3.
SGD_RATE = 0.1
ADAM_RATE = 10.0
NUM_STEPS = 30_000
TOLERANCE = 3e-2


def bare_split(
    learning_rate: optax.ScalarOrSchedule,
    alpha: optax.ScalarOrSchedule = 1.0,
    *,
    decomposition: osp.Decomposition,
) -> optax.GradientTransformation:
  """The bare algorithm, as a factory so that ``inject_hyperparams`` can wrap it."""
  eta_local, eta_global = osp.split_rates(learning_rate, alpha)
  return optax.chain(
      osp.split(decomposition),
      osp.scale_local(_negated(eta_local)),
      osp.scale_global(_negated(eta_global)),
      osp.combine(),
  )


def _negated(rate: optax.ScalarOrSchedule) -> optax.ScalarOrSchedule:
  return (lambda count: -rate(count)) if callable(rate) else -rate


FACTORIES = {
    "split_sgd": (osp.split_sgd, {"learning_rate": SGD_RATE, "momentum": 0.9}),
    "split_adam": (osp.split_adam, {"learning_rate": ADAM_RATE}),
    "bare_chain": (bare_split, {"learning_rate": SGD_RATE}),
}

# The built-in decompositions, and the presets' default split of the step.
DECOMPOSITIONS = {**BUILT_IN_DECOMPOSITIONS, "step_budget": osp.defaults.STEP_DECOMPOSITION}

CASES = [(o, d) for o in FACTORIES for d in DECOMPOSITIONS]
cases = pytest.mark.parametrize(
    "optimizer, decomposition", CASES, ids=[f"{o}-{d}" for o, d in CASES]
)


def make(
    optimizer: str, decomposition: str, *, injected: bool = False, **overrides
) -> optax.GradientTransformation:
  factory, kwargs = FACTORIES[optimizer]
  if optimizer != "bare_chain":  # The bare chain runs at alpha = 1 with every decomposition.
    kwargs = {"alpha": preset_alpha(decomposition), **kwargs}
  if injected:
    factory = optax.inject_hyperparams(factory)
  return factory(**{**kwargs, **overrides}, decomposition=DECOMPOSITIONS[decomposition])


@pytest.fixture
def op_by_op():
  with jax.disable_jit():
    yield


# ----------------------------------------------------------------- targets ----
# optax's own targets: (initial params, minimiser, loss).


def parabola(dtype=jnp.float32):
  final = jnp.array([1.0, -1.0, 1.0], dtype)
  return jnp.array([-1.0, 10.0, 1.0], dtype), final, lambda p: jnp.sum(jnp.square(p - final))


def rosenbrock(dtype=jnp.float32):
  def loss(p):
    return jnp.square(1.0 - p[0]) + 100.0 * jnp.square(p[1] - jnp.square(p[0]))

  return jnp.zeros(2, dtype), jnp.ones(2, dtype), loss


def matrix_parabola(dtype=jnp.float32):
  final = jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype)
  return jnp.zeros((2, 2), dtype), final, lambda p: jnp.sum(jnp.square(p - final))


def mixed_tree(dtype=jnp.float32):
  final = (jnp.array([1.0, -1.0, 2.0], dtype), jnp.array([[1.0, 0.0], [-1.0, 1.0]], dtype))
  initial = (jnp.zeros(3, dtype), jnp.zeros((2, 2), dtype))

  def loss(p):
    return sum(jnp.sum(jnp.square(x - y)) for x, y in zip(p, final, strict=True))

  return initial, final, loss


TARGETS = {
    "parabola": parabola,
    "rosenbrock": rosenbrock,
    "matrix_parabola": matrix_parabola,
    "mixed_tree": mixed_tree,
}


def layer(dtype=jnp.float32):
  """Params and two steps of gradients of a small dense layer."""
  params = {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "bias": jnp.full(4, 0.5)}
  grads = {"kernel": jnp.linspace(2.0, -3.0, 12).reshape(3, 4), "bias": jnp.arange(4.0)}
  grad_steps = [grads, jax.tree.map(lambda g: -0.5 * g + 0.25, grads)]
  return optax.tree.cast(params, dtype), [optax.tree.cast(g, dtype) for g in grad_steps]


def run_steps(tx, params, grad_steps):
  """Trains along ``grad_steps``: every step's updates and params, and the last state."""
  state = tx.init(params)
  all_updates, all_params = [], []
  for grads in grad_steps:
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    all_updates.append(updates)
    all_params.append(params)
  return all_updates, all_params, state


def replay(tx, params, grad_steps):
  """Every step's updates along ``grad_steps`` with the params held fixed."""
  state, all_updates = tx.init(params), []
  for grads in grad_steps:
    updates, state = tx.update(grads, state, params)
    all_updates.append(updates)
  return all_updates


# ------------------------------------- convergence, extra args, compile once ----


@functools.cache
def convergence_run(optimizer: str, decomposition: str) -> tuple[dict, int]:
  """Final params on every target, and how often the jitted half-run was traced.

  ``NUM_STEPS`` steps as two calls of one jitted ``lax.scan`` over all targets (one
  compilation per case), passing an extra keyword argument to ``update``.
  """
  tx = make(optimizer, decomposition)
  losses = {name: target()[2] for name, target in TARGETS.items()}
  traces = []

  @jax.jit
  @chex.assert_max_traces(n=1)
  def half_run(params, states):
    traces.append(None)

    def step(carry, _):
      params, states = carry
      for name, loss in losses.items():
        updates, states[name] = tx.update(
            jax.grad(loss)(params[name]), states[name], params[name],
            an_argument_nobody_expects=1,
        )
        params[name] = optax.apply_updates(params[name], updates)
      return (params, states), None

    return jax.lax.scan(step, (params, states), length=NUM_STEPS // 2)[0]

  params = {name: target()[0] for name, target in TARGETS.items()}
  states = {name: tx.init(p) for name, p in params.items()}
  chex.clear_trace_counter()  # chex counts per source location, across cases
  for _ in range(2):
    params, states = half_run(params, states)
  return params, len(traces)


@cases
@pytest.mark.parametrize("target", TARGETS)
def test_converges_on_optax_targets(optimizer, decomposition, target):
  _, minimiser, _ = TARGETS[target]()
  final, _ = convergence_run(optimizer, decomposition)
  chex.assert_trees_all_close(final[target], minimiser, rtol=TOLERANCE, atol=TOLERANCE)


@cases
def test_accepts_extra_args_and_compiles_once(optimizer, decomposition):
  _, traces = convergence_run(optimizer, decomposition)
  assert traces == 1  # the second call reused the first one's compilation


# ---------------------------------------------- inject_hyperparams, schedules ----


@functools.cache
def injected_and_scheduled(optimizer: str, decomposition: str) -> dict:
  """Updates and states after two steps: plain, injected, with a constant schedule."""
  rate = FACTORIES[optimizer][1]["learning_rate"]
  txs = {
      "plain": make(optimizer, decomposition, alpha=0.5),
      "injected": make(optimizer, decomposition, injected=True, alpha=0.5),
      "schedule": make(
          optimizer, decomposition, alpha=0.5, learning_rate=optax.constant_schedule(rate)
      ),
  }
  params, grad_steps = layer()
  return {name: run_steps(tx, params, grad_steps) for name, tx in txs.items()}


@cases
def test_inject_hyperparams_matches_the_plain_optimizer(optimizer, decomposition, op_by_op):
  results = injected_and_scheduled(optimizer, decomposition)
  updates, _, state = results["plain"]
  injected_updates, _, injected_state = results["injected"]
  assert {"learning_rate", "alpha"} <= set(injected_state.hyperparams)
  # Injected hyperparameters are float32 arrays, not Python floats, so rounding differs
  # (Adam's 1 - b2 by 4e-5 relative); optax's own test allows 1e-4 for the state.
  chex.assert_trees_all_close(injected_updates, updates, rtol=1e-4)
  chex.assert_trees_all_close(injected_state.inner_state, state, rtol=1e-4)
  chex.assert_trees_all_equal_shapes_and_dtypes(injected_state.inner_state, state)


@cases
def test_schedule_matches_constant_rate(optimizer, decomposition, op_by_op):
  results = injected_and_scheduled(optimizer, decomposition)
  chex.assert_trees_all_close(results["schedule"][0], results["plain"][0], rtol=1e-6)


# ------------------------------------------------------------------ MultiSteps ----


@cases
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_multi_steps_accumulates_without_changing_dtypes(optimizer, decomposition, dtype):
  tx = make(optimizer, decomposition)
  accumulating = optax.MultiSteps(tx, every_k_schedule=4)
  params, (grads, _) = layer(dtype)
  grad_steps = [jax.tree.map(lambda g, k=k: (1 - 0.5 * k) * g, grads) for k in range(4)]

  # Dtypes and shapes as jax.jit sees them (traced, not compiled): MultiSteps switches
  # between accumulating and updating with lax.cond, which needs both to agree. Every
  # step traces the same program, so a state that comes out as it went in stays so.
  initial = accumulating.init(params)
  updates, state = jax.eval_shape(accumulating.update, grad_steps[0], initial, params)
  chex.assert_trees_all_equal_dtypes(updates, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, initial)

  with jax.disable_jit():
    all_updates = replay(accumulating, params, grad_steps)
    mean_grads = jax.tree.map(lambda *g: sum(g) / 4, *grad_steps)
    expected, _ = tx.update(mean_grads, tx.init(params), params)
  for updates in all_updates[:3]:
    chex.assert_trees_all_equal(updates, optax.tree.zeros_like(params))
  # The fourth step applies the inner optimizer to the mean of the four gradients. In
  # bfloat16 the sums of the mean and of g + alpha * G round differently: the tolerance
  # is relative to the update's scale, since small entries come from cancellation.
  tolerance = 2e-2 if dtype == "bfloat16" else 1e-6
  scale = float(optax.tree.max(jax.tree.map(jnp.abs, expected)))
  chex.assert_trees_all_close(
      all_updates[3], expected, rtol=tolerance, atol=max(tolerance * scale, 1e-7)
  )


# ------------------------------------------------------- dtypes under lax.cond ----

COND_VARIANTS = {
    # name: (dtype, hyperparameters injected)
    "float16": ("float16", False),
    "bfloat16": ("bfloat16", False),
    "float32": ("float32", False),
    "float64": ("float64", False),
    # inject_hyperparams casts the hyperparameters to the params' dtype.
    "bfloat16_injected": ("bfloat16", True),
    "float32_injected": ("float32", True),
}


@cases
@pytest.mark.parametrize("variant", COND_VARIANTS)
def test_dtypes_are_kept_and_stable_under_lax_cond(optimizer, decomposition, variant):
  """Updates keep the params' dtypes, also with ``update`` inside ``lax.cond``.

  As in optax's own test, the other branch returns the params and the old state:
  ``lax.cond`` refuses branches whose outputs differ in shape or dtype, so an update that
  changed a dtype of the params or the state would not trace. Shapes and dtypes are fixed
  when tracing: ``jax.eval_shape`` traces the program that ``jax.jit`` would compile.
  """
  dtype, injected = COND_VARIANTS[variant]
  with jax.enable_x64(dtype == "float64"):
    tx = make(optimizer, decomposition, injected=injected)
    params, _, loss = mixed_tree(dtype)

    def step(params, state):
      # A traced condition, so that lax.cond keeps both branches.
      take = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      updates, state = jax.lax.cond(
          take, lambda: tx.update(jax.grad(loss)(params), state, params),
          lambda: (params, state),
      )
      return optax.apply_updates(params, updates), state

    initial = tx.init(params)
    updates, _ = jax.eval_shape(
        lambda p, s: tx.update(jax.grad(loss)(p), s, p), params, initial
    )
    chex.assert_trees_all_equal_dtypes(updates, params)
    # A step whose outputs look like its inputs traces the same way the next time.
    new_params, state = jax.eval_shape(step, params, initial)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_params, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, initial)
    chex.assert_type(jax.tree.leaves(new_params), [jnp.dtype(dtype)] * 2)


# ------------------------------------------------------ map_params, eval_shape ----


@cases
def test_tree_map_params_maps_exactly_the_params_shaped_state(optimizer, decomposition):
  tx = make(optimizer, decomposition)
  params, _ = layer()
  state = tx.init(params)
  mapped = optax.tree.map_params(tx, lambda p: jnp.full_like(p, 7.0), state)
  param_shapes = {p.shape for p in jax.tree.leaves(params)}
  for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(mapped), strict=True):
    if old.shape in param_shapes:
      chex.assert_trees_all_equal(new, jnp.full_like(old, 7.0))
    else:
      chex.assert_trees_all_equal(new, old)


@cases
def test_init_works_on_abstract_params(optimizer, decomposition):
  tx = make(optimizer, decomposition)
  params, _ = layer()
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  chex.assert_trees_all_equal_shapes_and_dtypes(
      jax.eval_shape(tx.init, abstract), tx.init(params)
  )


# ----------------------------------------------------------------- composition ----


def _kernel_only(tree):
  return {"kernel": tree["kernel"]}


def _masked(tx):
  return optax.masked(tx, {"kernel": True, "bias": False})


def _masked_reference(tx, params, grad_steps):
  kernel_updates = replay(tx, _kernel_only(params), map(_kernel_only, grad_steps))
  return [{"kernel": k["kernel"], "bias": g["bias"]}
          for k, g in zip(kernel_updates, grad_steps, strict=True)]


def _partitioned(tx):
  return optax.partition(
      {"split": tx, "sgd": optax.sgd(0.1)}, {"kernel": "split", "bias": "sgd"}
  )


def _partitioned_reference(tx, params, grad_steps):
  kernel_updates = replay(tx, _kernel_only(params), map(_kernel_only, grad_steps))
  bias_updates = replay(optax.sgd(0.1), params["bias"], [g["bias"] for g in grad_steps])
  return [{"kernel": k["kernel"], "bias": b}
          for k, b in zip(kernel_updates, bias_updates, strict=True)]


def _clipped_first(tx):
  return optax.chain(optax.clip_by_global_norm(1.0), tx)


def _clipped_first_reference(tx, params, grad_steps):
  clip = optax.clip_by_global_norm(1.0)
  clipped = [clip.update(g, clip.init(params))[0] for g in grad_steps]
  return replay(tx, params, clipped)


def _adam_after(tx):
  return optax.chain(tx, optax.scale_by_adam())


def _adam_after_reference(tx, params, grad_steps):
  adam = optax.scale_by_adam()
  state, expected = adam.init(params), []
  for updates in replay(tx, params, grad_steps):
    updates, state = adam.update(updates, state, params)
    expected.append(updates)
  return expected


def _guarded(tx):
  return optax.apply_if_finite(tx, max_consecutive_errors=3)


def _guarded_reference(tx, params, grad_steps):
  return replay(tx, params, grad_steps)


COMPOSITIONS = {
    "masked": (_masked, _masked_reference),
    "partition": (_partitioned, _partitioned_reference),
    "after_clip_by_global_norm": (_clipped_first, _clipped_first_reference),
    "before_scale_by_adam": (_adam_after, _adam_after_reference),
    "apply_if_finite": (_guarded, _guarded_reference),
}


@cases
@pytest.mark.parametrize("composition", COMPOSITIONS)
def test_composes_with_optax_wrappers(optimizer, decomposition, composition, op_by_op):
  compose, reference = COMPOSITIONS[composition]
  tx = make(optimizer, decomposition)
  params, grad_steps = layer()
  grad_steps = [jax.tree.map(lambda g, k=k: 3.0**k * g, grad_steps[0]) for k in range(3)]
  updates = replay(compose(tx), params, grad_steps)
  chex.assert_trees_all_close(updates, reference(tx, params, grad_steps), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------- bad numbers ----


def _non_finite(grads, value):
  return jax.tree.map(lambda g: g.at[..., 0].set(value), grads)


def _our_statistics(state):
  """The statistics that optax-split carries from step to step.

  Not optax's, and not the per-step diagnostics ``global_share`` and spike_excess's ``norm``
  (the norm seen at the last step), which read NaN for a step with a NaN or an Inf.
  """
  ours = (osp.TrendState, osp.SpikeExcessState)
  found = [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ours))
           if isinstance(x, ours)]
  return [x._replace(norm=None) if isinstance(x, osp.SpikeExcessState) else x for x in found]


def _all_finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def _any_nan(tree):
  # Not _all_finite: spike_excess's threshold is legitimately infinite during warm-up.
  return any(bool(jnp.any(jnp.isnan(x))) for x in jax.tree.leaves(tree))


@cases
def test_apply_if_finite_skips_nan_and_inf_steps(optimizer, decomposition, op_by_op):
  tx = make(optimizer, decomposition)
  params, (g1, g2) = layer()
  bad = [_non_finite(g1, jnp.nan), _non_finite(g2, jnp.inf)]
  guarded = optax.apply_if_finite(tx, max_consecutive_errors=3)
  _, guarded_params, guarded_state = run_steps(guarded, params, [bad[0], g1, *bad, g2])
  _, clean_params, clean_state = run_steps(tx, params, [g1, g2])

  chex.assert_trees_all_equal(guarded_params[0], params)  # a NaN first step
  chex.assert_trees_all_equal(guarded_params[2], guarded_params[1])
  chex.assert_trees_all_equal(guarded_params[3], guarded_params[1])
  chex.assert_trees_all_close(guarded_params[-1], clean_params[-1], rtol=1e-6)
  chex.assert_trees_all_close(guarded_state.inner_state, clean_state, rtol=1e-6)
  assert int(guarded_state.total_notfinite) == 3


@cases
@pytest.mark.parametrize("value", [jnp.nan, jnp.inf], ids=["nan", "inf"])
def test_without_a_guard_a_bad_step_reaches_the_params(
    optimizer, decomposition, value, op_by_op
):
  """What docs/integration.md says happens without ``apply_if_finite``."""
  tx = make(optimizer, decomposition)
  params, (g1, _) = layer()
  _, all_params, state = run_steps(tx, params, [g1, _non_finite(g1, value)])
  assert _all_finite(all_params[0])
  assert not _all_finite(all_params[1])
  # The split's own statistics skip the step; optax's momentum and moments do not.
  assert not _any_nan(_our_statistics(state))
  if optimizer == "split_sgd":
    assert not _all_finite(optax.tree.get(state, "trace"))
  if optimizer == "split_adam":
    assert not _all_finite(optax.tree.get(state, "mu"))


@cases
def test_apply_if_finite_gives_up_after_max_consecutive_errors(
    optimizer, decomposition, op_by_op
):
  tx = make(optimizer, decomposition)
  params, (g1, _) = layer()
  nan = _non_finite(g1, jnp.nan)
  guarded = optax.apply_if_finite(tx, max_consecutive_errors=2)
  _, all_params, state = run_steps(guarded, params, [g1, nan, nan, nan])
  chex.assert_trees_all_equal(all_params[2], all_params[0])
  assert not _all_finite(all_params[3])  # the third NaN step in a row is applied
  assert not _any_nan(_our_statistics(state))


# ------------------------------------------------------------------- bad input ----


@cases
@pytest.mark.parametrize("dtype", ["int32", "complex64"])
def test_integer_and_complex_leaves_are_refused(optimizer, decomposition, dtype):
  tx = make(optimizer, decomposition)
  params, (grads, _) = layer()
  odd = {**params, "odd": jnp.ones(4, dtype)}
  with pytest.raises(TypeError, match=r"real floating-point params.*\['odd'\].*optax.masked"):
    tx.init(odd)
  # The fix the message names works.
  masked = optax.masked(tx, {"kernel": True, "bias": True, "odd": False})
  updates, _ = masked.update({**grads, "odd": odd["odd"]}, masked.init(odd), odd)
  chex.assert_trees_all_equal(updates["odd"], odd["odd"])


@cases
def test_mismatched_params_and_updates_are_refused(optimizer, decomposition):
  tx = make(optimizer, decomposition)
  params, (grads, _) = layer()
  with pytest.raises(ValueError, match="different tree structures"):
    tx.update(grads, tx.init(params), {"kernel": params["kernel"]})


@cases
def test_params_are_needed_only_by_unit_excess(optimizer, decomposition):
  tx = make(optimizer, decomposition)
  params, (grads, _) = layer()
  if isinstance(DECOMPOSITIONS[decomposition], osp.UnitExcess):
    with pytest.raises(ValueError, match=r"unit_excess needs the params.*tx.update\(grads"):
      tx.update(grads, tx.init(params))
  else:
    updates, _ = tx.update(grads, tx.init(params))
    assert _all_finite(updates)
