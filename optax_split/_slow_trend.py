"""Adam whose first moment is split into a fast part and a slow trend (AdEMAMix's form)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class SlowTrendAdamState(NamedTuple):
  """State of the slow-trend Adam inside :func:`optax_split.split_adam`.

  Attributes:
    count: Steps taken (int32).
    mu: Adam's first moment, the fast EMA of the gradient (decay ``b1``).
    slow: The slow trend, an EMA of the gradient (decay ``b3``) started at
      zero and never bias-corrected, so it fills slowly.
    nu: Adam's second moment of the raw gradient (decay ``b2``).
  """

  count: jax.Array
  mu: optax.Updates
  slow: optax.Updates
  nu: optax.Updates


def scale_by_adam_with_slow_trend(
    b1: jax.typing.ArrayLike,
    b2: jax.typing.ArrayLike,
    b3: optax.ScalarOrSchedule,
    alpha: optax.ScalarOrSchedule,
    eps: jax.typing.ArrayLike,
) -> optax.GradientTransformation:
  """Adam's direction with the slow trend of the gradient as the global component.

  The first moment splits into ``local = mu_hat - slow`` and
  ``global = slow``; the global part is weighted by ``1 + alpha`` and the sum
  preconditioned by Adam's second moment of the raw gradient:
  ``(local + (1 + alpha) * global) / (sqrt(nu_hat) + eps)``, which is
  AdEMAMix's ``(mu_hat + alpha * slow) / (sqrt(nu_hat) + eps)``. ``b3`` and
  ``alpha`` may be schedules of the step count, as AdEMAMix warms them up.
  """

  def init_fn(params):
    zeros = lambda: optax.tree.zeros_like(params)  # noqa: E731  (fresh buffers: donation)
    return SlowTrendAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(), slow=zeros(),
                              nu=zeros())

  def update_fn(updates, state, params=None):
    del params
    b3_now = b3(state.count) if callable(b3) else b3
    alpha_now = alpha(state.count) if callable(alpha) else alpha
    mu = optax.tree.update_moment(updates, state.mu, b1, order=1)
    slow = optax.tree.update_moment(updates, state.slow, b3_now, order=1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, order=2)
    count = optax.safe_increment(state.count)
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    nu_hat = optax.tree.bias_correction(nu, b2, count)

    def direction(m, s, v):
      local, global_ = m - s, s
      return (local + (1 + alpha_now) * global_) / (jnp.sqrt(v) + eps)

    step = jax.tree.map(direction, mu_hat, slow, nu_hat)
    return step, SlowTrendAdamState(count=count, mu=mu, slow=slow, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)
