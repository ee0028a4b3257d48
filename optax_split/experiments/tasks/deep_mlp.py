"""A deep, unnormalised ReLU MLP on scikit-learn's digits, at high learning rates.

No normalisation layers and He-initialised weights: the signal keeps its scale
on average, but its spread grows with depth, and large steps blow it up.
"""

import flax.linen as nn
import jax
import numpy as np

from optax_split.experiments.tasks import _classify
from optax_split.experiments.tasks.base import Task


class DeepMLP(nn.Module):
  """``depth`` ReLU layers of ``width`` units and a linear read-out."""

  depth: int
  width: int
  classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for _ in range(self.depth):
      x = nn.relu(nn.Dense(self.width, kernel_init=nn.initializers.he_normal())(x))
    return nn.Dense(self.classes)(x)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 1,797 8x8 digits, pixels scaled to ``[0, 1]``."""
  from sklearn.datasets import load_digits as sklearn_digits  # Only needed here.

  digits = sklearn_digits()
  return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)


def deep_mlp(depth: int = 16, width: int = 64, batch_size: int = 64) -> Task:
  """Digits on a ``depth``-layer MLP; 60/20/20 train/validation/test split.

  Example:
    >>> import jax
    >>> task = deep_mlp(depth=2, width=8)
    >>> params = task.init(jax.random.PRNGKey(0))
    >>> val, test = task.evaluate(params, task.data)
    >>> print(task.metric, val.shape, task.settings["depth"])
    accuracy () 2
  """
  x, y = load_digits()
  model = DeepMLP(depth=depth, width=width, classes=10)
  train, val, test = _classify.split_indices(len(y), (0.6, 0.2))
  data = _classify.splits(x, y, (train, val, test))
  loss, evaluate = _classify.loss_and_evaluate(model)

  return Task(
      name="deep_mlp",
      data=data,
      init=lambda key: model.init(key, x[:1]),
      sample=lambda data, key: _classify.sample(data, key, batch_size),
      loss=loss,
      evaluate=evaluate,
      metric="accuracy",
      higher_is_better=True,
      divergence_bound=10 * float(np.log(10)),
      rates=(0.01, 0.03, 0.1, 0.3),
      adaptive_rates=(0.0003, 0.001, 0.003, 0.01),
      steps=1000,
      eval_every=100,
      settings={"depth": depth, "width": width, "batch_size": batch_size,
                "train/val/test": f"{len(train)}/{len(val)}/{len(test)}"},
  )
