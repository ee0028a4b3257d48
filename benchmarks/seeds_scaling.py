"""What N seeds cost in one program, against N runs of one seed.

The experiments train all seeds of an optimizer and rate in one jitted,
scanned program (``runner.make_program``), batched with ``jax.vmap``. This
times, for the same task, optimizer and rate:

- **1 seed**: the program with one seed;
- **N x 1 seed**: N times that: the same work as N runs of the one-seed program
  in one process (compiled once);
- **N vmapped**: the program with N seeds, as the runner builds it;
- **N lax.map**: the N seeds run one after the other inside one program
  (``jax.lax.map``), for comparison;

and the compile time of each program: N separate runs (N processes) would pay
the compilation N times, so they cost ``N x (compile + run)``. The programs are
compiled and run once first; then each repeat runs every program once, in
alternating order, so that all see the same machine load; the table shows the
medians and the median over repeats of ``N vmapped / (N x 1 seed)``.

Usage:
  python benchmarks/seeds_scaling.py                       # adding, split_sgd, 500 steps, N=8
  python benchmarks/seeds_scaling.py --task deep_mlp --steps 300
  python benchmarks/seeds_scaling.py --task grokking --optimizer split_adam --rate 0.001
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from optax_split.experiments import optimizers, runner, tasks


def compile_program(fn, *args):
  """``(compiled, seconds to trace, lower and compile)``."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def lax_map_program(task, spec, steps):
  """The seeds one after the other in one program: ``jax.lax.map`` over ``runner.one_run``."""
  run = runner.one_run_fn(task, spec, steps)

  def program(hparams, keys, data):
    return jax.lax.map(lambda key: run(jax.tree.map(lambda x: x[0], hparams), key, data), keys)

  return program


def measure(task_name: str, optimizer: str, rate: float, steps: int, seeds: int,
            repeats: int, **task_options) -> dict:
  task = tasks.make(task_name, **task_options)
  spec = optimizers.get(optimizer)
  hparams = {"rate": jnp.asarray([rate], jnp.float32)}
  one_keys, many_keys = runner.seed_keys(1), runner.seed_keys(seeds)
  program = runner.make_program(task, spec, steps)
  inputs = {
      "one": (program, (hparams, one_keys, task.data)),
      "vmap": (program, (hparams, many_keys, task.data)),
      "map": (lax_map_program(task, spec, steps), (hparams, many_keys, task.data)),
  }
  compiled, compile_s = {}, {}
  for name, (fn, args) in inputs.items():
    # A jitted program's lower() traces it again: compile each one on its own.
    fn = getattr(fn, "__wrapped__", fn)
    compiled[name], compile_s[name] = compile_program(fn, *args)
    jax.block_until_ready(compiled[name](*args))  # Warm up.
  times = {name: [] for name in inputs}
  for rep in range(repeats):
    order = list(inputs) if rep % 2 == 0 else list(inputs)[::-1]
    for name in order:
      start = time.perf_counter()
      jax.block_until_ready(compiled[name](*inputs[name][1]))
      times[name].append(time.perf_counter() - start)
  ratios = np.array(times["vmap"]) / (seeds * np.array(times["one"]))
  run_s = {name: statistics.median(t) for name, t in times.items()}
  return {
      "task": task_name, "optimizer": optimizer, "steps": steps, "seeds": seeds,
      "platform": jax.devices()[0].platform, "compile_s": compile_s, "run_s": run_s,
      "vmap_over_n_x_one": float(np.median(ratios)),
      "vmap_over_n_x_one_p10_p90": [float(q) for q in np.percentile(ratios, [10, 90])],
      "separate_runs_s": seeds * (compile_s["one"] + run_s["one"]),
  }


def print_row(r: dict) -> None:
  n, run, comp = r["seeds"], r["run_s"], r["compile_s"]
  print("| task, optimizer, steps | 1 seed | N x 1 seed | N vmapped | N lax.map "
        "| vmapped / (N x 1 seed) (p10-p90) | compile 1 / vmapped / lax.map "
        "| N separate runs (compile + run) |")
  print("|---|---|---|---|---|---|---|---|")
  low, high = r["vmap_over_n_x_one_p10_p90"]
  print(f"| {r['task']}, {r['optimizer']}, {r['steps']}, N={n} | {run['one']:.3f} s "
        f"| {n * run['one']:.3f} s | {run['vmap']:.3f} s | {run['map']:.3f} s "
        f"| {r['vmap_over_n_x_one']:.2f} ({low:.2f}-{high:.2f}) "
        f"| {comp['one']:.1f} / {comp['vmap']:.1f} / {comp['map']:.1f} s "
        f"| {r['separate_runs_s']:.1f} s |")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", default="adding", choices=tasks.NAMES)
  parser.add_argument("--optimizer", default="split_sgd")
  parser.add_argument("--rate", type=float, default=0.03)
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--seeds", type=int, default=8, help="N")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--tiny", action="store_true",
                      help="a tiny model (adding only), for the tests")
  parser.add_argument("--json", help="also write the result to this JSON file")
  args = parser.parse_args(argv)
  if args.seeds < 1 or args.repeats < 1 or args.steps < 1:
    parser.error("--seeds, --repeats and --steps must be positive, e.g. --seeds 8")
  options = dict(length=4, hidden=3, batch_size=4, eval_size=8) if args.tiny else {}
  result = measure(args.task, args.optimizer, args.rate, args.steps, args.seeds, args.repeats,
                   **options)
  print(f"jax {jax.__version__} on {result['platform']}")
  print_row(result)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
