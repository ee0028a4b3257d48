"""The training program: every seed and grid point of one optimizer at once.

One optimizer's whole grid (rates x its other hyperparameters) and all seeds
train as a single ``jax.jit``-compiled program: ``jax.vmap`` over grid points
and seeds, ``jax.lax.scan`` over steps. Evaluation runs every ``eval_every``
steps inside the scan. Seed ``s`` uses ``jax.random.PRNGKey(s)`` for both the
initial params and the training batches, the same for every optimizer and
grid point, so the comparison is paired and the numbers are reproducible.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_split.experiments.optimizers import OptimizerSpec
from optax_split.experiments.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class Runs:
  """The logs of one optimizer's grid, as NumPy arrays.

  Attributes:
    spec: The optimizer.
    configs: The grid points, ``{"rate": ..., other hyperparameters}``.
    loss: Training loss, ``(configs, seeds, steps)``.
    grad_norm: Global norm of the raw gradient, ``(configs, seeds, steps)``.
    global_share: ``||G||^2 / ||g||^2`` of the split, NaN for optimizers that
      do not split, ``(configs, seeds, steps)``.
    val: Validation metric, ``(configs, seeds, evals)``.
    test: Test metric, ``(configs, seeds, evals)``.
    init_val: Validation metric of the initial params, ``(configs, seeds)``.
    eval_steps: The step count at each evaluation, ``(evals,)``.
  """

  spec: OptimizerSpec
  configs: list[dict[str, float]]
  loss: np.ndarray
  grad_norm: np.ndarray
  global_share: np.ndarray
  val: np.ndarray
  test: np.ndarray
  init_val: np.ndarray
  eval_steps: np.ndarray


def eval_interval(steps: int, every: int) -> int:
  """The largest divisor of ``steps`` that is at most ``every``.

  Example:
    >>> print(eval_interval(4000, 200), eval_interval(20, 200), eval_interval(30, 8))
    200 20 6
  """
  if steps < 1:
    raise ValueError(f"`steps` must be at least 1, got {steps}. E.g. --steps 1000.")
  return max(d for d in range(1, min(steps, every) + 1) if steps % d == 0)


def one_run_fn(task: Task, spec: OptimizerSpec, steps: int):
  """``one_run(hparams, seed_key, data) -> (logs, metrics)``: one seed at one grid point.

  ``hparams`` maps each grid name to a scalar; the logs ``(loss, grad_norm,
  global_share)`` have shape ``(steps,)`` and the metrics ``(evals,)``.
  """
  every = eval_interval(steps, task.eval_every)
  shape = task.schedule(steps) if task.schedule is not None else None

  def optimizer(hparams):
    hparams = dict(hparams)
    rate = hparams.pop("rate")
    if shape is not None:
      rate = (lambda r: lambda count: r * shape(count))(rate)
    hparams.setdefault("weight_decay", task.weight_decay)
    if spec.adaptive:
      hparams["b2"] = task.adam_b2
    return spec.build(rate, **hparams)

  def one_run(hparams, seed_key, data):
    init_key, train_key = jax.random.split(seed_key)
    params = task.init(init_key)
    tx = optimizer(hparams)
    state = tx.init(params)

    def step(carry, key):
      params, state = carry
      loss, grads = jax.value_and_grad(task.loss)(params, task.sample(data, key))
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      share = optax.tree.get(state, "global_share", None)  # None where it is not kept
      share = jnp.asarray(jnp.nan if share is None else share, jnp.float32)
      return (params, state), (loss, optax.tree.norm(grads), share)

    def chunk(carry, keys):
      carry, logs = jax.lax.scan(step, carry, keys)
      return carry, (logs, task.evaluate(carry[0], data))

    keys = jax.random.split(train_key, steps)
    keys = keys.reshape(steps // every, every, *keys.shape[1:])
    init_val, _ = task.evaluate(params, data)
    _, (logs, metrics) = jax.lax.scan(chunk, (params, state), keys)
    flat = lambda x: x.reshape(-1)  # noqa: E731  (evals, every) -> steps
    return jax.tree.map(flat, logs), metrics, init_val

  return one_run


def make_program(task: Task, spec: OptimizerSpec, steps: int):
  """A jitted ``program(hparams, seed_keys, data) -> logs`` for one optimizer.

  ``hparams`` maps each grid name (``rate`` first) to a ``(configs,)`` array
  and ``seed_keys`` is ``(seeds, 2)``; every output has leading axes
  ``(configs, seeds)``.

  The runs are batched with ``jax.vmap``. On a CPU the small models of the
  tasks are bound by the cost of launching their many small operations, not
  by arithmetic, so batching runs is what makes them cheap
  (``benchmarks/seeds_scaling.py`` measures it against ``jax.lax.map``).
  """
  one_run = one_run_fn(task, spec, steps)
  over_seeds = jax.vmap(one_run, in_axes=(None, 0, None))
  return jax.jit(jax.vmap(over_seeds, in_axes=(0, None, None)))


def seed_keys(seeds: int) -> jax.Array:
  """``PRNGKey(0) ... PRNGKey(seeds - 1)``, stacked."""
  if seeds < 1:
    raise ValueError(f"`seeds` must be at least 1, got {seeds}. E.g. --seeds 4.")
  return jnp.stack([jax.random.PRNGKey(s) for s in range(seeds)])


def train(task: Task, spec: OptimizerSpec, rates: tuple[float, ...], seeds: int,
          steps: int) -> Runs:
  """Trains ``spec`` at every grid point and seed: one compiled program.

  Example:
    >>> from optax_split.experiments import optimizers, tasks
    >>> task = tasks.make("adding", length=4, hidden=3, batch_size=2, eval_size=2)
    >>> runs = train(task, optimizers.get("sgd"), (0.01, 0.1), seeds=3, steps=4)
    >>> print(runs.loss.shape, runs.val.shape, runs.configs[1])
    (2, 3, 4) (2, 3, 1) {'rate': 0.1}
  """
  configs = spec.configs(rates)
  hparams = {k: jnp.asarray([c[k] for c in configs], jnp.float32) for k in configs[0]}
  program = make_program(task, spec, steps)
  (loss, grad_norm, share), (val, test), init_val = jax.device_get(
      program(hparams, seed_keys(seeds), task.data)
  )
  every = eval_interval(steps, task.eval_every)
  return Runs(spec, configs, np.asarray(loss), np.asarray(grad_norm), np.asarray(share),
              np.asarray(val), np.asarray(test), np.asarray(init_val),
              np.arange(every, steps + 1, every))
