"""The runner: vmapped seeds and grid, divergence detection, diagnostics."""

import chex
import numpy as np
import pytest

from optax_split.experiments import metrics, optimizers, results, runner, tasks


@pytest.fixture(scope="module")
def task():
  return tasks.make("adding", length=5, hidden=4, batch_size=4, eval_size=8)


@pytest.fixture(scope="module")
def sgd_runs(task):
  """Plain SGD at a sane and a huge rate, 3 seeds: one compiled program."""
  return runner.train(task, optimizers.get("sgd"), (0.01, 1e4), seeds=3, steps=20)


def test_one_program_covers_grid_and_seeds(sgd_runs):
  assert sgd_runs.configs == [{"rate": 0.01}, {"rate": 1e4}]
  chex.assert_shape([sgd_runs.loss, sgd_runs.grad_norm, sgd_runs.global_share], (2, 3, 20))
  chex.assert_shape([sgd_runs.val, sgd_runs.test], (2, 3, 1))
  np.testing.assert_array_equal(sgd_runs.eval_steps, [20])
  # Seeds differ; grid points share each seed's data and init (paired runs).
  assert not np.allclose(sgd_runs.loss[0, 0], sgd_runs.loss[0, 1])
  np.testing.assert_array_equal(sgd_runs.loss[0, :, 0], sgd_runs.loss[1, :, 0])


def test_huge_rate_diverges_and_is_reported(task, sgd_runs):
  np.testing.assert_array_equal(metrics.diverged(task, sgd_runs.loss), [[False] * 3, [True] * 3])
  summary = results.summarize(task, sgd_runs)
  assert summary.best == {"rate": 0.01}
  assert summary.diverged_runs == 3 and summary.runs == 6
  assert summary.diverged_seeds_at_best == 0
  assert summary.grid[1]["final_train_loss"] == [None] * 3
  assert summary.final_train_loss < task.divergence_bound
  assert summary.suite.rates == [0.01, 1e4] and summary.suite.final_val_by_rate[1] is None


def test_grid_is_the_product_of_rates_and_hyperparameters():
  configs = optimizers.get("sgd_clip:max_norm=0.5/2").configs((0.01, 0.1))
  assert configs == [{"rate": 0.01, "max_norm": 0.5}, {"rate": 0.01, "max_norm": 2.0},
                     {"rate": 0.1, "max_norm": 0.5}, {"rate": 0.1, "max_norm": 2.0}]


def test_split_presets_log_the_global_share(task, sgd_runs):
  runs = runner.train(task, optimizers.get("split_sgd"), (0.01,), seeds=2, steps=4)
  # ||G||^2 / ||g||^2: the trend may be longer than a shrinking gradient, so no bound of 1.
  assert (np.isfinite(runs.global_share) & (runs.global_share >= 0)).all()
  assert runs.global_share[..., 1:].max() > 0  # The trend differs from the gradient.
  assert np.isnan(sgd_runs.global_share).all()  # Plain SGD does not split.


@pytest.mark.parametrize("steps, every, expected", [(4000, 200, 200), (20, 200, 20), (7, 3, 1)])
def test_eval_interval_divides_the_steps(steps, every, expected):
  assert runner.eval_interval(steps, every) == expected


@pytest.mark.parametrize("bad", [{"seeds": 0}, {"steps": 0}])
def test_bad_sizes_name_the_argument(task, bad):
  args = {"seeds": 1, "steps": 2, **bad}
  with pytest.raises(ValueError, match=f"`{next(iter(bad))}` must be at least 1"):
    runner.train(task, optimizers.get("sgd"), (0.01,), **args)
