"""Ranks, the spread over seeds and the verdict line, from hand-made summaries."""

import math
import statistics

import pytest

from optax_split.experiments import verdict
from optax_split.experiments.results import Summary


def _row(name, by_seed, *, target=None):
  """A summary as results.summarize makes it: the median of the finite seeds, and the seeds."""
  finite = [v for v in by_seed if v is not None]
  median = statistics.median(finite) if finite else None
  if target is None:
    return Summary(optimizer=name, test_metric_at_best_val=median,
                   by_seed={"test_metric": by_seed})
  return Summary(optimizer=name, test_metric_at_best_val=median, steps_to_target=median,
                 by_seed={"test_metric": by_seed, "steps_to_target": by_seed})


LOWER = {"metric": "mse", "target": None, "higher_is_better": False}


@pytest.mark.parametrize("wins, trials, expected", [
    (5, 5, 1 / 32), (4, 5, 6 / 32), (0, 5, 1.0), (0, 0, 1.0), (3, 4, 5 / 16)])
def test_sign_test_is_the_binomial_tail(wins, trials, expected):
  assert verdict.sign_test(wins, trials) == pytest.approx(expected)


def test_paired_counts_a_diverged_seed_as_worst_and_skips_ties():
  a = _row("a", [0.1, None, 0.3, None])
  b = _row("b", [0.2, 0.5, 0.3, None])
  assert verdict.paired(a, b, target=None, higher_is_better=False) == (1, 2)
  assert verdict.paired(b, a, target=None, higher_is_better=False) == (1, 2)
  # For accuracy, higher wins; a diverged seed is still the worst.
  assert verdict.paired(a, b, target=None, higher_is_better=True) == (0, 2)


def test_paired_counts_never_reaching_the_target_as_worst():
  a = _row("a", [100.0, 300.0, None], target=0.95)
  b = _row("b", [200.0, None, None], target=0.95)
  assert verdict.paired(a, b, target=0.95, higher_is_better=True) == (2, 2)


def test_verdict_beyond_the_noise_when_the_winner_wins_every_seed():
  rows = [_row("adamw_clip", [0.010, 0.011, 0.009, 0.012, 0.010]),
          _row("muon+split", [0.008, 0.007, 0.0085, 0.008, 0.006]),
          _row("split_sgd", [0.02] * 5)]
  line = verdict.verdict(rows, **LOWER)
  assert line.startswith("Verdict: muon+split ranks first, test mse 0.008 against 0.01 for the "
                         "best baseline, adamw_clip (20% lower), and is better on 5 of 5")
  assert "beyond the seed noise (sign test p = 0.031)" in line
  assert line.endswith("Presets at their defaults: split_sgd #3 of 3.")


def test_verdict_within_the_noise_names_the_best_of_optax_split_when_a_baseline_wins():
  rows = [_row("muon", [0.0036, 0.0032, 0.008, 0.0031, 0.0040]),
          _row("muon+split", [0.0038, 0.0031, 0.0106, 0.0030, 0.0041]),
          _row("split_adam", [0.015] * 5)]
  line = verdict.verdict(rows, **LOWER)
  assert line.startswith("Verdict: muon ranks first, test mse 0.0036 against 0.0038 for the best "
                         "of optax-split, muon+split (5.3% lower), but is better on 3 of 5")
  assert "within the seed noise (sign test p = 0.5)" in line
  assert "split_adam #3" in line


def test_verdict_on_steps_to_target_and_on_one_side_only():
  rows = [_row("adam", [500.0, 700.0, 600.0], target=0.95),
          _row("split_adam", [400.0, 400.0, None], target=0.95)]
  line = verdict.verdict(rows, metric="accuracy", target=0.95, higher_is_better=True)
  assert "split_adam ranks first, steps to validation accuracy 0.95 400 steps against 600 steps" \
      in line and "(33% fewer steps)" in line and "better on 2 of 3" in line
  only = verdict.verdict(rows[:1], metric="accuracy", target=0.95, higher_is_better=True)
  assert only == "Verdict: adam ranks first: steps to validation accuracy 0.95 600 steps."


