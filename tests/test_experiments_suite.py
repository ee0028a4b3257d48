"""The ``optax-split suite`` command end to end in quick mode, and its measures."""

import json

import numpy as np
import pytest

from optax_split.experiments import cli, metrics


def test_quick_suite_writes_one_report_over_tasks(tmp_path, capsys):
  # Two optimizers keep the compilations few.
  argv = ["suite", "--quick", "--optimizers", "adam", "split_adam:alpha=-1/0", "--out",
          str(tmp_path), "--no-progress"]
  cli.main(argv)
  printed = capsys.readouterr().out
  assert "| optimizer | adding: test mse | lm: test bits/byte | mean rank |" in printed
  report = json.loads((tmp_path / "suite.json").read_text())
  assert [t["task"] for t in report["tasks"]] == ["adding", "lm"]
  # The alpha grid is reported per alpha; the default alpha under the plain name.
  assert set(report["mean_rank"]) == {"adam", "split_adam", "split_adam:alpha=0"}
  for task in report["tasks"]:
    assert sum(task["ranks"].values()) == 1 + 2 + 3  # tied ranks share their mean
    for s in task["optimizers"]:
      assert len(s["suite"]["final_val_by_rate"]) == len(s["suite"]["rates"])
      assert s["suite"]["spikes_grid"] >= 0
  assert (tmp_path / "lr_sensitivity.png").read_bytes()[:4] == b"\x89PNG"
  assert "minus that optimizer's own best" in printed
  # How far each grid reaches past the best rate: lm's Adam-like grid is 1e-3 and 1.0.
  assert "| top rate / best |" in printed
  assert any(line.startswith("| lm | adam | rate=0.001 | 1e+03 |")
             or line.startswith("| lm | adam | rate=1 | 1 † |") for line in printed.splitlines())
  assert "Tasks, each with its resolution" in printed and "; resolution -" in printed  # 1 seed.
  for task in report["tasks"]:
    for s in task["optimizers"]:
      assert task["sensitivity"][s["optimizer"]] == s["lr_sensitivity"]
  assert (tmp_path / "lm" / "results.json").exists() and "# Suite" in printed
  # A later run of one task joins the tasks already there, and its optimizers
  # join (or replace) those of the earlier run with the same settings.
  cli.main(["suite", "--quick", "--tasks", "adding", "--optimizers", "adam", "--out",
            str(tmp_path), "--no-progress"])
  again = json.loads((tmp_path / "suite.json").read_text())
  assert [t["task"] for t in again["tasks"]] == ["adding", "lm"]
  adding = again["tasks"][0]
  assert [s["optimizer"] for s in adding["optimizers"]] == [
      "split_adam", "split_adam:alpha=0", "adam"]
  assert adding["command"].splitlines()[-1].endswith("--optimizers adam --out "
                                                     f"{tmp_path} --no-progress")
  # --drop takes an earlier row out of the report. An earlier results.json
  # without per-seed numbers (before 0.3.0) gets them from its best grid point.
  results = tmp_path / "adding" / "results.json"
  earlier = json.loads(results.read_text())
  expected = {s["optimizer"]: s.pop("by_seed") for s in earlier["optimizers"]}
  results.write_text(json.dumps(earlier))
  cli.main(["suite", "--quick", "--tasks", "adding", "--optimizers", "adam", "--drop",
            "split_adam:alpha=0", "--out", str(tmp_path), "--no-progress"])
  dropped = json.loads((tmp_path / "suite.json").read_text())["tasks"][0]
  assert [s["optimizer"] for s in dropped["optimizers"]] == ["split_adam", "adam"]
  merged = json.loads(results.read_text())["optimizers"]
  assert merged[0]["by_seed"] == expected["split_adam"]
  # An earlier run with other settings stops the run before it trains, and
  # its rows stay: writing over them would lose them.
  earlier = json.loads(results.read_text())
  earlier["task_settings"]["length"] += 1
  results.write_text(json.dumps(earlier))
  with pytest.raises(SystemExit) as stopped:
    cli.main(["suite", "--quick", "--tasks", "lm", "adding", "--optimizers", "adam", "--out",
              str(tmp_path), "--no-progress"])
  message = str(stopped.value)
  assert f"{results} was made with other settings (length " in message and "--out" in message
  assert json.loads(results.read_text()) == earlier
  assert json.loads((tmp_path / "suite.json").read_text())["tasks"][0] == dropped


def test_sensitivity_is_the_mean_gap_to_the_optimizers_own_best_capped_at_init():
  # Lower is better; a diverged rate and one worse than init count as init (8).
  assert metrics.lr_sensitivity([3.0, 2.0, 3.0], 8.0, higher_is_better=False) == pytest.approx(
      (1.0 + 0.0 + 1.0) / 3)
  assert metrics.lr_sensitivity([2.5, None, 9.0], 8.0, higher_is_better=False) == pytest.approx(
      (0.0 + 5.5 + 5.5) / 3)
  assert metrics.lr_sensitivity([None, None], 8.0, higher_is_better=False) is None


def test_sensitivity_against_its_own_best_differs_from_the_gap_to_the_tasks_best():
  # Two optimizers on one task: "steady" reaches 2.0, "fragile" at best 2.5.
  steady, fragile, init = [3.0, 2.0, 3.0], [2.5, None, 9.0], 8.0
  task_best = min(v for v in steady + fragile if v is not None)
  old = np.mean([init - task_best if v is None else min(init, v) - task_best for v in fragile])
  new = metrics.lr_sensitivity(fragile, init, higher_is_better=False)
  assert old == pytest.approx(12.5 / 3) and new == pytest.approx(11.0 / 3)
  # The task's best mixed fragile's gap to steady's best loss (0.5) into every rate.
  assert old - new == pytest.approx(2.5 - 2.0, abs=1e-5)


def test_sensitivity_is_mirrored_where_higher_is_better():
  got = metrics.lr_sensitivity([0.9, 0.5, None], 0.6, higher_is_better=True)
  assert got == pytest.approx((0.0 + 0.3 + 0.3) / 3)


def test_spikes_are_counted_against_the_running_median():
  rng = np.random.default_rng(0)
  loss = 2.0 + 0.05 * rng.standard_normal((2, 200))
  loss[1, [50, 120, 121]] = 4.0
  np.testing.assert_array_equal(metrics.spike_counts(loss), [0, 3])
