"""The suite: every task with one optimizer list, one report.

Per task, each optimizer is tuned over the task's grid of effective rates (and
its own grid, such as a clipping threshold); the presets run at their
defaults with only the rate swept. A preset given an ``alpha`` grid
(``split_adam:alpha=-1/0``) is reported once per ``alpha``, and the slice at
its default ``alpha`` is reported under the preset's plain name: that is how
the defaults are chosen on the whole suite.

Besides the comparison table of :mod:`~optax_split.experiments.report`, the
suite measures, per optimizer:

- **learning-rate sensitivity** (Wortsman et al., 2023): the mean over the swept
  rates of ``min(metric(rate), metric at init) - best metric of all runs on the
  task`` (for a metric where higher is better, with the signs turned round),
  ``metric(rate)`` being the final validation metric at that rate, best over
  the optimizer's other hyperparameters, median over seeds;
- **loss spikes**: steps whose training loss exceeds ``SPIKE_FACTOR`` times the
  median of the ``SPIKE_WINDOW`` steps before it, counted per run (median over
  seeds at the best grid point, and summed over the whole grid);
- the **rank** of its tuned best on each task, and the mean rank.
"""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from optax_split import _presets
from optax_split.experiments import optimizers, report, verdict
from optax_split.experiments.runner import Runs
from optax_split.experiments.tasks.base import Task

SPIKE_FACTOR = 1.5
SPIKE_WINDOW = 20

# The suite's optimizers: what practitioners run (Muon, LAMB and AdEMAMix among
# them), the presets' plain-optax twin, the step split around AdamW (the preset
# without its guard) and around Muon, and the presets at their defaults.
OPTIMIZERS = (
    "msgd_clip", "adamw_clip", "adam", "zclip", "muon", "lamb", "ademamix",
    "adamw_clip_agc", "muon+split", "split_sgd", "split_adam", "split_adam:guard=none",
)

