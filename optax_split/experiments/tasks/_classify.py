"""Shared pieces of the classification tasks: splits, batches, loss, accuracy."""

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


def sample(data: dict, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """A training batch drawn uniformly (with replacement) from ``data["train"]``."""
  x, y = data["train"]
  index = jax.random.randint(key, (batch_size,), 0, y.shape[0])
  return x[index], y[index]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
