"""Grokking: modular arithmetic, p = 97, half of all pairs for training.

The default is Grokfast's own regime (ironjr/grokfast ``main.py``): a 2-layer
causal transformer (width 128, 4 heads, PyTorch's N(0, 1) token embeddings)
reads the tokens ``x op y =`` and predicts ``x * y mod p`` at the last
position, for ``0 <= x < p`` and ``1 <= y < p``; batch 512, Adam with betas
(0.9, 0.98), a 10-step linear warm-up of the rate, no weight decay. The network
fits the training pairs long before it generalises to the held-out ones; the
report gives the steps each optimizer needs to reach 95% validation accuracy.
The initialisation decides the regime: with small embeddings it groks within a
few thousand steps whatever the optimizer, and there is nothing to speed up.

``model="mlp"`` keeps the earlier small MLP on learned embeddings (all pairs,
AdamW's weight decay 1.0), which fits a CPU more easily.
"""

import flax.linen as nn
import jax
import numpy as np
import optax

from optax_split.experiments.tasks import _classify
from optax_split.experiments.tasks._transformer import CausalTransformer
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


def pairs_and_labels(p: int, operation: str, *, y_from: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """All ``(x, y)`` with ``0 <= x < p``, ``y_from <= y < p`` and ``(x + y) % p`` or ``(x * y) % p``.

  Example:
    >>> x, y = pairs_and_labels(5, "mul")
    >>> print(x.shape, x[7], y[7])
    (25, 2) [1 2] 2
    >>> print(pairs_and_labels(5, "mul", y_from=1)[0].shape)
    (20, 2)
  """
  ops = {"add": np.add, "mul": np.multiply}
  if operation not in ops:
    raise ValueError(f"`operation` must be 'add' or 'mul', got {operation!r}.")
  a, b = np.meshgrid(np.arange(p), np.arange(y_from, p), indexing="ij")
  x = np.stack([a.ravel(), b.ravel()], axis=1).astype(np.int32)
  return x, (ops[operation](x[:, 0], x[:, 1]) % p).astype(np.int32)


def equation_tokens(pairs: np.ndarray, p: int) -> np.ndarray:
  """``(x, y)`` pairs as the token sequences ``x op y =`` (op is ``p + 1``, ``=`` is ``p``).

  Example:
    >>> print(equation_tokens(np.array([[3, 4]]), 7))
    [[3 8 4 7]]
  """
  n = len(pairs)
  return np.stack([pairs[:, 0], np.full(n, p + 1), pairs[:, 1], np.full(n, p)],
                  axis=1).astype(np.int32)


class LastToken(nn.Module):
  """The transformer's logits at the last position (after ``=``)."""

  transformer: CausalTransformer

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    return self.transformer(tokens)[:, -1]


def grokking(p: int = 97, operation: str = "mul", model: str = "transformer",
             hidden: int = 128, batch_size: int = 512, depth: int = 2, heads: int = 4,
             weight_decay: float | None = None) -> Task:
  """Modular ``operation`` mod ``p``: 50% train, 25% validation, 25% test.

  Args:
    p: The modulus.
    operation: ``"mul"`` or ``"add"``.
    model: ``"transformer"`` (Grokfast's regime) or ``"mlp"``.
    hidden: The transformer's width, or the MLP's hidden units.
    batch_size: Pairs per step.
    depth: Transformer blocks.
    heads: Attention heads.
    weight_decay: Decoupled weight decay given to every optimizer; default 0
      for the transformer (the reference baseline's) and 1.0 for the MLP.

  Example:
    >>> import jax
    >>> task = grokking(p=7, hidden=8, heads=2, batch_size=4)
    >>> params = task.init(jax.random.PRNGKey(0))
    >>> print(task.loss(params, task.sample(task.data, jax.random.PRNGKey(1))).shape)
    ()
  """
  if model not in ("transformer", "mlp"):
    raise ValueError(f"`model` must be 'transformer' or 'mlp', got {model!r}.")
  transformer = model == "transformer"
  pairs, y = pairs_and_labels(p, operation, y_from=1 if transformer else 0)
  if transformer:
    x = equation_tokens(pairs, p)
    net = LastToken(CausalTransformer(vocab=p + 2, outputs=p + 2, max_length=4, width=hidden,
                                      depth=depth, heads=heads, embed_std=1.0))
    decay = 0.0 if weight_decay is None else weight_decay
  else:
    x = pairs
    net = PairMLP(p=p, embed=128, hidden=hidden)
    decay = 1.0 if weight_decay is None else weight_decay
  train, val, test = _classify.split_indices(len(y), (0.5, 0.25))
  data = _classify.splits(x, y, (train, val, test))
  loss, evaluate = _classify.loss_and_evaluate(net)
  settings = {"model": model, "p": p, "operation": operation, "hidden": hidden,
              "batch_size": batch_size, "weight_decay": decay,
              "train/val/test": f"{len(train)}/{len(val)}/{len(test)}"}
  if transformer:
    settings.update(depth=depth, heads=heads, adam_betas="(0.9, 0.98)", warmup="10 steps")

  return Task(
      name="grokking",
      data=data,
      init=lambda key: net.init(key, x[:1]),
      sample=lambda data, key: _classify.sample(data, key, batch_size),
      loss=loss,
      evaluate=evaluate,
      metric="accuracy",
      higher_is_better=True,
      divergence_bound=10 * float(np.log(p)),
      rates=(0.01, 0.1),
      adaptive_rates=(0.001,),
      steps=3000 if transformer else 4000,
      eval_every=50,
      weight_decay=decay,
      adam_b2=0.98 if transformer else 0.999,
      schedule=(lambda steps: optax.linear_schedule(0.0, 1.0, 10)) if transformer else None,
      target=0.95,
      settings=settings,
  )
