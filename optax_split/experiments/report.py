"""Summaries of the runs: the table, ``results.json`` and ``results.md``.

Per optimizer: its best grid point (chosen on the validation set), how many
seeds diverged there and how many runs diverged over the whole grid, the
final training loss and the test metric at each seed's best validation point.
"""

import json
import math
from pathlib import Path

import numpy as np

from optax_split.experiments import verdict
from optax_split.experiments.runner import Runs
from optax_split.experiments.tasks.base import Task

# The final training loss is the mean over this last fraction of the steps.
FINAL_FRACTION = 0.1
# Curves in results.json and the plots are averaged into this many bins.
CURVE_POINTS = 100


def final_loss(loss: np.ndarray) -> np.ndarray:
  """Mean training loss over the last tenth of the steps (last axis)."""
  tail = max(1, int(round(loss.shape[-1] * FINAL_FRACTION)))
  return loss[..., -tail:].mean(axis=-1)


def diverged(task: Task, loss: np.ndarray) -> np.ndarray:
  """A run diverged if its loss was ever non-finite or ends above the task's bound.

  Example:
    >>> import numpy as np
    >>> from optax_split.experiments import tasks
    >>> task = tasks.make("adding", length=4, hidden=2, eval_size=2)
    >>> loss = np.array([[0.2] * 10, [0.2] * 9 + [np.nan], [0.2] * 5 + [99.0] * 5])
    >>> print(diverged(task, loss))
    [False  True  True]
  """
  with np.errstate(invalid="ignore"):
    return ~np.isfinite(loss).all(axis=-1) | ~(final_loss(loss) <= task.divergence_bound)


