"""Wall time of one training program with 8 seeds against 1 seed.

All seeds of an optimizer and rate run as one vmapped, scanned, jitted
program; this measures what the extra seeds cost. Times exclude compilation
(each program is compiled and run once first) and are the median of a few
repeats. Run: ``python benchmarks/seeds_scaling.py [--steps N] [--repeats N]``.
"""

import argparse
import statistics
import time

import jax

from optax_split.experiments import optimizers, runner, tasks


def seconds(program, hparams, keys, data, repeats: int) -> float:
  """Median wall time of ``repeats`` runs of a compiled program."""
  jax.block_until_ready(program(hparams, keys, data))  # Compile and warm up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(program(hparams, keys, data))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", default="adding", choices=tasks.NAMES)
  parser.add_argument("--optimizer", default="split_sgd")
  parser.add_argument("--rate", type=float, default=0.03)
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  task = tasks.make(args.task)
  spec = optimizers.get(args.optimizer)
  program = runner.make_program(task, spec, args.steps)
  hparams = {"rate": jax.numpy.asarray([args.rate])}
  one = seconds(program, hparams, runner.seed_keys(1), task.data, args.repeats)
  eight = seconds(program, hparams, runner.seed_keys(8), task.data, args.repeats)
  print(f"{args.task}, {args.optimizer}, {args.steps} steps on {jax.devices()[0].platform}: "
        f"1 seed {one:.3f} s, 8 seeds {eight:.3f} s, ratio {eight / one:.2f}")


if __name__ == "__main__":
  main()
