"""Two CIFAR-10 classes on a small CNN: the binary classification example.

Reads the Python version of CIFAR-10 (the ``cifar-10-batches-py`` folder of
pickled batches) from ``data_dir`` or ``$CIFAR10_DIR``; nothing is downloaded.
"""

import os
import pickle
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optax_split.experiments.tasks import _classify
from optax_split.experiments.tasks.base import Task

ENV_VAR = "CIFAR10_DIR"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
               "ship", "truck")
_HOW_TO_GET = (
    "Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extract it "
    "(tar xzf cifar-10-python.tar.gz makes cifar-10-batches-py/) and pass "
    f"--data-dir PATH/cifar-10-batches-py or set {ENV_VAR}=PATH/cifar-10-batches-py."
)


def find_folder(data_dir: str | os.PathLike | None) -> Path:
  """The ``cifar-10-batches-py`` folder: ``data_dir``, its child of that name, or the
  environment variable's; a FileNotFoundError that says how to get it otherwise."""
  given = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
  if given is None:
    raise FileNotFoundError(f"cifar2 needs CIFAR-10 and no folder was given. {_HOW_TO_GET}")
  for folder in (Path(given), Path(given) / "cifar-10-batches-py"):
    if (folder / "test_batch").is_file() and any(folder.glob("data_batch_*")):
      return folder
  raise FileNotFoundError(
      f"No CIFAR-10 batches (data_batch_1..5, test_batch) in {given}. {_HOW_TO_GET}")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
  with open(path, "rb") as f:
    batch = pickle.load(f, encoding="bytes")
  images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, np.asarray(batch[b"labels"], np.int32)


def load_pair(folder: Path, classes: tuple[int, int]) -> dict[str, tuple[np.ndarray, ...]]:
  """Train and test images (uint8, NHWC) of two classes, labels 0 and 1."""
  def select(parts):
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    keep = np.isin(labels, classes)
    return images[keep], (labels[keep] == classes[1]).astype(np.int32)

  train_files = sorted(folder.glob("data_batch_*"))
  return {"train": select([_read_batch(f) for f in train_files]),
          "test": select([_read_batch(folder / "test_batch")])}


class SmallCNN(nn.Module):
  """Two conv-ReLU-pool stages, one hidden dense layer, two logits; no normalisation."""

  width: int

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = images.astype(jnp.float32) / 255.0 - 0.5
    for features in (self.width, 2 * self.width):
      x = nn.relu(nn.Conv(features, (3, 3))(x))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
    return nn.Dense(2)(x)


def cifar2(
    data_dir: str | None = None,
    classes: tuple[int, int] = (3, 5),
    width: int = 16,
    batch_size: int = 64,
    max_train: int = 4000,
    eval_size: int = 1000,
) -> Task:
  """CIFAR-10 ``classes[0]`` (label 0) against ``classes[1]`` (label 1).

  The training files give train (80%) and validation (20%) images, at most
  ``max_train`` and ``eval_size`` of them; the test batch gives the test set
  (at most ``eval_size``).
  """
  if len(classes) != 2 or classes[0] == classes[1] or not all(0 <= c < 10 for c in classes):
    raise ValueError(f"`classes` must be two different CIFAR-10 classes in 0..9, got "
                     f"{classes!r}. E.g. --classes 3 5 (cat, dog).")
  pair = load_pair(find_folder(data_dir), tuple(classes))
  images, labels = pair["train"]
  train, val, _ = _classify.split_indices(len(labels), (0.8, 0.2))
  train, val = train[:max_train], val[:eval_size]
  test_images, test_labels = pair["test"]
  data = {"train": (images[train], labels[train]), "val": (images[val], labels[val]),
          "test": (test_images[:eval_size], test_labels[:eval_size])}
  data = jax.tree.map(jnp.asarray, data)
  model = SmallCNN(width=width)
  loss, evaluate = _classify.loss_and_evaluate(model)

  return Task(
      name="cifar2",
      data=data,
      init=lambda key: model.init(key, data["train"][0][:1]),
      sample=lambda data, key: _classify.sample(data, key, batch_size),
      loss=loss,
      evaluate=evaluate,
      metric="accuracy",
      higher_is_better=True,
      divergence_bound=10 * float(np.log(2)),
      rates=(0.01, 0.03, 0.1, 0.3),
      adaptive_rates=(0.0003, 0.001, 0.003, 0.01),
      steps=1000,
      eval_every=100,
      settings={"classes": f"{CLASS_NAMES[classes[0]]} vs {CLASS_NAMES[classes[1]]}",
                "width": width, "batch_size": batch_size,
                "train/val/test": f"{len(train)}/{len(val)}/{len(data['test'][1])}"},
  )
