"""Rendering as text: the comparison table, ``results.md`` and ``suite.md``.

Everything here formats numbers that :mod:`~optax_split.experiments.results`
and :mod:`~optax_split.experiments.verdict` computed; nothing is measured here.
"""

from optax_split.experiments import metrics, scale, verdict
from optax_split.experiments.results import Resolution, Settings, Summary, TaskRecord
from optax_split.experiments.tasks.base import Task


def fmt(x: float | None, digits: int = 4) -> str:
  """``x`` to ``digits`` significant digits; ``-`` for None.

  Example:
    >>> print(fmt(0.123456), fmt(None), fmt(2.0, 3))
    0.1235 - 2
  """
  if x is None:
    return "-"
  return f"{x:.{digits}g}"


def text_table(header: list[str], rows: list[list[str]]) -> str:
  """A plain-text table with aligned columns.

  Example:
    >>> print(text_table(["aa", "b"], [["1", "2"]]))
    aa  b
    --  -
    1   2
  """
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
  return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
  """A GitHub-flavoured Markdown table.

  Example:
    >>> print(markdown_table(["a", "b"], [["1", "2"]]))
    | a | b |
    |---|---|
    | 1 | 2 |
  """
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def compare_table(task: Task, summaries: list[Summary],
                  steps: int) -> tuple[list[str], list[list[str]]]:
  """Header and rows of the comparison table, best first.

  The ranked number (the test metric, or the steps to the target) comes with
  its median, its range over seeds, and the paired seeds on which the first
  row beat this one (with the sign test's p-value): which rows the first one
  is ahead of beyond the seed noise. The last column is the learning-rate
  sensitivity (:func:`~optax_split.experiments.metrics.lr_sensitivity`).
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
  header.append("lr sensitivity")
  rows = []
  ordered = sorted(summaries, key=lambda s: rank[s.optimizer])
  for s in ordered:
    others = ", ".join(f"{k}={v:g}" for k, v in s.best.items() if k != "rate")
    if task.target is not None:
      value = fmt(s.steps_to_target, 6) if s.steps_to_target is not None \
          else f"> {steps} (never)"
    else:
      value = fmt(s.test_metric_at_best_val)
    row = [f"{rank[s.optimizer]:g}", s.optimizer, f"{s.best['rate']:g}",
           others or "-", value, verdict.spread(s, target=task.target),
           "-" if s is ordered[0] else verdict.leader_edge(ordered[0], s, **options),
           f"{s.diverged_seeds_at_best}/{s.seeds}", f"{s.diverged_runs}/{s.runs}",
           fmt(s.final_train_loss)]
    if task.target is not None:
      row.append(fmt(s.test_metric_at_best_val))
    row.append(fmt(s.lr_sensitivity, 3))
    rows.append(row)
  return header, rows


def _ranked_words(task: Task) -> str:
  if task.target is not None:
    return f"steps to validation {task.metric} {task.target:g}"
  return f"test {task.metric}"


def resolution_line(task: Task, resolution: Resolution | None) -> str:
  """The task's resolution in a sentence (see :func:`verdict.resolution`).

  Example:
    >>> from optax_split.experiments import tasks
    >>> task = tasks.make("adding", length=4, hidden=2, eval_size=2)
    >>> r = Resolution(("a", "b"), paired_seeds=3, t=2.92, sd=1.0, difference=1.68586,
    ...                mean_difference=2.0)
    >>> print(resolution_line(task, r))
    Resolution: the top two rows, a and b, differ by 2 in test mse on 3 paired seeds; the \
