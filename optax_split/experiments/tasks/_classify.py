"""Shared pieces of the classification tasks: splits, batches, loss, accuracy."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def split_indices(n: int, fractions: tuple[float, float], seed: int = 0) -> tuple[np.ndarray, ...]:
  """A fixed random split of ``range(n)`` into train, validation and test indices.

  Example:
    >>> train, val, test = split_indices(10, (0.6, 0.2))
    >>> print(len(train), len(val), len(test), sorted([*train, *val, *test]) == list(range(10)))
    6 2 2 True
  """
  order = np.random.RandomState(seed).permutation(n)
  n_train, n_val = int(round(fractions[0] * n)), int(round(fractions[1] * n))
  return order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]


def splits(x: np.ndarray, y: np.ndarray, indices: tuple[np.ndarray, ...]) -> dict:
  """``{"train": (x, y), "val": ..., "test": ...}`` as JAX arrays, from index arrays."""
  return {name: (jnp.asarray(x[i]), jnp.asarray(y[i]))
          for name, i in zip(("train", "val", "test"), indices, strict=True)}


def sample(data: dict, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """A training batch drawn uniformly (with replacement) from ``data["train"]``."""
  x, y = data["train"]
  index = jax.random.randint(key, (batch_size,), 0, y.shape[0])
  return x[index], y[index]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def loss_and_evaluate(model: Any) -> tuple[Callable, Callable]:
  """A Flax classifier's training loss and its (validation, test) accuracy."""

  def loss(params, batch):
    return cross_entropy(model.apply(params, batch[0]), batch[1])

  def evaluate(params, data):
    return tuple(accuracy(model.apply(params, data[s][0]), data[s][1]) for s in ("val", "test"))

  return loss, evaluate