def binned(curve: np.ndarray, points: int = CURVE_POINTS) -> np.ndarray:
  """``curve`` (last axis) averaged into at most ``points`` equal bins."""
  steps = curve.shape[-1]
  width = max(1, steps // points)
  usable = steps // width * width
  shape = (*curve.shape[:-1], usable // width, width)
  return curve[..., steps - usable:].reshape(shape).mean(axis=-1)


def _median(x: np.ndarray) -> float:
  """Median of the finite entries of a 1-D array (those of the seeds that did not
  diverge); NaN when there are none."""
  x = np.asarray(x, float)
  finite = x[np.isfinite(x)]
  return float(np.median(finite)) if finite.size else math.nan


def summarize(task: Task, runs: Runs) -> dict:
  """The summary of one optimizer's grid: best point, divergences, metrics, curves."""
  sign = -1.0 if task.higher_is_better else 1.0
  bad = diverged(task, runs.loss)  # (configs, seeds)
  val = np.where(bad[..., None], np.nan, runs.val)
  # Each run's best validation point (early stopping); diverged runs have none.
  ranked = np.where(np.isfinite(val), sign * val, np.inf)
  best_eval = ranked.argmin(axis=-1)
  test_at_best = np.take_along_axis(runs.test, best_eval[..., None], axis=-1)[..., 0]
  test_at_best = np.where(bad, np.nan, test_at_best)
  final_val = np.where(bad, np.nan, runs.val[..., -1])
  final_train = np.where(bad, np.nan, final_loss(runs.loss))
  # A grid point's score: the median over seeds, a diverged seed counting as worst.
  score = np.median(np.where(bad, np.inf, sign * runs.val[..., -1]), axis=-1)
  reached = None
  if task.target is not None:
    hit = (sign * val) <= sign * task.target
    first = np.where(hit.any(axis=-1), hit.argmax(axis=-1), -1)
    reached = np.where(first >= 0, runs.eval_steps[first], np.inf)
    # Fewer steps to the target first; the final validation metric breaks ties.
    score = np.median(reached, axis=-1) * 1e6 + np.nan_to_num(score, posinf=1e5)
  best = int(np.argmin(score))
  seeds = bad.shape[1]

  def stats(per_config: np.ndarray) -> list:
    return [_json_number(v) for v in per_config]

  summary = {
      "optimizer": runs.spec.name,
      "description": runs.spec.description,
      "best": runs.configs[best],
      "diverged_seeds_at_best": int(bad[best].sum()),
      "seeds": seeds,
      "diverged_runs": int(bad.sum()),
      "runs": int(bad.size),
      "final_train_loss": _json_number(_median(final_train[best])),
      "test_metric_at_best_val": _json_number(_median(test_at_best[best])),
      # Seed by seed at the best grid point (None: diverged): the spread and the paired verdict.
      "by_seed": {"test_metric": stats(test_at_best[best])},
      "grid": [
          {
              **config,
              "diverged_seeds": int(bad[i].sum()),
              "final_train_loss": stats(final_train[i]),
              "final_val_metric": stats(final_val[i]),
              "test_metric_at_best_val": stats(test_at_best[i]),
          }
          for i, config in enumerate(runs.configs)
      ],
      "curves": {
          "step": binned(np.arange(1, runs.loss.shape[-1] + 1, dtype=float)).tolist(),
          "loss": _json_array(binned(runs.loss[best])),
          "grad_norm": _json_array(binned(runs.grad_norm[best])),
          "global_share": _json_array(binned(runs.global_share[best])),
          "eval_step": runs.eval_steps.tolist(),
          "val_metric": _json_array(runs.val[best]),
      },
  }
  if reached is not None:
    summary["steps_to_target"] = _json_number(np.median(reached[best]))
    summary["by_seed"]["steps_to_target"] = stats(reached[best])
    for i, point in enumerate(summary["grid"]):
      point["steps_to_target"] = stats(reached[i])
  return summary


def with_seeds(summary: dict) -> dict:
  """``summary`` with its ``by_seed`` numbers, read from its best grid point where it lacks them.

  ``results.json`` files written before 0.3.0 have the per-seed numbers only in
  their grid; a suite run that merges such a file keeps its rows comparable.
  """
  if "by_seed" in summary:
    return summary
  best = next(p for p in summary["grid"] if all(p[k] == v for k, v in summary["best"].items()))
  by_seed = {"test_metric": best["test_metric_at_best_val"]}
  if "steps_to_target" in best:
    by_seed["steps_to_target"] = best["steps_to_target"]
  return {**summary, "by_seed": by_seed}


def _json_number(x) -> float | None:
  """A float for JSON, to 6 significant digits; None for NaN and infinities."""
  x = float(x)
  return float(f"{x:.6g}") if math.isfinite(x) else None


def _json_array(x: np.ndarray) -> list:
  return [[_json_number(v) for v in row] for row in np.asarray(x, float)]


def _fmt(x: float | None, digits: int = 4) -> str:
  if x is None:
    return "-"
  return f"{x:.{digits}g}"


def table_rows(task: Task, summaries: list[dict], steps: int) -> tuple[list[str], list[list[str]]]:
  """Header and rows of the comparison table, best first.

  The ranked number (the test metric, or the steps to the target) comes with
  its median, its range over seeds, and the paired seeds on which the first
  row beat this one (with the sign test's p-value): which rows the first one
  is ahead of beyond the seed noise.
  """
  options = {"target": task.target, "higher_is_better": task.higher_is_better}
  rank = verdict.ranks(summaries, **options)
  ranked = f"steps to val {task.metric} {task.target:g}" if task.target is not None \
      else f"test {task.metric} at best val"
  header = ["#", "optimizer", "best eff. rate", "other", ranked, "over seeds",
            "#1 better on seeds", "diverged seeds (at best)", "diverged runs (grid)",
            "final train loss"]
  if task.target is not None:
    header.append(f"test {task.metric} at best val")
  rows = []
  ordered = sorted(summaries, key=lambda s: rank[s["optimizer"]])
  for s in ordered:
    others = ", ".join(f"{k}={v:g}" for k, v in s["best"].items() if k != "rate")
    if task.target is not None:
      reached = s["steps_to_target"]
      value = _fmt(reached, 6) if reached is not None else f"> {steps} (never)"
    else:
      value = _fmt(s["test_metric_at_best_val"])
    row = [f"{rank[s['optimizer']]:g}", s["optimizer"], f"{s['best']['rate']:g}",
           others or "-", value, verdict.spread(s, target=task.target),
           "-" if s is ordered[0] else verdict.leader_edge(ordered[0], s, **options),
           f"{s['diverged_seeds_at_best']}/{s['seeds']}", f"{s['diverged_runs']}/{s['runs']}",
           _fmt(s["final_train_loss"])]
    if task.target is not None:
      row.append(_fmt(s["test_metric_at_best_val"]))
    rows.append(row)
  return header, rows


def verdict_line(task: Task, summaries: list[dict]) -> str:
  """The one-line verdict of :func:`optax_split.experiments.verdict.verdict` for ``task``."""
  return verdict.verdict(summaries, metric=task.metric, target=task.target,
                         higher_is_better=task.higher_is_better)


def text_table(header: list[str], rows: list[list[str]]) -> str:
  """A plain-text table with aligned columns."""
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
  return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
  """A GitHub-flavoured Markdown table."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def write(out: Path, task: Task, summaries: list[dict], settings: dict, command: str) -> str:
  """Writes ``results.json`` and ``results.md`` to ``out``; returns the text table and verdict."""
  header, rows = table_rows(task, summaries, settings["steps"])
  conclusion = verdict_line(task, summaries)
  out.mkdir(parents=True, exist_ok=True)
  results = {"command": command, "task": task.name, "settings": settings,
             "task_settings": task.settings, "metric": task.metric,
             "higher_is_better": task.higher_is_better,
             "divergence_bound": task.divergence_bound, "target": task.target,
             "verdict": conclusion, "optimizers": summaries}
  (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
  described = "\n".join(f"- `{s['optimizer']}`: {s['description']}" for s in summaries)
  task_line = ", ".join(f"{k}={v}" for k, v in task.settings.items())
  md = (
      f"# `{task.name}`\n\n```\n{command}\n```\n\n"
      f"Task: {task_line}. Steps: {settings['steps']}, seeds: {settings['seeds']}, "
      f"effective rates: {settings['rates']}, Adam-like rates: {settings['adaptive_rates']}.\n\n"
      + markdown_table(header, rows)
      + f"\n\n{conclusion}\n\nBest grid point: the best median (over seeds) final validation "
      f"{task.metric}, a diverged seed counting as worst"
      + (f" (fewest median steps to validation {task.metric} {task.target:g} first)"
         if task.target is not None else "")
      + ". Final train loss: median over seeds of the mean loss over the last "
      f"{FINAL_FRACTION:.0%} of the steps. Test {task.metric}: median over seeds, each at its "
      "best validation point; both over the seeds that did not diverge. A run diverged if its "
      f"loss was ever non-finite or its final train loss exceeds {task.divergence_bound:.4g}. "
      "#: the rank of that median; over seeds: its range over the seeds; #1 better on seeds: "
      "the paired seeds on which the first row beat this one, with a one-sided sign test's "
      "p-value. The verdict sets the "
      "best of optax-split against the best baseline seed by seed (each seed starts from the "
      "same params and sees the same batches under every optimizer), a diverged seed counting "
      "as worst, and calls the difference beyond the seed noise when a one-sided sign test "
      f"gives p < {verdict.SIGNIFICANCE:g}."
      f"\n\nOptimizers:\n\n{described}\n"
  )
  (out / "results.md").write_text(md)
  return text_table(header, rows) + "\n\n" + conclusion
