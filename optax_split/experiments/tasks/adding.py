"""The adding problem on a vanilla tanh RNN whose gradients explode.

Each input is a sequence of ``(value, marker)`` pairs, values uniform in
``[0, 1)``; one marker sits in the first half, one in the second, and the
target is the sum of the two marked values. Predicting the mean (1) scores
an MSE of 1/6. The recurrent matrix starts orthogonal times ``rho``: with
``rho > 1`` the backward pass through time amplifies gradients.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from optax_split.experiments.tasks.base import Task

TRIVIAL_MSE = 1 / 6


def make_sequences(key: jax.Array, n: int, length: int) -> tuple[jax.Array, jax.Array]:
  """``n`` adding-problem sequences ``(n, length, 2)`` and their targets ``(n,)``.

  Example:
    >>> import jax
    >>> x, y = make_sequences(jax.random.PRNGKey(0), 4, 10)
    >>> print(x.shape, y.shape, x[..., 1].sum(axis=1))
    (4, 10, 2) (4,) [2. 2. 2. 2.]
  """
  value_key, first_key, second_key = jax.random.split(key, 3)
  values = jax.random.uniform(value_key, (n, length))
  half = length // 2
  first = jax.random.randint(first_key, (n,), 0, half)
  second = jax.random.randint(second_key, (n,), half, length)
  positions = jnp.arange(length)
  markers = ((positions == first[:, None]) | (positions == second[:, None])).astype(values.dtype)
  return jnp.stack([values, markers], axis=-1), jnp.sum(values * markers, axis=1)


class TanhRNN(nn.Module):
  """``h_t = tanh(x_t W_in + h_{t-1} W_rec + b)``; a linear read-out of the last ``h``.

  The read-out is a Flax ``Dense(1)`` (a ``(hidden, 1)`` kernel and a bias) or,
  with ``vector_readout``, a ``(hidden,)`` weight vector and a scalar bias: the
  same model with no read-out leaf of two dimensions.
  """

  hidden: int
  rho: float
  vector_readout: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w_in = self.param("w_in", nn.initializers.lecun_normal(), (x.shape[-1], self.hidden))
    w_rec = self.param(
        "w_rec", nn.initializers.orthogonal(scale=self.rho), (self.hidden, self.hidden)
    )
    bias = self.param("bias", nn.initializers.zeros, (self.hidden,))
    # The input projection of every step at once; only the recurrence is sequential.
    drive = jnp.swapaxes(x @ w_in + bias, 0, 1)

    def cell(h, drive_t):
      return jnp.tanh(drive_t + h @ w_rec), None

    h, _ = jax.lax.scan(cell, jnp.zeros((x.shape[0], self.hidden), x.dtype), drive)
    if not self.vector_readout:
      return nn.Dense(1)(h)[:, 0]
    w_out = self.param("w_out", nn.initializers.normal(self.hidden ** -0.5), (self.hidden,))
    b_out = self.param("b_out", nn.initializers.zeros, ())
    return h @ w_out + b_out


def adding(
    length: int = 20,
    hidden: int = 16,
    rho: float = 1.5,
    batch_size: int = 32,
    eval_size: int = 500,
    *,
    vector_readout: bool = False,
) -> Task:
  """The adding task: MSE of a tanh RNN, recurrent matrix orthogonal x ``rho``.

  ``vector_readout`` reads the last state out with a weight vector and a
  scalar bias instead of a ``Dense(1)`` layer (see :class:`TanhRNN`).

  Example:
    >>> import jax
    >>> task = adding(length=6, hidden=4, eval_size=8)
    >>> params = task.init(jax.random.PRNGKey(0))
    >>> batch = task.sample(task.data, jax.random.PRNGKey(1))
    >>> print(task.loss(params, batch).shape, task.metric)
    () mse
  """
  model = TanhRNN(hidden=hidden, rho=rho, vector_readout=vector_readout)
  # Fixed held-out sets, from keys that no training seed uses.
  val_x, val_y = make_sequences(jax.random.PRNGKey(2**31 - 1), eval_size, length)
  test_x, test_y = make_sequences(jax.random.PRNGKey(2**31 - 2), eval_size, length)
  data = {"val": (val_x, val_y), "test": (test_x, test_y)}

  def loss(params, batch):
    x, y = batch
    return jnp.mean(jnp.square(model.apply(params, x) - y))

  def evaluate(params, data):
    return loss(params, data["val"]), loss(params, data["test"])

  return Task(
      name="adding",
      data=data,
      init=lambda key: model.init(key, val_x[:1]),
      sample=lambda data, key: make_sequences(key, batch_size, length),
      loss=loss,
      evaluate=evaluate,
      metric="mse",
      higher_is_better=False,
      divergence_bound=10 * TRIVIAL_MSE,
      rates=(0.01, 0.03, 0.1, 0.3),
      adaptive_rates=(0.001, 0.003, 0.01, 0.03),
      steps=2000,
      eval_every=200,
      settings={"length": length, "hidden": hidden, "rho": rho, "batch_size": batch_size,
                "eval_size": eval_size, "trivial_mse": round(TRIVIAL_MSE, 4),
                **({"read-out": "vector"} if vector_readout else {})},
  )
