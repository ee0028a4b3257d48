"""The typed records of the results: JSON both ways, and files of earlier versions."""

import dataclasses

from optax_split.experiments import optimizers, results, runner, tasks
from optax_split.experiments.results import SuiteStats, Summary, TaskRecord


def _tiny():
  task = tasks.make("adding", length=4, hidden=3, batch_size=4, eval_size=4)
  runs = runner.train(task, optimizers.get("split_sgd:alpha=-1/0"), (0.01, 1e4), seeds=2,
                      steps=4)
  return task, runs


def test_summary_reads_back_what_it_writes_and_alpha_slices_are_named():
  task, runs = _tiny()
  summaries = results.summarize_all(task, runs)
  assert [s.optimizer for s in summaries] == ["split_sgd", "split_sgd:alpha=0"]
  for s in summaries:
    data = s.to_json()
    assert "steps_to_target" not in data  # The task has no target.
    assert list(data)[:10] == ["optimizer", "description", "best", "diverged_seeds_at_best",
                               "seeds", "diverged_runs", "runs", "final_train_loss",
                               "test_metric_at_best_val", "by_seed"]
    assert Summary.from_json(data, higher_is_better=task.higher_is_better) == s
    assert s.best["rate"] in (0.01, 1e4) and "alpha" not in s.best


def test_a_summary_without_per_seed_numbers_reads_them_from_its_best_grid_point():
  # results.json files written before 0.3.0.
  grid = [{"rate": 0.1, "test_metric_at_best_val": [0.3, None]},
          {"rate": 1.0, "test_metric_at_best_val": [0.2, 0.4], "steps_to_target": [5.0, None]}]
  old = {"optimizer": "sgd", "best": {"rate": 1.0}, "grid": grid, "ignored": 1}
  got = Summary.from_json(old, higher_is_better=False)
  assert got.by_seed == {"test_metric": [0.2, 0.4], "steps_to_target": [5.0, None]}


def test_task_record_keeps_no_grid_or_curves_and_reads_back():
  task, runs = _tiny()
  summaries = results.summarize_all(task, runs)
  settings = results.Settings(4, 2, (0.01, 1e4), (0.001,))
  record = TaskRecord.of(task, summaries, settings, "optax-split suite", None)
  data = record.to_json()
  assert all("grid" not in s and "curves" not in s for s in data["optimizers"])
  assert set(data["sensitivity"]) == {"split_sgd", "split_sgd:alpha=0"}
  again = TaskRecord.from_json(data)
  assert again.optimizers == [dataclasses.replace(s, grid=None, curves=None) for s in summaries]


def test_suite_stats_round_trip():
  stats = SuiteStats(rates=[0.1], final_val_by_rate=[None], init_val=2.0, spikes_at_best=0.0,
                     spikes_grid=3)
  assert SuiteStats.from_json(stats.to_json()) == stats


def test_an_earlier_record_reads_with_todays_sensitivity():
  stats = {"rates": [0.1, 1.0], "final_val_by_rate": [2.5, None], "init_val": 8.0,
           "spikes_at_best": 0.0, "spikes_grid": 0}
  data = {"task": "adding", "command": "c", "metric": "mse", "higher_is_better": False,
          "target": None, "settings": {}, "task_settings": {}, "sensitivity": {"sgd": 99.0},
          "optimizers": [{"optimizer": "sgd", "by_seed": {"test_metric": [2.5]}, "suite": stats}]}
  record = TaskRecord.from_json(data)
  assert record.sensitivity == {"sgd": (0.0 + 5.5) / 2}  # Against its own best, 2.5.
  assert record.to_json()["sensitivity"] == {"sgd": 2.75}
