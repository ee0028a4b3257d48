"""The command line: ``optax-split compare --task adding ...``; it parses and dispatches.

The commands train Flax models and draw with matplotlib: they need the
``examples`` extra. Without it the command says how to install it instead of
failing on an import, so this module imports the commands only once the
extra is known to be there.
"""

import argparse
import importlib
import shlex
import sys
from pathlib import Path

# The examples extra: module -> the distribution that provides it.
EXTRA_MODULES = {"flax": "flax", "matplotlib": "matplotlib", "tqdm": "tqdm",
                 "sklearn": "scikit-learn"}
INSTALL = 'pip install "optax-split[examples]"'

# Task options on the command line -> the task factory's keyword arguments.
_TASK_OPTIONS = {
    "length": int, "hidden": int, "rho": float, "batch_size": int, "eval_size": int,
    "depth": int, "width": int, "classes": int, "data_dir": str, "max_train": int,
    "p": int, "operation": str, "model": str, "context": int, "corpus_dir": str,
    "heads": int, "init": str, "bias": bool, "qk_layernorm": bool, "z_loss": float,
    "adam_b2": float, "vector_readout": bool,
}


def missing_extra() -> list[str]:
  """The distributions of the ``examples`` extra that cannot be imported.

  Example:
    >>> print(missing_extra())
    []
  """
  missing = []
  for module, distribution in EXTRA_MODULES.items():
    try:
      importlib.import_module(module)
    except ImportError:
      missing.append(distribution)
  return missing


def _parser() -> argparse.ArgumentParser:
  # Imported here, not above: they need the examples extra (see main).
  from optax_split.experiments import cache, jobs, optimizers, scale, suite, tasks

  parser = argparse.ArgumentParser(
      prog="optax-split",
      description="Compare optimizers on small exploding-gradient problems.")
  sub = parser.add_subparsers(dest="command", required=True)
  compare = sub.add_parser(
      "compare", help="train every optimizer on a task and print a table",
      description="Trains a small Flax model with each optimizer over a grid of effective "
      "learning rates and seeds, prints a table and writes results.json, results.md and "
      "PNG plots.")
  compare.add_argument("--task", default="adding", choices=tasks.NAMES)
  compare.add_argument(
      "--optimizers", nargs="+", default=None, metavar="NAME",
      help=f"default: {' '.join(optimizers.DEFAULT_NAMES)}; options after a colon, e.g. "
      "split_adam:alpha=-0.5,budget=0.02, muon+split or sgd_clip:max_norm=0.1/1")
  compare.add_argument("--seeds", type=int, default=5,
                       help="default 5: the fewest for which winning on every seed is "
                       "beyond the seed noise (sign test p = 0.03)")
  compare.add_argument("--steps", type=int, default=None, help="default: the task's")
  compare.add_argument("--lrs", type=float, nargs="+", default=None, metavar="RATE",
                       help="effective learning rates of the SGD-like optimizers")
  compare.add_argument("--adaptive-lrs", type=float, nargs="+", default=None, metavar="RATE",
                       help="learning rates of the Adam-like optimizers")
  compare.add_argument("--out", type=Path, default=None, help="default: runs/TASK")
  compare.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  _add_run_flags(compare, jobs.MAX_DEFAULT_JOBS, cache.CACHE_ENV)
  task_options = compare.add_argument_group("task options (each task takes some)")
  task_options.add_argument("--length", type=int, help="adding: sequence length")
  task_options.add_argument("--hidden", type=int, help="adding: RNN units; grokking: MLP units")
  task_options.add_argument("--rho", type=float, help="adding: recurrent init scale")
  task_options.add_argument("--batch-size", type=int)
  task_options.add_argument("--eval-size", type=int, help="adding: validation/test size")
  task_options.add_argument("--depth", type=int, help="deep_mlp: hidden layers")
  task_options.add_argument("--width", type=int, help="deep_mlp, cifar2: layer width")
  task_options.add_argument("--classes", type=int, nargs=2,
                            help="cifar2: the two CIFAR-10 classes (default 3 5: cat, dog)")
  task_options.add_argument("--data-dir", type=str,
                            help="cifar2: the cifar-10-batches-py folder (or $CIFAR10_DIR)")
  task_options.add_argument("--max-train", type=int, help="cifar2: training images kept")
  task_options.add_argument("--p", type=int, help="grokking: the modulus")
  task_options.add_argument("--operation", choices=("add", "mul"), help="grokking")
  task_options.add_argument("--model", choices=("transformer", "mlp"), help="grokking")
  task_options.add_argument("--context", type=int, help="lm: bytes per sequence")
  task_options.add_argument("--corpus-dir", type=str,
                            help="lm: a folder of .py files (default: the standard library)")
  task_options.add_argument("--heads", type=int, help="lm: attention heads")
  task_options.add_argument("--init", choices=("lecun", "gpt"),
                            help="lm: Flax's default kernels or GPT-2's N(0, 0.02)")
  task_options.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                            help="lm: biases in the Dense layers and LayerNorms")
  task_options.add_argument("--qk-layernorm", action=argparse.BooleanOptionalAction,
                            default=None, help="lm: LayerNorm on queries and keys")
  task_options.add_argument("--z-loss", type=float, help="lm: z-loss coefficient, e.g. 1e-4")
  task_options.add_argument("--adam-b2", type=float, help="lm: Adam's b2 for every Adam-like row")
  task_options.add_argument("--vector-readout", action=argparse.BooleanOptionalAction,
                            default=None, help="adding: read out with a weight vector")

  run_suite = sub.add_parser(
      "suite", help="run every task with one optimizer list and write one report",
      description="Trains every task with the suite's optimizers (practitioners' baselines, "
      "tuned; the presets at their defaults, only the rate swept) and writes suite.md, "
      "suite.json, lr_sensitivity.png and each task's results under --out. Tasks already "
      "in --out from an earlier run join the report, and so do the optimizers of an earlier "
      "run of the same task with the same settings.")
  run_suite.add_argument("--tasks", nargs="+", default=None, choices=suite.TASKS,
                         help="default: every task (with --quick: adding and lm)")
  run_suite.add_argument("--optimizers", nargs="+", default=None, metavar="NAME",
                         help=f"default: {' '.join(suite.OPTIMIZERS)}")
  run_suite.add_argument("--quick", action="store_true",
                         help="tiny models and few steps: checks the pipeline in about a minute")
  run_suite.add_argument("--out", type=Path, required=True)
  run_suite.add_argument("--drop", nargs="+", default=[], metavar="NAME",
                         help="remove these optimizers' rows of an earlier run from the report "
                         "(e.g. the variants of an earlier default)")
  run_suite.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  _add_run_flags(run_suite, jobs.MAX_DEFAULT_JOBS, cache.CACHE_ENV)

  sweep = sub.add_parser(
      "scale", help="sweep the lm task's width: learning-rate sensitivity as the model grows",
      description="Trains lm_gpt at each width with every optimizer over the same grid of "
      "rates (Wortsman et al. 2023's small-scale proxy) and writes scale.md, scale.json, "
      "scale.png and each width's results under --out. Each optimizer is written as soon as "
      "it is trained, and one already there with the same settings is not trained again: a "
      "stopped sweep continues where it stopped.")
  sweep.add_argument("--widths", type=int, nargs="+", default=None, metavar="WIDTH",
                     help=f"default: {' '.join(map(str, scale.FULL['widths']))}")
  sweep.add_argument("--optimizers", nargs="+", default=None, metavar="NAME",
                     help=f"default: {' '.join(scale.ROWS)}; {scale.MODEL_FIX_SUFFIX} trains "
                     "the model with qk-LayerNorm and z-loss")
  sweep.add_argument("--steps", type=int, default=None,
                     help=f"default {scale.FULL['steps']}")
  sweep.add_argument("--seeds", type=int, default=None,
                     help=f"default {scale.FULL['seeds']}")
  sweep.add_argument("--quick", action="store_true",
                     help="tiny models and few steps: checks the pipeline")
  sweep.add_argument("--out", type=Path, required=True)
  sweep.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  _add_run_flags(sweep, jobs.MAX_DEFAULT_JOBS, cache.CACHE_ENV)
  return parser


