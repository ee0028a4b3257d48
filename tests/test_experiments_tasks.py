"""Each task builds, trains a few steps at tiny sizes and reports sane metrics."""

import pickle

import chex
import numpy as np
import pytest

from optax_split.experiments import optimizers, runner, tasks
from optax_split.experiments.tasks import cifar2
from optax_split.experiments.tasks.adding import make_sequences

# adding trains in test_experiments_runner.py; cifar2 below, from a generated folder.
TINY = {
    "deep_mlp": {"depth": 3, "width": 8, "batch_size": 8},
    "grokking": {"p": 7, "hidden": 8, "batch_size": 8},
}


def write_tiny_cifar(folder, per_batch=12, seed=0):
  """A ``cifar-10-batches-py`` folder in the real pickle format, random pixels."""
  rng = np.random.RandomState(seed)
  folder.mkdir(parents=True, exist_ok=True)
  for name in ("data_batch_1", "data_batch_2", "test_batch"):
    batch = {b"data": rng.randint(0, 256, (per_batch, 3072)).astype(np.uint8),
             b"labels": [int(v) for v in rng.randint(0, 10, per_batch)]}
    batch[b"labels"][:4] = [3, 5, 3, 5]  # Both default classes appear in every file.
    with open(folder / name, "wb") as f:
      pickle.dump(batch, f)
  return folder


@pytest.mark.parametrize("name", sorted(TINY))
def test_task_trains_a_few_steps(name):
  task = tasks.make(name, **TINY[name])
  runs = runner.train(task, optimizers.get("sgd"), (0.01,), seeds=2, steps=3)
  chex.assert_shape([runs.loss, runs.grad_norm], (1, 2, 3))
  chex.assert_shape([runs.val, runs.test], (1, 2, 1))
  assert np.isfinite(runs.loss).all() and (runs.grad_norm > 0).all()
  if task.metric == "accuracy":
    assert ((runs.val >= 0) & (runs.val <= 1)).all()


def test_adding_sequences_have_two_markers_and_their_sum():
  x, y = make_sequences(np.array([0, 7], np.uint32), 16, 10)
  markers = np.asarray(x[..., 1])
  np.testing.assert_array_equal(markers.sum(axis=1), 2)
  assert (markers[:, :5].sum(axis=1) == 1).all()  # One in each half.
  chex.assert_trees_all_close(y, (x[..., 0] * x[..., 1]).sum(axis=1))


def test_cifar2_reads_the_pickle_format(tmp_path):
  write_tiny_cifar(tmp_path / "cifar-10-batches-py")
  # The parent folder works too.
  task = tasks.make("cifar2", data_dir=str(tmp_path), width=2, batch_size=4)
  images, labels = task.data["train"]
  chex.assert_shape(images, (None, 32, 32, 3))
  chex.assert_type(images, np.uint8)
  assert set(np.asarray(labels).tolist()) <= {0, 1}
  runs = runner.train(task, optimizers.get("adam"), (0.001,), seeds=1, steps=2)
  assert np.isfinite(runs.loss).all()


def test_cifar2_without_data_says_how_to_get_it(tmp_path, monkeypatch):
  monkeypatch.delenv(cifar2.ENV_VAR, raising=False)
  with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz.*--data-dir"):
    tasks.make("cifar2")
  with pytest.raises(FileNotFoundError, match=f"No CIFAR-10 batches .*{cifar2.ENV_VAR}"):
    tasks.make("cifar2", data_dir=str(tmp_path))


def test_cifar2_rejects_bad_classes(tmp_path):
  write_tiny_cifar(tmp_path)
  with pytest.raises(ValueError, match="`classes`.*--classes 3 5"):
    tasks.make("cifar2", data_dir=str(tmp_path), classes=(3, 3))


def test_unknown_task_lists_the_tasks():
  with pytest.raises(ValueError, match="Choose from adding"):
    tasks.make("mnist")
