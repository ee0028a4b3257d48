"""Each task builds, trains a few steps at tiny sizes and reports sane metrics."""

import pickle

import chex
import numpy as np
import pytest

from optax_split.experiments import optimizers, runner, tasks
from optax_split.experiments.tasks import cifar2, lm
from optax_split.experiments.tasks.adding import make_sequences

# adding trains in test_experiments_runner.py; cifar2 below, from a generated folder.
TINY = {
    "deep_mlp": {"depth": 3, "width": 8, "batch_size": 8},
    "grokking": {"p": 7, "hidden": 8, "heads": 2, "batch_size": 8},
    "grokking-mlp": {"p": 7, "hidden": 8, "batch_size": 8, "model": "mlp"},
    "lm": {"context": 8, "width": 8, "depth": 1, "heads": 2, "batch_size": 2,
           "max_bytes": 20_000, "eval_windows": 4},
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
  task = tasks.make(name.partition("-")[0], **TINY[name])
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


def _sources(folder, count):
  folder.mkdir(parents=True, exist_ok=True)
  for i in range(count):
    (folder / f"m{i:02d}.py").write_text(f"# module {i}\nx = {i}\n" * 20)
  return folder


def test_lm_corpus_is_split_by_file_in_path_order(tmp_path):
  root = _sources(tmp_path / "lib", 20)
  (tmp_path / "lib" / "site-packages").mkdir()
  (tmp_path / "lib" / "site-packages" / "third_party.py").write_text("never = 1\n")
  corpus = lm.read_corpus(root, max_bytes=10_000)
  text = {k: bytes(v).decode() for k, v in corpus.items()}
  assert "module 8\n" in text["val"] and "module 18\n" in text["val"]
  assert "module 9\n" in text["test"] and "module 19\n" in text["test"]
  assert "module 8\n" not in text["train"] and "module 7\n" in text["train"]
  assert all("never" not in t for t in text.values())
  assert len(lm.read_corpus(root, max_bytes=100)["train"]) == 100


def test_lm_trains_on_a_given_folder_and_reports_bits_per_byte(tmp_path):
  task = tasks.make("lm", corpus_dir=str(_sources(tmp_path, 30)), context=8, width=8,
                    depth=1, heads=2, batch_size=2, eval_windows=4)
  runs = runner.train(task, optimizers.get("adam"), (3e-3,), seeds=1, steps=4)
  # An untrained model predicts bytes about uniformly: close to 8 bits each.
  assert 7.0 < float(runs.init_val[0, 0]) < 9.0
  assert task.metric == "bits/byte" and np.isfinite(runs.val).all()
  # Warm-up then cosine decay of the rate.
  schedule = task.schedule(100)
  assert float(schedule(0)) == 0.0 and float(schedule(10)) == 1.0 and float(schedule(100)) < 1e-6


def test_lm_without_sources_says_what_to_install(tmp_path):
  with pytest.raises(FileNotFoundError, match="No .py sources.*corpus_dir"):
    tasks.make("lm", corpus_dir=str(tmp_path))


def test_grokking_reads_equations_in_grokfasts_regime():
  task = tasks.make("grokking", p=7, hidden=8, heads=2, batch_size=8)
  x, y = task.data["train"]
  chex.assert_shape(x, (None, 4))
  np.testing.assert_array_equal(x[:, 1], 8)  # op
  np.testing.assert_array_equal(x[:, 3], 7)  # =
  np.testing.assert_array_equal(y, (x[:, 0] * x[:, 2]) % 7)
  assert (x[:, 2] >= 1).all() and task.adam_b2 == 0.98 and task.weight_decay == 0.0
  assert float(task.schedule(1000)(5)) == 0.5 and float(task.schedule(1000)(50)) == 1.0
  n = sum(len(task.data[s][1]) for s in ("train", "val", "test"))
  assert n == 7 * 6 and len(y) == n // 2