def _add_run_flags(parser: argparse.ArgumentParser, max_jobs: int, cache_env: str) -> None:
  """``--jobs`` and ``--no-cache``: how the programs run, not what they compute."""
  parser.add_argument(
      "--jobs", type=int, default=None, metavar="N",
      help=f"optimizers trained at once (default: the CPU cores, at most {max_jobs}; "
      "the numbers do not depend on it)")
  parser.add_argument(
      "--no-cache", action="store_true",
      help="do not keep compiled programs in JAX's persistent compilation cache (by default "
      f"${cache_env}, else ~/.cache/optax-split/jax), so every run compiles again")


def main(argv: list[str] | None = None) -> None:
  """Entry point of ``optax-split`` and ``python -m optax_split.experiments``."""
  argv = sys.argv[1:] if argv is None else list(argv)
  missing = missing_extra()
  if missing:
    raise SystemExit(
        f"optax-split: the experiments need the examples extra, and {', '.join(missing)} "
        f"cannot be imported. Install it with:\n\n  {INSTALL}\n")
  args = _parser().parse_args(argv)
  if args.jobs is not None and args.jobs < 1:
    raise SystemExit(f"optax-split: --jobs must be at least 1, got {args.jobs}. E.g. --jobs 2.")
  from optax_split.experiments import cache, commands  # Needs the extra: checked above.

  run = {"command": "optax-split " + shlex.join(argv), "jobs_at_once": args.jobs,
         "progress": not args.no_progress}
  try:
    with cache.compilation_cache_at(None if args.no_cache else cache.cache_dir()):
      if args.command == "suite":
        print(commands.run_suite(task_names=args.tasks, names=args.optimizers,
                                 quick=args.quick, out=args.out, drop=args.drop, **run))
      elif args.command == "scale":
        print(commands.run_scale(widths=args.widths, names=args.optimizers, quick=args.quick,
                                 steps=args.steps, seeds=args.seeds, out=args.out, **run))
      else:
        options = {k: getattr(args, k) for k in _TASK_OPTIONS if getattr(args, k) is not None}
        if "classes" in options:
          options["classes"] = tuple(options["classes"])
        print(commands.compare(task=args.task, task_options=options, names=args.optimizers,
                               seeds=args.seeds, steps=args.steps, rates=args.lrs,
                               adaptive_rates=args.adaptive_lrs, out=args.out, **run))
  except commands.UsageError as error:
    raise SystemExit(f"optax-split: {error}") from None