seeds resolve a difference of 1.686 or more at p < 0.05 (one-sided paired t-test: t 2.92 x sd \
1 / sqrt(3)).
  """
  if resolution is None:
    return ("Resolution: - (a paired t-test needs two rows that both finished on 2 seeds "
            "or more).")
  r = resolution
  return (f"Resolution: the top two rows, {r.between[0]} and {r.between[1]}, differ by "
          f"{fmt(r.mean_difference)} in {_ranked_words(task)} on {r.paired_seeds} paired seeds; "
          f"the seeds resolve a difference of {fmt(r.difference)} or more at p < 0.05 "
          f"(one-sided paired t-test: t {r.t:g} x sd {fmt(r.sd)} / sqrt({r.paired_seeds})).")


def results_markdown(task: Task, summaries: list[Summary], settings: Settings, command: str,
                     conclusion: str, resolution: Resolution | None) -> str:
  """``results.md``: the command, the task, the table, its resolution, the verdict, a legend."""
  header, rows = compare_table(task, summaries, settings.steps)
  described = "\n".join(f"- `{s.optimizer}`: {s.description}" for s in summaries)
  task_line = ", ".join(f"{k}={v}" for k, v in task.settings.items())
  return (
      f"# `{task.name}`\n\n```\n{command}\n```\n\n"
      f"Task: {task_line}. Steps: {settings.steps}, seeds: {settings.seeds}, "
      f"effective rates: {list(settings.rates)}, "
      f"Adam-like rates: {list(settings.adaptive_rates)}.\n\n"
      + markdown_table(header, rows)
      + f"\n\n{resolution_line(task, resolution)}\n\n{conclusion}\n\n"
      "Best grid point: the best median (over seeds) final validation "
      f"{task.metric}, a diverged seed counting as worst"
      + (f" (fewest median steps to validation {task.metric} {task.target:g} first)"
         if task.target is not None else "")
      + ". Final train loss: median over seeds of the mean loss over the last "
      f"{metrics.FINAL_FRACTION:.0%} of the steps. Test {task.metric}: median over seeds, each "
      "at its best validation point; both over the seeds that did not diverge. A run diverged "
      f"if its loss was ever non-finite or its final train loss exceeds "
      f"{task.divergence_bound:.4g}. "
      "#: the rank of that median; over seeds: its range over the seeds; #1 better on seeds: "
      "the paired seeds on which the first row beat this one, with a one-sided sign test's "
      "p-value. lr sensitivity (Wortsman et al. 2023; lower is better): the mean over the "
      f"optimizer's rates of min(final validation {task.metric}, {task.metric} at init) minus "
      "its own best, a diverged rate counting as init. The verdict sets the "
      "best of optax-split against the best baseline seed by seed (each seed starts from the "
      "same params and sees the same batches under every optimizer), a diverged seed counting "
      "as worst, and calls the difference beyond the seed noise when a one-sided sign test "
      f"gives p < {verdict.SIGNIFICANCE:g}."
      f"\n\nOptimizers:\n\n{described}\n"
  )


def _metric_cell(record: TaskRecord, s: Summary) -> str:
  if record.target is not None:
    return f"{s.steps_to_target:g} steps" if s.steps_to_target is not None else "never"
  return fmt(s.test_metric_at_best_val)


def _column(record: TaskRecord) -> str:
  if record.target is not None:
    return f"steps to val {record.metric} {record.target:g}"
  return f"test {record.metric}"


def _task_line(record: TaskRecord) -> str:
  s = record.settings
  options = ", ".join(f"{k}={v}" for k, v in record.task_settings.items())
  decays = f", weight decays {s['weight_decays']}" if "weight_decays" in s else ""
  r = record.resolution
  resolved = "-" if r is None else (
      f"{fmt(r.difference)} ({r.between[0]} vs {r.between[1]}, {r.paired_seeds} paired seeds)")
  return (f"{options}; {s['steps']} steps, {s['seeds']} seed(s), effective rates "
          f"{s['rates']}, Adam-like rates {s['adaptive_rates']}{decays}; resolution {resolved}")


def suite_markdown(records: list[TaskRecord], ranks: list[dict[str, float]],
                   mean_rank: dict[str, float | None]) -> str:
  """``suite.md``: the commands, the table over tasks and the details per optimizer.

  Args:
    records: The tasks.
    ranks: Per task, each optimizer's rank.
    mean_rank: Each optimizer's mean rank over the tasks it ran.
  """
  commands = "\n".join(dict.fromkeys(c for t in records for c in t.command.splitlines()))
  header = ["optimizer", *(f"{t.task}: {_column(t)}" for t in records), "mean rank"]
  rows = []
  for name, rank in mean_rank.items():
    row = [name]
    for t, task_ranks in zip(records, ranks, strict=True):
      s = next((s for s in t.optimizers if s.optimizer == name), None)
      row.append("-" if s is None else
                 f"{_metric_cell(t, s)} (#{task_ranks[name]:g}; div {s.diverged_runs}/"
                 f"{s.runs})")
    row.append(f"{rank:.2f}")
    rows.append(row)
  detail_header = ["task", "optimizer", "best setting", "top rate / best", "sensitivity",
                   "spikes (best / grid)"]
  details = []
  for t in records:
    for s in t.optimizers:
      setting = ", ".join(f"{k}={v:g}" for k, v in s.best.items())
      headroom = max(s.suite.rates) / s.best["rate"]
      short = " †" if scale.short_of_headroom(headroom) else ""
      details.append([t.task, s.optimizer, setting, f"{headroom:.3g}{short}",
                      fmt(s.lr_sensitivity, 3),
                      f"{fmt(s.suite.spikes_at_best)} / {s.suite.spikes_grid}"])
  return (
      f"# Suite\n\nMade by\n\n```\n{commands}\n```\n\n"
      "Each cell: the tuned best (test metric at the best validation point, or the median "
      "steps to the task's validation target), its rank on the task (#1 best) and the diverged "
      "runs over the whole grid. Presets under their plain names run at their defaults with "
      "only the rate swept; `:alpha=...` rows are the same preset at another alpha.\n\n"
      + markdown_table(header, rows)
      + "\n\nLearning-rate sensitivity (Wortsman et al. 2023; lower is better): the mean over "
      "the rates of min(final validation metric, metric at init) minus that optimizer's own "
      "best, in the task's metric. Spikes: steps whose training loss exceeds "
      f"{metrics.SPIKE_FACTOR:g}x the median of the {metrics.SPIKE_WINDOW} steps before (median "
      "over seeds at the best setting / sum over the grid). Top rate / best: how far the grid "
      f"reaches past the best rate; † marks less than {scale.HEADROOM:g}x, where the grid does "
      "not show where the optimizer diverges.\n\n"
      + markdown_table(detail_header, details)
      + "\n\nTasks, each with its resolution: the smallest difference in its ranked number "
      "between its top two rows that its paired seeds resolve at p < 0.05 (one-sided paired "
      "t-test; - with fewer than 2 seeds on which both finished).\n\n"
      + "\n".join(f"- `{t.task}`: {_task_line(t)}" for t in records) + "\n"
  )


def scale_markdown(points: dict[str, dict[int, scale.Point | None]], widths: tuple[int, ...],
                   settings: Settings, commands: list[str]) -> str:
  """``scale.md``: the commands, then one table per number, a row per optimizer, a column per width.

  Example:
    >>> from optax_split.experiments.results import Settings
    >>> md = scale_markdown({"adamw_clip": {64: None}}, (64,), Settings(10, 1, (0.1,), (0.01,)),
    ...                     ["optax-split scale --quick"])
    >>> print(md.splitlines()[0], "| adamw_clip | - |" in md)
    # Width sweep True
  """
  header = ["optimizer", *(f"width {w}" for w in widths)]

  def table(cell) -> str:
    rows = [[name, *("-" if by_width[w] is None else cell(by_width[w]) for w in widths)]
            for name, by_width in points.items()]
    return markdown_table(header, rows)

  mark = lambda p: " †" if p.short_of_headroom else ""  # noqa: E731
  lines = "\n".join(commands)
  return (
      f"# Width sweep\n\nMade by\n\n```\n{lines}\n```\n\n"
      f"`lm_gpt` (GPT-2's init, no biases, Adam's b2 0.95) at each width; {settings.steps} "
      f"steps, {settings.seeds} seed(s), Adam-like rates {list(settings.adaptive_rates)}, "
      f"effective rates {list(settings.rates)}. `{scale.MODEL_FIX_SUFFIX}` rows train the model "
      f"with qk-LayerNorm and z-loss ({scale.MODEL_FIX['z_loss']:g}).\n\n"
      "## Best final validation bits/byte (at rate)\n\nMedian over seeds at each rate, the "
      f"best rate's. † marks a best rate less than {scale.HEADROOM:g}x below the grid's top: "
      "the grid does not show where that row diverges.\n\n"
      + table(lambda p: f"{fmt(p.best)} ({fmt(p.best_rate, 2)}){mark(p)}")
      + "\n\n## Learning-rate sensitivity\n\nWortsman et al. (2023), lower is flatter: the "
      "mean over the rates of min(final validation loss, loss at init) minus the row's own "
      "best, in bits/byte.\n\n"
      + table(lambda p: fmt(p.lr_sensitivity, 3))
      + "\n\n## Diverged runs and loss spikes over the grid\n\n"
      + table(lambda p: f"{p.diverged_runs}/{p.runs}, {p.spikes_grid} spikes")
      + "\n\n## Global share at the best rate\n\nThe split's ||G||^2 / ||g||^2, mean over "
      "training, median over seeds: how much of the step the budget moved to the global "
      "component (- where the optimizer does not split).\n\n"
      + table(lambda p: fmt(p.global_share, 3)) + "\n"
  )
