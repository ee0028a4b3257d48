"""Ranks, the spread over seeds, and a one-line verdict from the summaries of one task.

Every optimizer's tuned best is scored by one number: the median test metric
at the best validation point (or the median steps to the task's validation
target). The verdict sets the best of optax-split (a preset, or an optimizer
wrapped in ``split_step``) against the best baseline, seed by seed. Each seed
starts from the same initial params and sees the same batches under every
optimizer, so the comparison is paired, and a one-sided sign test says
whether the winner's edge is beyond what the seeds alone would give. The
task's resolution says how small a difference between the top two rows its
seeds can resolve: a one-sided paired t-test.
"""

import math
import statistics

from optax_split.experiments import metrics, optimizers
from optax_split.experiments.results import Resolution, Summary

# A sign test p-value under this calls a difference beyond the seed noise.
SIGNIFICANCE = 0.05
# One-sided 95% quantiles of Student's t, by degrees of freedom. Between two
# entries the smaller one's quantile (the larger) is taken: conservative.
T_95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860,
        9: 1.833, 10: 1.812, 11: 1.796, 12: 1.782, 13: 1.771, 14: 1.761, 15: 1.753,
        16: 1.746, 17: 1.740, 18: 1.734, 19: 1.729, 20: 1.725, 21: 1.721, 22: 1.717,
        23: 1.714, 24: 1.711, 25: 1.708, 26: 1.706, 27: 1.703, 28: 1.701, 29: 1.699,
        30: 1.697, 40: 1.684, 60: 1.671, 120: 1.658}


def score(summary: Summary, *, target: float | None, higher_is_better: bool) -> float:
  """The number an optimizer is ranked by on its task: smaller is better.

  Example:
    >>> row = Summary(optimizer="adam", test_metric_at_best_val=0.9)
    >>> print(score(row, target=None, higher_is_better=True))
    -0.9
    >>> print(score(row, target=0.95, higher_is_better=True))  # Never reached the target.
    inf
  """
  if target is not None:
    reached = summary.steps_to_target
    return math.inf if reached is None else reached
  metric = summary.test_metric_at_best_val
  if metric is None:
    return math.inf
  return -metric if higher_is_better else metric


def ranks(summaries: list[Summary], *, target: float | None,
          higher_is_better: bool) -> dict[str, float]:
  """Rank (1 = best, ties share the mean rank) of each optimizer's tuned best.

  Example:
    >>> rows = [Summary(optimizer=n, test_metric_at_best_val=v)
    ...         for n, v in (("a", 0.2), ("b", 0.1), ("c", 0.2))]
    >>> print(ranks(rows, target=None, higher_is_better=False))
    {'a': 2.5, 'b': 1.0, 'c': 2.5}
  """
  scores = {s.optimizer: score(s, target=target, higher_is_better=higher_is_better)
            for s in summaries}
  ordered = sorted(scores.values())
  return {name: sum(i + 1 for i, v in enumerate(ordered) if v == value)
          / ordered.count(value) for name, value in scores.items()}


def by_seed(summary: Summary, *, target: float | None) -> list[float | None]:
  """What the rank is made of, seed by seed at the best grid point (None: diverged or never)."""
  return summary.by_seed["steps_to_target" if target is not None else "test_metric"]


def spread(summary: Summary, *, target: float | None) -> str:
  """The range over seeds of the ranked number, e.g. ``"0.0029-0.0041"``.

  Seeds that diverged (or never reached the target) are counted after it.

  Example:
    >>> row = Summary(optimizer="sgd", by_seed={"test_metric": [0.02, None, 0.0104]})
    >>> print(spread(row, target=None))
    0.0104-0.02, 1 diverged
  """
  values = by_seed(summary, target=target)
  finite = [v for v in values if v is not None]
  missing = len(values) - len(finite)
  text = f"{min(finite):.3g}-{max(finite):.3g}" if finite else "-"
  if missing:
    text += f", {missing} {'never' if target is not None else 'diverged'}"
  return text


def sign_test(wins: int, trials: int) -> float:
  """One-sided sign test: the chance of ``wins`` or more heads in ``trials`` fair coin flips.

  Example:
    >>> print(sign_test(5, 5), sign_test(4, 5), sign_test(0, 0))
    0.03125 0.1875 1.0
  """
  return sum(math.comb(trials, k) for k in range(wins, trials + 1)) / 2**trials


