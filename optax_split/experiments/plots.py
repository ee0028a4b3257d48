"""Rendering as PNG: each optimizer's best curves, the suite's rate curves, the width sweep.

Figures are made with ``matplotlib.figure.Figure`` rather than pyplot: saving
them needs no display and no global backend choice, so importing this module
leaves inline plotting in a notebook alone.
"""

import math
import warnings
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from optax_split.experiments.results import Summary, TaskRecord
from optax_split.experiments.scale import Point

_DPI = 60
_SIZE = (6.0, 3.8)


def _curve_figure(summaries: list[Summary], key: str, ylabel: str, title: str, *, log: bool,
                  band: bool) -> Figure:
  """Median over seeds per optimizer; with ``band``, the seeds' min-max band too."""
  fig = Figure(figsize=_SIZE)
  ax = fig.add_subplot()
  for s in summaries:
    curve = np.asarray(s.curves[key], float)  # (seeds, points), None -> NaN
    if not np.isfinite(curve).any():
      continue
    step = np.asarray(s.curves["step"])
    with warnings.catch_warnings():  # All-NaN columns (diverged seeds) are expected.
      warnings.simplefilter("ignore", RuntimeWarning)
      (line,) = ax.plot(step, np.nanmedian(curve, axis=0), lw=1.2,
                        label=f"{s.optimizer} @ {s.best['rate']:g}")
      if band:
        ax.fill_between(step, np.nanmin(curve, axis=0), np.nanmax(curve, axis=0),
                        color=line.get_color(), alpha=0.15, lw=0)
  if log:
    ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  if ax.lines:
    ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  return fig


def write(out: Path, task_name: str, summaries: list[Summary]) -> list[Path]:
  """Writes ``loss.png``, ``grad_norm.png`` and ``global_share.png``; returns their paths."""
  figures = {
      "loss.png": _curve_figure(
          summaries, "loss", "train loss", f"{task_name}: train loss (median, seed band)",
          log=True, band=True),
      "grad_norm.png": _curve_figure(
          summaries, "grad_norm", "global gradient norm",
          f"{task_name}: global norm of the raw gradient (median)", log=True, band=False),
      "global_share.png": _curve_figure(
          summaries, "global_share", "||G||^2 / ||g||^2",
          f"{task_name}: global share of the split (median)", log=False, band=False),
  }
  paths = []
  for name, fig in figures.items():
    path = out / name
    fig.savefig(path, dpi=_DPI)
    paths.append(path)
  return paths


def sensitivity_figure(records: list[TaskRecord]) -> Figure:
  """Final validation metric against the rate, one curve per optimizer, a panel per task."""
  fig = Figure(figsize=(4.2 * len(records), 3.6))
  for i, t in enumerate(records):
    ax = fig.add_subplot(1, len(records), i + 1)
    for s in t.optimizers:
      values = [math.nan if v is None else v for v in s.suite.final_val_by_rate]
      ax.plot(s.suite.rates, values, marker="o", ms=3, lw=1.2, label=s.optimizer,
              ls="-" if s.optimizer.startswith("split") else "--")
    ax.set_xscale("log")
    ax.set_xlabel("effective learning rate")
    ax.set_ylabel(f"final validation {t.metric}")
    ax.set_title(t.task, fontsize=10)
    ax.grid(alpha=0.3)
    if i == 0:
      ax.legend(fontsize=6)
  fig.tight_layout()
  return fig


def scale_figure(points: dict[str, dict[int, Point | None]], widths: tuple[int, ...]) -> Figure:
  """Wortsman et al.'s proxy: final loss against rate, a panel per row, a curve per width.

  The last two panels: each row's sensitivity and its best loss against the width.
  """
  panels = len(points) + 2
  columns = min(4, panels)
  rows = math.ceil(panels / columns)
  fig = Figure(figsize=(3.4 * columns, 2.8 * rows))
  shade = lambda i: 0.25 + 0.75 * i / max(1, len(widths) - 1)  # noqa: E731  darker: wider
  axes = [fig.add_subplot(rows, columns, i + 1) for i in range(panels)]
  for ax, (name, by_width) in zip(axes[:-2], points.items(), strict=True):
    for i, width in enumerate(widths):
      p = by_width[width]
      if p is None:
        continue
      values = [math.nan if v is None else v for v in p.final_val_by_rate]
      ax.plot(p.rates, values, marker="o", ms=3, lw=1.2, color=(0.1, 0.3, 0.8, shade(i)),
              label=f"width {width}")
    ax.set_xscale("log")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("learning rate", fontsize=8)
    ax.set_ylabel("final val bits/byte", fontsize=8)
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=6)
  for ax, key, label in ((axes[-2], "lr_sensitivity", "lr sensitivity"),
                         (axes[-1], "best", "best final val bits/byte")):
    for name, by_width in points.items():
      shown = [(w, getattr(p, key)) for w, p in by_width.items()
               if p is not None and getattr(p, key) is not None]
      if shown:
        ax.plot(*zip(*shown, strict=True), marker="o", ms=3, lw=1.2, label=name,
                ls="-" if "split" in name else "--")
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.minorticks_off()
    ax.set_xlabel("width", fontsize=8)
    ax.set_ylabel(label, fontsize=8)
    ax.set_title(f"{label} against width", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=5)
  fig.tight_layout()
  return fig
