"""The presets with and without a bound on the leaves below two dimensions, task by task.

``unit_excess(..., bound_small_leaves=True)`` makes each bias, scale or read-out
vector one unit whose budget is 1% of its norm, floored at ``sqrt(size)`` times
the kernels' weight RMS. This script trains ``split_sgd``, ``split_adam`` and
``split_muon`` with the step split as it was (small leaves left alone) and with that bound,
on each task's own rate grid, all seeds and rates of one setting in one
vmapped, scanned program, and reports the final validation metric per rate
(median over seeds), the runs that ended non-finite or past the task's
divergence bound, and the best rate's median.

Usage::

    python benchmarks/small_leaf_bound.py                       # every task below
    python benchmarks/small_leaf_bound.py --tasks adding_vector --seeds 4 --steps 4000
    python benchmarks/small_leaf_bound.py --tasks lm --presets split_adam --adam-rates 0.01 0.1
    python benchmarks/small_leaf_bound.py --tiny                # a smoke test (seconds)

Writes ``results/small_leaf_bound/<task>.json`` and a Markdown table per task.
"""

import argparse
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_split as osp
from optax_split.experiments import tasks

UNBOUNDED = osp.unit_excess(0.01, eps=0.0, min_ndim=2)
BOUNDED = osp.unit_excess(0.01, eps=0.0, min_ndim=2, bound_small_leaves=True)
# Preset name -> (preset, the argument that takes the task's Adam b2, or None for SGD's rates).
PRESETS = {"split_sgd": (osp.split_sgd, None), "split_adam": (osp.split_adam, "b2"),
           "split_muon": (osp.split_muon, "adam_b2")}
# Task name -> how to build it; adding_vector is the RNN read out by a weight vector.
TASKS = {
    "adding": lambda: tasks.make("adding"),
    "adding_vector": lambda: tasks.adding.adding(hidden=64, vector_readout=True),
    "deep_mlp": lambda: tasks.make("deep_mlp"),
    "lm": lambda: tasks.make("lm"),
    "lm_gpt": lambda: tasks.make("lm_gpt"),
}


def train_fn(task, preset, b2_argument: str | None, decomposition, steps: int):
  """``(rate, seed) -> (final validation metric, finite, final training loss)``."""
  shape = task.schedule(steps) if task.schedule is not None else None

  def run(rate, seed):
    lr = (lambda count: rate * shape(count) / 0.01) if shape is not None else rate / 0.01
    kwargs = {} if b2_argument is None else {b2_argument: task.adam_b2}
    tx = preset(lr, decomposition=decomposition, weight_decay=task.weight_decay, **kwargs)
    params = task.init(jax.random.PRNGKey(seed))

    def step(carry, key):
      params, state = carry
      loss, grads = jax.value_and_grad(task.loss)(params, task.sample(task.data, key))
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss

    keys = jax.random.split(jax.random.PRNGKey(10_000 + seed), steps)
    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), keys)
    finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
    tail = jnp.mean(losses[-max(1, steps // 10):])
    return task.evaluate(params, task.data)[0], finite & jnp.isfinite(tail), tail

  return jax.jit(jax.vmap(jax.vmap(run, (None, 0)), (0, None)))


def compare(task_name: str, seeds: int, steps: int | None, rates: dict | None,
            presets: list[str]) -> dict:
  task = TASKS[task_name]()
  steps = steps or task.steps
  out = {"task": task_name, "steps": steps, "seeds": seeds, "metric": task.metric,
         "higher_is_better": task.higher_is_better, "rows": []}
  for name in presets:
    preset, b2_argument = PRESETS[name]
    grid = (rates or {}).get(name) or (task.rates if b2_argument is None else task.adaptive_rates)
    for label, decomposition in (("unbounded", UNBOUNDED), ("bounded", BOUNDED)):
      start = time.time()
      metric, finite, tail = train_fn(task, preset, b2_argument, decomposition, steps)(
          jnp.asarray(grid), jnp.arange(seeds))
      metric, finite, tail = map(np.asarray, (metric, finite, tail))
      diverged = ~finite | (tail > task.divergence_bound)
      medians = [float(np.median(np.where(finite[i], metric[i], np.nan)))
                 if finite[i].all() else math.nan for i in range(len(grid))]
      pick = np.nanargmax if task.higher_is_better else np.nanargmin
      best = int(pick(medians)) if not all(math.isnan(m) for m in medians) else None
      out["rows"].append({
          "preset": name, "small_leaves": label, "rates": list(map(float, grid)),
          "median_by_rate": medians, "by_seed": metric.tolist(),
          "diverged": int(diverged.sum()), "runs": int(diverged.size),
          "best_rate": None if best is None else float(grid[best]),
          "best": None if best is None else medians[best],
          "seconds": round(time.time() - start, 1),
      })
      print(f"{task_name:14s} {name:11s} {label:9s} best {out['rows'][-1]['best']} at "
            f"{out['rows'][-1]['best_rate']}, diverged {int(diverged.sum())}/{diverged.size}, "
            f"by rate {np.round(medians, 4).tolist()}", flush=True)
  return out


def markdown(result: dict) -> str:
  lines = [f"## {result['task']} ({result['steps']} steps, {result['seeds']} seeds, final "
           f"validation {result['metric']}, median over seeds)", "",
           "| preset | small leaves | best (rate) | diverged runs | median by rate |",
           "|---|---|---|---|---|"]
  for r in result["rows"]:
    by_rate = ", ".join(f"{rate:g}: {m:.4g}" for rate, m in zip(r["rates"], r["median_by_rate"],
                                                              strict=True))
    best = "-" if r["best"] is None else f"{r['best']:.4g} ({r['best_rate']:g})"
    lines.append(f"| {r['preset']} | {r['small_leaves']} | {best} | {r['diverged']}/{r['runs']} "
                 f"| {by_rate} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
  parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--steps", type=int, default=None, help="default: each task's own")
  parser.add_argument("--adam-rates", type=float, nargs="+", default=None)
  parser.add_argument("--sgd-rates", type=float, nargs="+", default=None)
  parser.add_argument("--out", default="results/small_leaf_bound")
  parser.add_argument("--tiny", action="store_true", help="2 steps of adding, to test the script")
  args = parser.parse_args()
  rates = {"split_adam": args.adam_rates, "split_muon": args.adam_rates,
           "split_sgd": args.sgd_rates}
  if args.tiny:
    args.tasks, args.steps, args.seeds = ["adding"], 2, 1
    rates = {"split_adam": [0.01], "split_muon": [0.01], "split_sgd": [0.1]}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for name in args.tasks:
    result = compare(name, args.seeds, args.steps, rates, args.presets)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.md").write_text(markdown(result))


if __name__ == "__main__":
  main()