def paired(first: Summary, second: Summary, *, target: float | None,
           higher_is_better: bool) -> tuple[int, int]:
  """Seeds on which ``first`` beat ``second``, and seeds that were not a tie.

  A diverged seed (or one that never reached the target) counts as the worst.
  """
  sign = -1.0 if higher_is_better and target is None else 1.0

  def worst_last(v):
    return math.inf if v is None else sign * v

  pairs = [(worst_last(a), worst_last(b)) for a, b in zip(
      by_seed(first, target=target), by_seed(second, target=target), strict=True)]
  return sum(a < b for a, b in pairs), sum(a != b for a, b in pairs)


def leader_edge(leader: Summary, other: Summary, *, target: float | None,
                higher_is_better: bool) -> str:
  """On how many paired seeds ``leader`` beat ``other``, with the sign test's p-value.

  Example:
    >>> a = Summary(optimizer="a", by_seed={"test_metric": [0.1, 0.2, 0.1, 0.3, 0.2]})
    >>> b = Summary(optimizer="b", by_seed={"test_metric": [0.2, 0.3, 0.2, None, 0.4]})
    >>> print(leader_edge(a, b, target=None, higher_is_better=False))
    5/5 (p 0.031)
  """
  wins, trials = paired(leader, other, target=target, higher_is_better=higher_is_better)
  return f"{wins}/{len(by_seed(leader, target=target))} (p {sign_test(wins, trials):.2g})"


def t_quantile(df: int) -> float:
  """``t_{0.95, df}``, the one-sided 95% quantile of Student's t with ``df`` degrees of freedom.

  Example:
    >>> print(t_quantile(4), t_quantile(35), t_quantile(1000))
    2.132 1.697 1.658
  """
  if df < 1:
    raise ValueError(f"`df` must be at least 1, got {df}: a paired t-test needs 2 seeds.")
  return T_95[max(k for k in T_95 if k <= df)]


def resolution(summaries: list[Summary], *, target: float | None,
               higher_is_better: bool) -> Resolution | None:
  """The smallest difference between the top two rows that their seeds resolve at p < 0.05.

  A one-sided paired t-test over the seeds on which both rows finished
  (neither diverged nor missed the target): a mean paired difference of
  ``t_{0.95, n-1} * sd / sqrt(n)`` or more, ``sd`` the standard deviation of
  the ``n`` differences, is beyond the seed noise. It says how fine a
  comparison the task's seeds support, whichever way the rows fall.

  Args:
    summaries: The task's summaries.
    target: The task's validation target, or None.
    higher_is_better: Whether a larger metric is better.

  Returns:
    The resolution, or None with fewer than two rows or 2 such seeds.

  Example:
    >>> rows = [Summary(optimizer=n, test_metric_at_best_val=v, by_seed={"test_metric": s})
    ...         for n, v, s in (("a", 2.0, [1.0, 2.0, 3.0]), ("b", 4.0, [2.0, 4.0, 6.0]))]
    >>> r = resolution(rows, target=None, higher_is_better=False)
    >>> print(r.between, r.paired_seeds, r.t, r.difference, r.mean_difference)
    ('a', 'b') 3 2.92 1.68586 2.0
  """
  options = {"target": target, "higher_is_better": higher_is_better}
  rank = ranks(summaries, **options)
  ordered = sorted(summaries, key=lambda s: rank[s.optimizer])
  if len(ordered) < 2:
    return None
  first, second = ordered[:2]
  sign = -1.0 if higher_is_better and target is None else 1.0
  differences = [sign * (b - a) for a, b in zip(
      by_seed(first, target=target), by_seed(second, target=target), strict=True)
      if a is not None and b is not None]
  n = len(differences)
  if n < 2:
    return None
  sd = statistics.stdev(differences)
  t = t_quantile(n - 1)
  return Resolution(between=(first.optimizer, second.optimizer), paired_seeds=n, t=t,
                    sd=metrics.json_number(sd),
                    difference=metrics.json_number(t * sd / math.sqrt(n)),
                    mean_difference=metrics.json_number(statistics.fmean(differences)))


def _is_split(name: str) -> bool:
  """Whether ``name`` is one of optax-split's: a preset, or wrapped in ``split_step``."""
  return name.endswith(optimizers.STEP_SPLIT) or name.partition(":")[0] in optimizers.PRESETS