def test_verdict_when_everything_diverged():
  rows = [_row("adamw_clip", [None, None]), _row("split_adam", [None, None])]
  assert verdict.verdict(rows, **LOWER) == "Verdict: no optimizer kept a finite loss on any seed."


def test_ranks_and_spread_from_the_seeds():
  rows = [_row("a", [0.3, 0.1, None]), _row("b", [0.1, 0.1, 0.1])]
  assert verdict.ranks(rows, target=None, higher_is_better=False) == {"a": 2.0, "b": 1.0}
  assert verdict.spread(rows[0], target=None) == "0.1-0.3, 1 diverged"
  assert verdict.spread(_row("c", [None]), target=None) == "-, 1 diverged"
  assert math.isinf(verdict.score(_row("c", [None]), target=None, higher_is_better=False))


def test_ranks_share_ties_and_put_never_last():
  rows = [Summary(optimizer="a", steps_to_target=100.0),
          Summary(optimizer="b", steps_to_target=100.0),
          Summary(optimizer="c", steps_to_target=None)]
  assert verdict.ranks(rows, target=0.95, higher_is_better=True) == {"a": 1.5, "b": 1.5, "c": 3.0}


def test_verdict_calls_a_tie_a_tie():
  rows = [_row("adam", [500.0, 600.0], target=0.95), _row("split_adam", [500.0, 600.0],
                                                          target=0.95)]
  line = verdict.verdict(rows, metric="accuracy", target=0.95, higher_is_better=True)
  assert line.startswith("Verdict: a tie at the top, steps to validation accuracy 0.95 550 steps")
  assert "better on 0 and worse on 0 of 2 paired seeds." in line
  assert line.endswith("Presets at their defaults: split_adam #1.5 of 2.")


def test_t_quantiles_are_students_and_conservative_between_table_entries():
  assert verdict.t_quantile(1) == 6.314 and verdict.t_quantile(4) == 2.132
  assert verdict.t_quantile(45) == verdict.t_quantile(40)  # The smaller df's, the larger t.
  with pytest.raises(ValueError, match="`df` must be at least 1"):
    verdict.t_quantile(0)
  stats = pytest.importorskip("scipy.stats")
  for df, t in verdict.T_95.items():
    assert t == pytest.approx(stats.t.ppf(0.95, df), abs=6e-4)


def test_resolution_is_the_paired_t_bound_between_the_top_two_rows():
  rows = [_row("c", [3.0, 3.0, 3.0, 3.0]), _row("b", [0.3, 0.5, 0.2, 0.6]),
          _row("a", [0.1, 0.2, 0.2, 0.3])]
  got = verdict.resolution(rows, **{k: v for k, v in LOWER.items() if k != "metric"})
  differences = [0.2, 0.3, 0.0, 0.3]  # b - a: the seeds where a, the first row, is ahead.
  assert got.between == ("a", "b") and got.paired_seeds == 4 and got.t == 2.353
  assert got.sd == pytest.approx(statistics.stdev(differences), rel=1e-5)
  assert got.mean_difference == pytest.approx(0.2, rel=1e-5)
  assert got.difference == pytest.approx(2.353 * got.sd / 2, rel=1e-5)


def test_resolution_for_accuracy_and_steps_skips_seeds_that_did_not_finish():
  accuracy = [_row("a", [0.9, 0.8, None]), _row("b", [0.7, 0.7, 0.6])]
  got = verdict.resolution(accuracy, target=None, higher_is_better=True)
  assert got.between == ("a", "b") and got.paired_seeds == 2
  assert got.mean_difference == pytest.approx(0.15)  # Positive: the first row is ahead.
  steps = [_row("a", [100.0, 200.0, 300.0], target=0.95),
           _row("b", [400.0, None, 500.0], target=0.95)]
  got = verdict.resolution(steps, target=0.95, higher_is_better=True)
  assert got.paired_seeds == 2 and got.mean_difference == pytest.approx(250.0)
  assert verdict.resolution(steps[:1], target=0.95, higher_is_better=True) is None
  lone = [_row("a", [0.1, None]), _row("b", [0.2, 0.3])]
  assert verdict.resolution(lone, target=None, higher_is_better=False) is None
