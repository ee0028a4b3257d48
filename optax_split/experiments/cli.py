"""The command line: ``optax-split compare --task adding ...``."""

import argparse
import concurrent.futures
import contextlib
import fcntl
import json
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import jax
import tqdm
from jax.experimental.compilation_cache import compilation_cache

from optax_split.experiments import optimizers, plots, report, runner, suite, tasks

# Task options on the command line -> the task factory's keyword arguments.
_TASK_OPTIONS = {
    "length": int, "hidden": int, "rho": float, "batch_size": int, "eval_size": int,
    "depth": int, "width": int, "classes": int, "data_dir": str, "max_train": int,
    "p": int, "operation": str, "model": str, "context": int, "corpus_dir": str,
}


# JAX's persistent compilation cache: where the compiled programs are kept between runs.
CACHE_ENV = "OPTAX_SPLIT_CACHE_DIR"
# Optimizers trained at once by default: one a core, at most this many. On a CPU
# each program of the tasks keeps about one core busy (two at once on 2 cores
# took 25 s where one after the other took 41 s), and more at once would only
# hold more programs in memory.
MAX_DEFAULT_JOBS = 4


def default_jobs() -> int:
  """Optimizers trained at once unless ``--jobs`` says: the usable cores, at most 4."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(MAX_DEFAULT_JOBS, cores or 1))


def cache_dir() -> Path:
  """The compilation cache folder: ``$OPTAX_SPLIT_CACHE_DIR``, else ``~/.cache/optax-split/jax``.

  ``~/.cache`` is ``$XDG_CACHE_HOME`` where that is set.

  Example:
    >>> import os
    >>> os.environ["OPTAX_SPLIT_CACHE_DIR"] = "/tmp/my-cache"
    >>> print(cache_dir())
    /tmp/my-cache
    >>> del os.environ["OPTAX_SPLIT_CACHE_DIR"]
  """
  if os.environ.get(CACHE_ENV):
    return Path(os.environ[CACHE_ENV]).expanduser()
  base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
  return base / "optax-split" / "jax"


@contextlib.contextmanager
def compilation_cache_at(path: Path | None) -> Iterator[None]:
  """Keeps every compiled program in JAX's persistent cache at ``path`` (None: no cache).

  The experiments' programs take seconds to compile on a CPU and a second run
  of the same command compiles the same programs, so a cached run only trains.
  Small programs are cached too (no minimum compile time or size). JAX's
  previous settings are restored afterwards.
  """
  if path is None:
    yield
    return
  options = {
      "jax_compilation_cache_dir": str(path),
      "jax_persistent_cache_min_compile_time_secs": 0.0,
      "jax_persistent_cache_min_entry_size_bytes": -1,
  }
  previous = {name: getattr(jax.config, name) for name in options}
  for name, value in options.items():
    jax.config.update(name, value)
  # JAX decides once per process whether to use the cache: decide again now.
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    for name, value in previous.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()


def _parser() -> argparse.ArgumentParser:
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
  _add_run_flags(compare)
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
  _add_run_flags(run_suite)
  return parser


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
  """``--jobs`` and ``--no-cache``: how the programs run, not what they compute."""
  parser.add_argument(
      "--jobs", type=int, default=None, metavar="N",
      help=f"optimizers trained at once (default: the CPU cores, at most {MAX_DEFAULT_JOBS}; "
      "the numbers do not depend on it)")
  parser.add_argument(
      "--no-cache", action="store_true",
      help="do not keep compiled programs in JAX's persistent compilation cache (by default "
      f"${CACHE_ENV}, else ~/.cache/optax-split/jax), so every run compiles again")


def _make_task(args: argparse.Namespace) -> tasks.Task:
  options = {k: getattr(args, k) for k in _TASK_OPTIONS if getattr(args, k) is not None}
  if "classes" in options:
    options["classes"] = tuple(options["classes"])
  try:
    return tasks.make(args.task, **options)
  except TypeError as error:  # An option the task does not take.
    raise SystemExit(
        f"optax-split: --task {args.task} does not take that option: {error}"
    ) from None


def compare(args: argparse.Namespace, command: str) -> str:
  """Runs the comparison; writes the files; returns the printed table."""
  try:
    task = _make_task(args)
    specs = [optimizers.get(n) for n in (args.optimizers or optimizers.DEFAULT_NAMES)]
  except (ValueError, FileNotFoundError) as error:
    raise SystemExit(f"optax-split: {error}") from None
  steps = args.steps or task.steps
  rates = tuple(args.lrs or task.rates)
  adaptive_rates = tuple(args.adaptive_lrs or task.adaptive_rates)
  out = args.out or Path("runs") / task.name
  settings = {"steps": steps, "seeds": args.seeds, "rates": list(rates),
              "adaptive_rates": list(adaptive_rates)}
  summaries = _train_all(task, specs, settings, args, report.summarize)
  table = report.write(out, task, summaries, settings, command)
  plots.write(out, task.name, summaries)
  return table + f"\n\nWrote {out}/results.json, results.md, loss.png, grad_norm.png, " \
                 "global_share.png"


def _train_all(task, specs, settings, args, summarize) -> list[dict]:
  """Trains every optimizer on ``task``; the summaries in ``specs``' order, a preset's alphas apart.

  ``args.jobs`` optimizers train at once, each in its own thread: JAX releases
  the interpreter while a compiled program runs.
  """
  jobs = args.jobs if args.jobs is not None else default_jobs()
  if jobs < 1:
    raise SystemExit(f"optax-split: --jobs must be at least 1, got {jobs}. E.g. --jobs 2.")

  def train(spec):
    rates = settings["adaptive_rates"] if spec.adaptive else settings["rates"]
    runs = runner.train(task, spec, tuple(rates), settings["seeds"], settings["steps"])
    return [summarize(task, r) for r in suite.alpha_slices(runs)]

  with tqdm.tqdm(total=len(specs), desc=task.name, unit="optimizer", disable=args.no_progress,
                 file=sys.stderr) as bar, concurrent.futures.ThreadPoolExecutor(jobs) as pool:
    futures = {pool.submit(train, spec): spec.name for spec in specs}
    for done in concurrent.futures.as_completed(futures):
      bar.set_postfix_str(futures[done])
      bar.update()
    return [summary for future in futures for summary in future.result()]


def _with_earlier(path: Path, task: tasks.Task, settings: dict, summaries: list[dict],
                  command: str, drop: list[str]) -> tuple[list[dict], str]:
  """``summaries`` after those of an earlier run of the task with the same settings.

  An optimizer run again replaces its earlier summary, and the earlier rows
  named in ``drop`` go; the commands of both runs are kept, one a line.
  """
  if not path.exists():
    return summaries, command
  earlier = json.loads(path.read_text())
  same = (earlier["settings"] == settings
          and earlier["task_settings"] == json.loads(json.dumps(task.settings)))
  if not same:
    return summaries, command
  gone = {s["optimizer"] for s in summaries} | set(drop)
  kept = [report.with_seeds(s) for s in earlier["optimizers"] if s["optimizer"] not in gone]
  commands = dict.fromkeys([*earlier["command"].splitlines(), command])
  return kept + summaries, "\n".join(commands)


def run_suite(args: argparse.Namespace, command: str) -> str:
  """Runs the suite's tasks; writes each task's results and the suite report."""
  sizes = suite.QUICK if args.quick else suite.FULL
  names = args.tasks or list(sizes)
  try:
    specs = [optimizers.get(n) for n in (args.optimizers or suite.OPTIMIZERS)]
    made = {name: tasks.make(name, **sizes.get(name, suite.FULL[name])["task"])
            for name in names}
  except (ValueError, FileNotFoundError) as error:
    raise SystemExit(f"optax-split: {error}") from None
  for name, task in made.items():
    size = sizes.get(name, suite.FULL[name])
    settings = {"steps": size["steps"], "seeds": size["seeds"],
                "rates": list(size.get("rates", task.rates)),
                "adaptive_rates": list(size.get("adaptive_rates", task.adaptive_rates))}
    if "weight_decays" in size:
      settings["weight_decays"] = list(size["weight_decays"])
    task_specs = [suite.with_weight_decays(s, size.get("weight_decays")) for s in specs]
    summaries = _train_all(task, task_specs, settings, args, suite.summarize)
    folder = args.out / name
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(args.out):  # Runs of other optimizers into the same --out may end meanwhile.
      summaries, commands = _with_earlier(folder / "results.json", task, settings, summaries,
                                          command, args.drop)
      report.write(folder, task, summaries, settings, commands)
      plots.write(folder, name, summaries)
      record = suite.task_record(task, summaries, settings, commands)
      (folder / "suite_task.json").write_text(json.dumps(record, indent=1) + "\n")
  with _locked(args.out):
    records = [json.loads((args.out / n / "suite_task.json").read_text()) for n in suite.TASKS
               if (args.out / n / "suite_task.json").exists()]
    return suite.write(args.out, records)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
  """Holds an exclusive lock on ``folder``, so that suite runs into it merge one at a time."""
  folder.mkdir(parents=True, exist_ok=True)
  with open(folder / ".lock", "w") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> None:
  """Entry point of ``optax-split`` and ``python -m optax_split.experiments``."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args = _parser().parse_args(argv)
  command = "optax-split " + shlex.join(argv)
  with compilation_cache_at(None if args.no_cache else cache_dir()):
    print(run_suite(args, command) if args.command == "suite" else compare(args, command))