# Per task: the settings of the full run and of ``--quick`` (sized for CI).
# ``task`` holds the task's options, the rest the run's.
FULL = {
    "adding": {"task": {}, "steps": 2000, "seeds": 3},
    "deep_mlp": {"task": {}, "steps": 1000, "seeds": 2},
    # The Adam-like grid reaches 1.0: the step split's best rates are high.
    "lm": {"task": {}, "steps": 1000, "seeds": 2,
           "adaptive_rates": (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
           "rates": (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)},
    # Every optimizer sweeps the decoupled weight decay, 0 (Grokfast's regime)
    # included: a JAX rebuild of this regime saw neither Adam nor Grokfast-EMA
    # grok by 3,000 steps without one.
    "grokking": {"task": {}, "steps": 1000, "seeds": 1, "weight_decays": (0.0, 1.0),
                 "adaptive_rates": (1e-3, 3e-3), "rates": (1.0,)},
}
QUICK = {
    "adding": {"task": {"length": 6, "hidden": 4, "eval_size": 16}, "steps": 20, "seeds": 1,
               "rates": (0.01, 10.0), "adaptive_rates": (0.01,)},
    "lm": {"task": {"context": 8, "width": 8, "depth": 1, "heads": 2, "batch_size": 2,
                    "max_bytes": 50_000, "eval_windows": 4},
           "steps": 20, "seeds": 1, "rates": (0.1,), "adaptive_rates": (1e-3, 1.0)},
}
TASKS = tuple(FULL)


def with_weight_decays(spec: optimizers.OptimizerSpec,
                       values: tuple[float, ...] | None) -> optimizers.OptimizerSpec:
  """``spec`` sweeping ``values`` of the weight decay too (a task's ``weight_decays``).

  A weight decay the name already sets (``adam:weight_decay=0.1``) is kept.
  """
  if values is None or "weight_decay" in spec.grid:
    return spec
  return dataclasses.replace(spec, grid={**spec.grid, "weight_decay": tuple(values)})


def spike_counts(loss: np.ndarray) -> np.ndarray:
  """Loss spikes per run: steps over ``SPIKE_FACTOR`` x the median of the window before.

  Non-finite steps count as spikes. ``loss`` is ``(..., steps)``.

  Example:
    >>> loss = np.array([1.0] * 30 + [2.0] + [1.0] * 5 + [np.nan])
    >>> print(spike_counts(loss))
    2
  """
  steps = loss.shape[-1]
  if steps <= SPIKE_WINDOW:
    return np.zeros(loss.shape[:-1], int)
  windows = np.lib.stride_tricks.sliding_window_view(loss, SPIKE_WINDOW, axis=-1)[..., :-1, :]
  with np.errstate(invalid="ignore"):
    median = np.nanmedian(windows, axis=-1) if np.isnan(windows).any() else np.median(
        windows, axis=-1)
    later = loss[..., SPIKE_WINDOW:]
    spikes = ~np.isfinite(later) | (later > SPIKE_FACTOR * median)
  return spikes.sum(axis=-1)


def _is_alpha_grid(name: str, grid: dict) -> bool:
  return "alpha" in grid and name.partition(":")[0] in optimizers.PRESETS


def _slice_name(base: str, alpha: float) -> str:
  return base if alpha == _presets.DEFAULT_ALPHA else f"{base}:alpha={alpha:g}"


def alpha_slices(runs: Runs) -> list[Runs]:
  """One ``Runs`` per ``alpha`` of a preset swept over ``alpha``; else ``[runs]``.

  The slice at the preset's default ``alpha`` is named after the preset alone.
  """
  if not _is_alpha_grid(runs.spec.name, runs.spec.grid):
    return [runs]
  base = runs.spec.name.partition(":")[0]
  slices = []
  for alpha in runs.spec.grid["alpha"]:
    keep = [i for i, c in enumerate(runs.configs) if c["alpha"] == alpha]
    name = _slice_name(base, alpha)
    spec = dataclasses.replace(runs.spec, name=name, grid={
        k: v for k, v in runs.spec.grid.items() if k != "alpha"})
    configs = [{k: v for k, v in runs.configs[i].items() if k != "alpha"} for i in keep]
    pick = lambda x, keep=keep: x[keep]  # noqa: E731
    slices.append(dataclasses.replace(
        runs, spec=spec, configs=configs, loss=pick(runs.loss),
        grad_norm=pick(runs.grad_norm), global_share=pick(runs.global_share),
        val=pick(runs.val), test=pick(runs.test), init_val=pick(runs.init_val)))
  return slices


def summarize(task: Task, runs: Runs) -> dict:
  """:func:`report.summarize` plus the suite's per-rate curve and spike counts."""
  summary = report.summarize(task, runs)
  sign = -1.0 if task.higher_is_better else 1.0
  bad = report.diverged(task, runs.loss)
  final = np.where(bad, np.nan, runs.val[..., -1])  # (configs, seeds)
  rates = sorted({c["rate"] for c in runs.configs})
  per_rate = []
  for rate in rates:
    rows = [i for i, c in enumerate(runs.configs) if c["rate"] == rate]
    with np.errstate(invalid="ignore"):
      medians = [report._median(final[i]) for i in rows]
    scores = [sign * m if math.isfinite(m) else math.inf for m in medians]
    per_rate.append(medians[int(np.argmin(scores))])
  spikes = spike_counts(runs.loss)
  best = runs.configs.index(summary["best"])
  summary["suite"] = {
      "rates": rates,
      "final_val_by_rate": [report._json_number(v) for v in per_rate],
      "init_val": report._json_number(np.median(runs.init_val)),
      "spikes_at_best": report._json_number(np.median(spikes[best])),
      "spikes_grid": int(spikes.sum()),
  }
  return summary


def sensitivity(task: Task, summaries: list[dict]) -> dict[str, float | None]:
  """Wortsman et al.'s learning-rate sensitivity of each optimizer on ``task``.

  A diverged rate counts as the metric at init.
  """
  sign = -1.0 if task.higher_is_better else 1.0
  finals = [v for s in summaries for v in s["suite"]["final_val_by_rate"] if v is not None]
  if not finals:
    return {s["optimizer"]: None for s in summaries}
  best = min(sign * v for v in finals)
  out = {}
  for s in summaries:
    init = sign * s["suite"]["init_val"]
    gaps = [min(init, sign * v) - best if v is not None else init - best
            for v in s["suite"]["final_val_by_rate"]]
    out[s["optimizer"]] = report._json_number(np.mean(gaps))
  return out


def _metric_cell(task: dict, s: dict) -> str:
  if task["target"] is not None:
    reached = s.get("steps_to_target")
    return f"{reached:g} steps" if reached is not None else "never"
  return report._fmt(s["test_metric_at_best_val"])


def write(out: Path, tasks: list[dict]) -> str:
  """Writes ``suite.json``, ``suite.md`` and ``lr_sensitivity.png``; returns the Markdown.

  The tasks may come from several runs of the command (``--tasks``), each
  recorded with its own command line.
  """
  out.mkdir(parents=True, exist_ok=True)
  names = list(dict.fromkeys(s["optimizer"] for t in tasks for s in t["optimizers"]))
  for t in tasks:
    t["ranks"] = verdict.ranks(t["optimizers"], target=t["target"],
                               higher_is_better=t["higher_is_better"])
  mean_rank = {n: report._json_number(np.mean([t["ranks"][n] for t in tasks if n in t["ranks"]]))
               for n in names}
  (out / "suite.json").write_text(json.dumps(
      {"tasks": tasks, "mean_rank": mean_rank}, indent=1) + "\n")
  commands = "\n".join(dict.fromkeys(c for t in tasks for c in t["command"].splitlines()))

  header = ["optimizer", *(f"{t['task']}: {_column(t)}" for t in tasks), "mean rank"]
  rows = []
  for n in names:
    row = [n]
    for t in tasks:
      s = next((s for s in t["optimizers"] if s["optimizer"] == n), None)
      row.append("-" if s is None else
                 f"{_metric_cell(t, s)} (#{t['ranks'][n]:g}; div {s['diverged_runs']}/"
                 f"{s['runs']})")
    row.append(f"{mean_rank[n]:.2f}")
    rows.append(row)
  detail_header = ["task", "optimizer", "best setting", "sensitivity", "spikes (best / grid)"]
  details = []
  for t in tasks:
    for s in t["optimizers"]:
      setting = ", ".join(f"{k}={v:g}" for k, v in s["best"].items())
      details.append([t["task"], s["optimizer"], setting,
                      report._fmt(t["sensitivity"][s["optimizer"]], 3),
                      f"{report._fmt(s['suite']['spikes_at_best'])} / {s['suite']['spikes_grid']}"])
  md = (
      f"# Suite\n\nMade by\n\n```\n{commands}\n```\n\n"
      "Each cell: the tuned best (test metric at the best validation point, or the median "
      "steps to the task's validation target), its rank on the task (#1 best) and the diverged "
      "runs over the whole grid. Presets under their plain names run at their defaults with "
      "only the rate swept; `:alpha=...` rows are the same preset at another alpha.\n\n"
      + report.markdown_table(header, rows)
      + "\n\nLearning-rate sensitivity (Wortsman et al. 2023; lower is better): the mean over "
      "the rates of min(final validation metric, metric at init) minus the task's best, in the "
      "task's metric. Spikes: steps whose training loss exceeds "
      f"{SPIKE_FACTOR:g}x the median of the {SPIKE_WINDOW} steps before (median over seeds at "
      "the best setting / sum over the grid).\n\n"
      + report.markdown_table(detail_header, details)
      + "\n\nTasks:\n\n"
      + "\n".join(f"- `{t['task']}`: {_task_line(t)}" for t in tasks) + "\n"
  )
  (out / "suite.md").write_text(md)
  _sensitivity_figure(tasks).savefig(out / "lr_sensitivity.png", dpi=70)
  return md


def _column(t: dict) -> str:
  if t["target"] is not None:
    return f"steps to val {t['metric']} {t['target']:g}"
  return f"test {t['metric']}"


def _task_line(t: dict) -> str:
  s = t["settings"]
  options = ", ".join(f"{k}={v}" for k, v in t["task_settings"].items())
  decays = f", weight decays {s['weight_decays']}" if "weight_decays" in s else ""
  return (f"{options}; {s['steps']} steps, {s['seeds']} seed(s), effective rates "
          f"{s['rates']}, Adam-like rates {s['adaptive_rates']}{decays}")


def _sensitivity_figure(tasks: list[dict]) -> Figure:
  """Final validation metric against the rate, one curve per optimizer, a panel per task."""
  fig = Figure(figsize=(4.2 * len(tasks), 3.6))
  for i, t in enumerate(tasks):
    ax = fig.add_subplot(1, len(tasks), i + 1)
    for s in t["optimizers"]:
      values = [math.nan if v is None else v for v in s["suite"]["final_val_by_rate"]]
      ax.plot(s["suite"]["rates"], values, marker="o", ms=3, lw=1.2, label=s["optimizer"],
              ls="-" if s["optimizer"].startswith("split") else "--")
    ax.set_xscale("log")
    ax.set_xlabel("effective learning rate")
    ax.set_ylabel(f"final validation {t['metric']}")
    ax.set_title(t["task"], fontsize=10)
    ax.grid(alpha=0.3)
    if i == 0:
      ax.legend(fontsize=6)
  fig.tight_layout()
  return fig


def task_record(task: Task, summaries: list[dict], settings: dict, command: str) -> dict:
  """What the suite keeps of one task: the command, settings, summaries and sensitivities."""
  return {"task": task.name, "command": command, "metric": task.metric,
          "higher_is_better": task.higher_is_better,
          "target": task.target, "settings": settings, "task_settings": task.settings,
          "optimizers": [{k: v for k, v in s.items() if k not in ("curves", "grid")}
                         for s in summaries],
          "sensitivity": sensitivity(task, summaries)}
