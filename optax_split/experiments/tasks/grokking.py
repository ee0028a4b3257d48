"""Grokking: modular arithmetic, p = 97, half of all pairs for training.

As in Grokfast's algorithmic task, the network fits the training pairs long
before it generalises to the held-out ones; the report gives the steps each
optimizer needs to reach 95% validation accuracy. The model is a small MLP on
learned embeddings (the paper uses a two-layer transformer), so that runs fit
a CPU; the weight decay is AdamW's usual ingredient for grokking.
"""

import flax.linen as nn
import jax
import numpy as np

from optax_split.experiments.tasks import _classify
from optax_split.experiments.tasks.base import Task


class PairMLP(nn.Module):
  """Embeds both operands, concatenates them, one ReLU layer, logits over ``p``."""

  p: int
  embed: int
  hidden: int

  @nn.compact
  def __call__(self, pairs: jax.Array) -> jax.Array:
    x = nn.Embed(self.p, self.embed)(pairs).reshape(pairs.shape[0], -1)
    return nn.Dense(self.p)(nn.relu(nn.Dense(self.hidden)(x)))


def pairs_and_labels(p: int, operation: str) -> tuple[np.ndarray, np.ndarray]:
  """All ``(a, b)`` with ``0 <= a, b < p`` and ``(a + b) % p`` or ``(a * b) % p``.

  Example:
    >>> x, y = pairs_and_labels(5, "mul")
    >>> print(x.shape, x[7], y[7])
    (25, 2) [1 2] 2
  """
  ops = {"add": np.add, "mul": np.multiply}
  if operation not in ops:
    raise ValueError(f"`operation` must be 'add' or 'mul', got {operation!r}.")
  a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
  x = np.stack([a.ravel(), b.ravel()], axis=1).astype(np.int32)
  return x, (ops[operation](x[:, 0], x[:, 1]) % p).astype(np.int32)


def grokking(p: int = 97, operation: str = "mul", hidden: int = 128,
             batch_size: int = 256) -> Task:
  """Modular ``operation`` mod ``p``: 50% train, 25% validation, 25% test.

  Example:
    >>> import jax
    >>> task = grokking(p=7, hidden=8, batch_size=4)
    >>> params = task.init(jax.random.PRNGKey(0))
    >>> print(task.loss(params, task.sample(task.data, jax.random.PRNGKey(1))).shape)
    ()
  """
  x, y = pairs_and_labels(p, operation)
  model = PairMLP(p=p, embed=128, hidden=hidden)
  train, val, test = _classify.split_indices(len(y), (0.5, 0.25))
  data = _classify.splits(x, y, (train, val, test))
  loss, evaluate = _classify.loss_and_evaluate(model)

  return Task(
      name="grokking",
      data=data,
      init=lambda key: model.init(key, x[:1]),
      sample=lambda data, key: _classify.sample(data, key, batch_size),
      loss=loss,
      evaluate=evaluate,
      metric="accuracy",
      higher_is_better=True,
      divergence_bound=10 * float(np.log(p)),
      rates=(0.01, 0.1),
      adaptive_rates=(0.001,),
      steps=4000,
      eval_every=50,
      weight_decay=1.0,
      target=0.95,
      settings={"p": p, "operation": operation, "hidden": hidden, "batch_size": batch_size,
                "weight_decay": 1.0, "train/val/test": f"{len(train)}/{len(val)}/{len(test)}"},
  )