def _value(summary: Summary, *, target: float | None) -> str:
  if target is not None:
    reached = summary.steps_to_target
    return "never" if reached is None else f"{reached:g} steps"
  metric = summary.test_metric_at_best_val
  return "diverged" if metric is None else f"{metric:.4g}"


def _margin(leader: float, other: float, *, higher: bool, target: float | None) -> str:
  """How far ahead the leader is, in words: ``"22% lower"``, ``"0.31% higher"``."""
  if not math.isfinite(other):
    return "the other never got there" if target is not None else "the other diverged"
  gap = 100 * abs(leader - other) / abs(other) if other else 0.0
  word = "fewer steps" if target is not None else ("higher" if higher else "lower")
  return f"{gap:.0f}% {word}" if gap >= 10 else f"{gap:.2g}% {word}"


def verdict(summaries: list[Summary], *, metric: str, target: float | None,
            higher_is_better: bool) -> str:
  """One line: who ranks first, by how much, and whether that is beyond the seed noise.

  The best of optax-split is set against the best baseline; the presets' ranks follow.

  Example:
    >>> rows = [Summary(optimizer=n, test_metric_at_best_val=v, by_seed={"test_metric": s})
    ...         for n, v, s in (("adamw_clip", 0.010, [0.010, 0.011, 0.009, 0.012, 0.010]),
    ...                         ("split_adam", 0.008, [0.008, 0.007, 0.0085, 0.008, 0.006]))]
    >>> print(verdict(rows, metric="mse", target=None, higher_is_better=False))
    Verdict: split_adam ranks first, test mse 0.008 against 0.01 for the best baseline, \
adamw_clip (20% lower), and is better on 5 of 5 paired seeds: beyond the seed noise (sign test \
p = 0.031). Presets at their defaults: split_adam #1 of 2.
  """
  options = {"target": target, "higher_is_better": higher_is_better}
  rank = ranks(summaries, **options)
  ordered = sorted(summaries, key=lambda s: rank[s.optimizer])
  ours = [s for s in ordered if _is_split(s.optimizer)]
  theirs = [s for s in ordered if not _is_split(s.optimizer)]
  what = f"steps to validation {metric} {target:g}" if target is not None else f"test {metric}"
  if not ours or not theirs:
    best = ordered[0]
    return f"Verdict: {best.optimizer} ranks first: {what} {_value(best, target=target)}."
  ours_first = rank[ours[0].optimizer] <= rank[theirs[0].optimizer]
  leader, other = (ours[0], theirs[0]) if ours_first else (theirs[0], ours[0])
  if math.isinf(score(leader, **options)):
    ending = "reached the target" if target is not None else "kept a finite loss on any seed"
    return f"Verdict: no optimizer {ending}."
  side = "the best baseline" if ours_first else "the best of optax-split"
  wins, trials = paired(leader, other, **options)
  p = sign_test(wins, trials)
  seeds = len(by_seed(leader, target=target))
  if score(leader, **options) == score(other, **options):
    line = (f"Verdict: a tie at the top, {what} {_value(leader, target=target)} for "
            f"{leader.optimizer} and for {side}, {other.optimizer}; "
            f"{leader.optimizer} is better on {wins} and worse on {trials - wins} of "
            f"{seeds} paired seeds.")
    return line + _presets_clause(ordered, rank)
  margin = _margin(abs(score(leader, **options)), abs(score(other, **options)),
                   higher=higher_is_better, target=target)
  beyond = p < SIGNIFICANCE
  line = (f"Verdict: {leader.optimizer} ranks first, {what} {_value(leader, target=target)} "
          f"against {_value(other, target=target)} for {side}, {other.optimizer} "
          f"({margin}), {'and' if beyond else 'but'} is better on {wins} of {seeds} paired "
          f"seeds: {'beyond' if beyond else 'within'} the seed noise (sign test p = {p:.2g}).")
  return line + _presets_clause(ordered, rank)


def _presets_clause(ordered: list[Summary], rank: dict[str, float]) -> str:
  """`` Presets at their defaults: split_adam #5, split_sgd #7 of 7.`` (empty without one)."""
  presets = [s for s in ordered if s.optimizer in optimizers.PRESETS]
  if not presets:
    return ""
  return " Presets at their defaults: " + ", ".join(
      f"{s.optimizer} #{rank[s.optimizer]:g}" for s in presets) + f" of {len(ordered)}."
