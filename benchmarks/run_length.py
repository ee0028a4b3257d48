"""The best-rate gap and the learning-rate sensitivity against the run's length.

Reads the ``results.json`` of one task trained at several lengths (by ``optax-split
suite`` or ``compare``; files of the same length join their rows, and an
optimizer's rates trained into several files join its grid), keeps only the
seeds that every length ran and, per optimizer, the rates it ran at every length,
and prints per length and optimizer: the best rate (by the median final validation
metric, a diverged seed counting as the worst, as in the suite), the test metric at
the best validation point there (median over the seeds), the sensitivity over those
rates (Wortsman et al.'s, as in the suite), and the first optimizer's gap to
each other one with its paired seeds.

An optimizer is named as in the experiments; ``adamw_clip:max_norm=1`` also
finds the ``max_norm=1`` slice of an ``adamw_clip`` row that swept the threshold.

Usage:
  python benchmarks/run_length.py results/suite/lm_gpt/results.json \\
      results/length/lm_gpt_4000_split_adam/results.json \\
      results/length/lm_gpt_4000_adamw_clip/results.json \\
      --optimizers split_adam adamw_clip:max_norm=1
"""

import argparse
import json
import math

import numpy as np

from optax_split.experiments import metrics


def _slice(summary: dict, options: dict) -> list[dict]:
  """The grid points of ``summary`` whose hyperparameters match ``options``."""
  return [p for p in summary["grid"]
          if all(math.isclose(float(p.get(k, math.nan)), v) for k, v in options.items())]


def find(results: dict, name: str) -> list[dict]:
  """The grid points of optimizer ``name`` in ``results``, by its full name or its sliced base."""
  rows = {s["optimizer"]: s for s in results["optimizers"]}
  if name in rows:
    return rows[name]["grid"]
  base, _, rest = name.partition(":")
  options = dict(item.split("=") for item in rest.split(",") if item)
  if base in rows:
    points = _slice(rows[base], {k: float(v) for k, v in options.items()})
    if points:
      return points
  raise SystemExit(f"{name} is not in the results of {results['command'].splitlines()[0]!r}; "
                   f"it has {', '.join(rows)}")


def _values(values: list, seeds: int) -> np.ndarray:
  return np.array([math.nan if v is None else v for v in values[:seeds]], float)


def _join_rows(rows: list[dict], more: list[dict]) -> list[dict]:
  """``rows`` and ``more``, an optimizer in both with the grid points of both (later wins)."""
  joined = {row["optimizer"]: row for row in rows}
  for row in more:
    if row["optimizer"] in joined:
      old = joined[row["optimizer"]]
      rates = {p["rate"] for p in row["grid"]}
      row = {**old, "grid": [p for p in old["grid"] if p["rate"] not in rates] + row["grid"]}
    joined[row["optimizer"]] = row
  return list(joined.values())


def merge_lengths(files: list[dict]) -> list[dict]:
  """One results dict per run length, shortest first: files of the same length join rows."""
  by_steps = {}
  for results in files:
    steps = results["settings"]["steps"]
    if steps not in by_steps:
      by_steps[steps] = {**results, "optimizers": list(results["optimizers"])}
      continue
    run = by_steps[steps]
    run["optimizers"] = _join_rows(run["optimizers"], results["optimizers"])
    run["settings"] = {**run["settings"],
                       "seeds": min(run["settings"]["seeds"], results["settings"]["seeds"])}
    run["command"] += "\n" + results["command"]
  return [by_steps[steps] for steps in sorted(by_steps)]


def summarize(points: list[dict], rates: list[float], seeds: int, init: float,
              higher_is_better: bool) -> dict:
  """Best rate, test metric per seed there and sensitivity over ``rates`` and ``seeds``."""
  by_rate = {p["rate"]: p for p in points}
  sign = -1.0 if higher_is_better else 1.0
  # As the suite does: a diverged seed counts as the worst value in the median.
  scores = [float(np.median(np.nan_to_num(sign * _values(by_rate[r]["final_val_metric"], seeds),
                                          nan=math.inf))) for r in rates]
  final = [None if math.isinf(v) else sign * v for v in scores]
  best = rates[int(np.argmin(scores))]
  test = _values(by_rate[best]["test_metric_at_best_val"], seeds)
  sensitivity = metrics.lr_sensitivity(final, init, higher_is_better=higher_is_better)
  return {"rate": best, "test": test, "sensitivity": sensitivity, "final_by_rate": final}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("results", nargs="+", help="results.json files of one task")
  parser.add_argument("--optimizers", nargs="+", required=True,
                      help="the first is compared with each of the others")
  args = parser.parse_args(argv)
  files = [json.load(open(path)) for path in args.results]
  if len({r["task"] for r in files}) != 1:
    raise SystemExit("the results must be one task's: got " + ", ".join(r["task"] for r in files))
  runs = merge_lengths(files)
  found = [{name: find(r, name) for name in args.optimizers} for r in runs]
  # Per optimizer, the rates it ran at every length.
  rates = {name: sorted(set.intersection(*({p["rate"] for p in f[name]} for f in found)))
           for name in args.optimizers}
  seeds = min(r["settings"]["seeds"] for r in runs)
  higher = runs[0]["higher_is_better"]
  print(f"task {runs[0]['task']}: the first {seeds} seed(s) of each run, each optimizer on the "
        f"rates it ran at every length; test {runs[0]['metric']} at the best validation point, "
        "median over the seeds\n")
  print("| steps | optimizer | best rate | test metric | lr sensitivity | final val. by rate | "
        f"gap to {args.optimizers[0]} | {args.optimizers[0]} better on seeds |")
  print("|---|---|---|---|---|---|---|---|")
  for run, points in zip(runs, found, strict=True):
    init = next(s["suite"]["init_val"] for s in run["optimizers"])
    rows = {name: summarize(p, rates[name], seeds, init, higher) for name, p in points.items()}
    first = rows[args.optimizers[0]]
    for name, row in rows.items():
      gap = better = ""
      if name != args.optimizers[0]:
        diff = np.nanmedian(first["test"]) - np.nanmedian(row["test"])
        gap = f"{diff:+.4g} ({100 * diff / np.nanmedian(row['test']):+.1f}%)"
        # As the suite's paired count: a diverged seed counts as the worst.
        sign = -1.0 if higher else 1.0
        mine, theirs = (np.nan_to_num(sign * r["test"], nan=math.inf) for r in (first, row))
        wins = mine < theirs
        better = f"{int(np.sum(wins))} of {seeds}"
      finals = ", ".join(f"{r:g}: " + ("diverged" if v is None else f"{v:.3g}")
                         for r, v in zip(rates[name], row["final_by_rate"], strict=True))
      sensitivity = "-" if row["sensitivity"] is None else f"{row['sensitivity']:.3g}"
      print(f"| {run['settings']['steps']} | {name} | {row['rate']:g} | "
            f"{np.nanmedian(row['test']):.4g} | {sensitivity} | {finals} | {gap} | "
            f"{better} |")


if __name__ == "__main__":
  main()
