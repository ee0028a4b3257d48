"""The published update-side clippers, as baselines for the step split.

Each is a few lines of public optax and returns an ``optax.GradientTransformation``
that takes the learning rate (a number, a traced scalar or an optax schedule),
the decoupled weight decay, Adam's ``b2`` and its own hyperparameters:

* :func:`stable_adamw`: StableAdamW (Wortsman et al. 2023), AdamW whose
  per-tensor rate is divided by ``max(1, RMS(g^2 / v_hat))``.
* :func:`adam_update_rms_clip`: Adam whose per-tensor step is clipped to an RMS
  ``threshold`` before the decay and the rate (Adafactor's update clipping, as
  Levanter applies it to Adam).
* :func:`agc_adamw`: the same per-unit rule as ``optax.adaptive_grad_clip``, but
  on the gradient before AdamW, on kernels only: the ablation that says whether
  clipping *after* the optimizer matters.
* :func:`adagc`: AdaGC (Wang et al. 2025), each tensor's gradient clipped
  against a multiple of an EMA of its own clipped norms, before AdamW.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


def _check(name: str, value: Any, ok: Callable[[float], bool], fix: str) -> None:
  """Refuses a concrete ``value`` that is not ``ok``; traced values pass unchecked."""
  if isinstance(value, (int, float)) and not ok(value):
    raise ValueError(f"`{name}` {fix}, got {value!r}.")


def _check_b2(b2: jax.typing.ArrayLike, caller: str) -> None:
  _check("b2", b2, lambda b: 0 <= b < 1, f"must be in [0, 1), e.g. {caller}(1e-3, b2=0.95)")


def _norm(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(x)))


def stable_adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformation:
  """StableAdamW: AdamW with a per-tensor rate ``learning_rate / max(1, RMS_t)``.

  ``RMS_t = sqrt(mean(g_t^2 / max(v_hat_t, eps^2)))`` over each tensor, with
  ``v_hat_t`` Adam's bias-corrected second moment *including* the current
  gradient ``g_t``: the rate shrinks when the gradient is large against what
  the second moment expected, the situation in which Wortsman et al. (2023) saw
  loss spikes follow. This is their Algorithm 1: their debiased betas
  ``beta * (1 - beta^(t-1)) / (1 - beta^t)`` give the same moments as Adam's
  bias correction, the step is ``m_hat / (sqrt(v_hat) + eps)``, and the
  ``max(v_hat, eps^2)`` in the RMS is their reference code's guard against a
  zero second moment.

  The weight decay is scaled by the per-tensor rate too (``theta -= eta_t *
  (weight_decay * theta + step)``), as in the paper's Algorithm 1 and optimi's
  implementation; the authors' unfused reference code decays with the
  unscaled rate instead. The two differ only when ``weight_decay > 0`` and a
  tensor's RMS exceeds 1.

  Args:
    learning_rate: The rate ``alpha_t``: a number, a traced scalar or a schedule.
    b1: Decay of the first moment.
    b2: Decay of the second moment.
    eps: Added to ``sqrt(v_hat)`` in the step; ``eps^2`` bounds ``v_hat`` from
      below in the RMS.
    weight_decay: Decoupled weight decay (``optax.add_decayed_weights``), on
      every leaf.

  Returns:
    An ``optax.GradientTransformation``; its state is ``optax.ScaleByAdamState``
    (and the rate's schedule state).

  Example:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = stable_adamw(0.1)
    >>> params = {"w": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> for g in ([1.0, 1.0], [1.0, 1.0], [30.0, -30.0]):
    ...   updates, state = tx.update({"w": jnp.array(g)}, state, params)
    >>> print(np.asarray(updates["w"]).round(4))  # Adam's step / 1.73, the RMS of g^2 / v_hat
    [-0.039   0.0348]

  References:
    Wortsman et al., `Stable and low-precision training for large-scale
    vision-language models <https://arxiv.org/abs/2304.13013>`_, 2023.
  """
  _check_b2(b2, "stable_adamw")
  adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  decay = optax.add_decayed_weights(weight_decay)

  def update_fn(updates, state, params=None):
    step, state = adam.update(updates, state, params)
    step, _ = decay.update(step, optax.EmptyState(), params)
    nu_hat = optax.tree.bias_correction(state.nu, b2, state.count)

    def per_tensor(g, v, s):
      rms = jnp.sqrt(jnp.mean(jnp.square(g) / jnp.maximum(v, jnp.square(eps))))
      return s / jnp.maximum(1.0, rms).astype(s.dtype)

    return jax.tree.map(per_tensor, updates, nu_hat, step), state

  return optax.chain(optax.GradientTransformation(adam.init, update_fn),
                     optax.scale_by_learning_rate(learning_rate))


def adam_update_rms_clip(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b2: jax.typing.ArrayLike = 0.999,
    weight_decay: jax.typing.ArrayLike = 0.0,
    threshold: jax.typing.ArrayLike = 1.0,
) -> optax.GradientTransformation:
  """Adam with update clipping: each tensor's Adam step scaled to RMS at most ``threshold``.

  ``optax.chain(optax.scale_by_adam(b2=b2), optax.clip_by_block_rms(threshold),
  optax.add_decayed_weights(weight_decay), optax.scale_by_learning_rate(...))``:
  the step ``m_hat / (sqrt(v_hat) + eps)`` of each leaf is divided by
  ``max(1, RMS / threshold)``, then the decoupled decay is added (unclipped) and
  the rate applied. Adafactor introduced the clip on its update; Levanter's
  ``AdamConfig(update_rms_clipping=1.0)`` applies it to Adam's ``m / sqrt(v)``
  this way (StableAdamW's RMS is of ``g / sqrt(v)`` instead).

  Args:
    learning_rate: A number, a traced scalar or a schedule.
    b2: Decay of Adam's second moment.
    weight_decay: Decoupled weight decay, on every leaf.
    threshold: The largest RMS of a tensor's step.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = adam_update_rms_clip(0.1, threshold=0.5)
    >>> params = jnp.zeros(2)
    >>> updates, _ = tx.update(jnp.array([3.0, -4.0]), tx.init(params), params)
    >>> print(np.asarray(updates).round(4))  # Adam's first step (+-1, RMS 1) halved
    [-0.05  0.05]

  References:
    Shazeer and Stern, `Adafactor: Adaptive Learning Rates with Sublinear
    Memory Cost <https://arxiv.org/abs/1804.04235>`_, 2018.
  """
  _check_b2(b2, "adam_update_rms_clip")
  _check("threshold", threshold, lambda x: x > 0,
         "must be > 0, e.g. adam_update_rms_clip(1e-3, threshold=1.0)")
  return optax.chain(
      optax.scale_by_adam(b2=b2),
      optax.clip_by_block_rms(threshold),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
  )


def _is_kernel(params: Any) -> Any:
  """True for each leaf of 2 or more dimensions (kernels, embeddings)."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def agc_adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b2: jax.typing.ArrayLike = 0.999,
    weight_decay: jax.typing.ArrayLike = 0.0,
    clipping: jax.typing.ArrayLike = 0.01,
) -> optax.GradientTransformation:
  """``optax.adaptive_grad_clip`` on the kernels' gradients, then AdamW.

  Each unit's gradient (a column of a kernel, by ``optax.adaptive_grad_clip``'s
  rule) is clipped to ``clipping`` times the unit's weight norm, on leaves of 2
  or more dimensions only (``optax.masked``; biases and LayerNorm scales pass
  through), *before* Adam. The rule is the one that the presets' plain-optax
  twin applies to the step *after* AdamW, so the pair tells whether the place
  of the clip matters.

  Args:
    learning_rate: A number, a traced scalar or a schedule.
    b2: Decay of Adam's second moment.
    weight_decay: Decoupled weight decay, on every leaf.
    clipping: The largest ratio of a unit's gradient norm to its weight norm.

  Returns:
    An ``optax.GradientTransformation``; its ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = agc_adamw(0.1, clipping=0.01)
    >>> params = {"bias": jnp.zeros(2), "kernel": jnp.ones((2, 2))}
    >>> state = tx.init(params)
    >>> for kernel in ([[0.01, 0.0], [0.0, 0.01]], [[3.0, 0.0], [4.0, 0.01]]):
    ...   grads = {"bias": jnp.ones(2), "kernel": jnp.array(kernel)}
    ...   updates, state = tx.update(grads, state, params)
    >>> print(np.asarray(updates["kernel"]).round(4))  # The first column's burst cut first
    [[-0.0992 -0.    ]
     [-0.0744 -0.1   ]]

  References:
    Brock et al., `High-Performance Large-Scale Image Recognition Without
    Normalization <https://arxiv.org/abs/2102.06171>`_, 2021.
  """
  _check_b2(b2, "agc_adamw")
  _check("clipping", clipping, lambda x: x > 0,
         "must be > 0, e.g. agc_adamw(1e-3, clipping=0.01)")
  return optax.chain(
      optax.masked(optax.adaptive_grad_clip(clipping), _is_kernel),
      optax.scale_by_adam(b2=b2),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
  )


class AdaGCState(NamedTuple):
  """State of :func:`clip_by_adagc`.

  Attributes:
    count: Steps taken, an int32 scalar.
    gamma: Per leaf, a scalar: the minimum of the leaf's clipped gradient norms
      during the warm-up, then their EMA.
  """

  count: jax.Array
  gamma: Any


def clip_by_adagc(
    *,
    relative: jax.typing.ArrayLike = 1.04,
    decay: jax.typing.ArrayLike = 0.99,
    warmup: int = 100,
    max_norm: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-6,
) -> optax.GradientTransformation:
  """AdaGC's clip: each tensor's gradient against ``relative`` x an EMA of its clipped norms.

  During the first ``warmup`` steps the gradient is clipped by its global norm
  to ``max_norm`` (scaled by ``max_norm / (norm + eps)`` when that is below 1),
  and each tensor's ``gamma`` is the smallest norm of its clipped gradient so
  far. After that each tensor ``i`` is clipped on its own: when ``|g_i| >
  relative * gamma_i`` it is scaled by ``relative * gamma_i / (|g_i| + eps)``,
  and ``gamma_i <- decay * gamma_i + (1 - decay) * min(|g_i|, relative *
  gamma_i)``. This is the rule of the authors' Megatron code (the
  ``AdaGC.clip_by_norm`` of their released patch); the defaults are its own
  (``clip_ratio=1.04``, ``beta=0.99``, ``start_clip_steps=100``, ``eps=1e-6``).
  pytorch-optimizer's ``AdaGC`` defaults to ``relative=1.05`` and ``decay=0.98``.

  Args:
    relative: ``lambda_rel``: how far above its EMA a tensor's norm may go.
    decay: ``beta``: the EMA's decay.
    warmup: Steps of global-norm clipping first (``T_start``).
    max_norm: ``lambda_abs``: the global norm's threshold during the warm-up.
    eps: Added to the norms that divide.

  Returns:
    An ``optax.GradientTransformation`` whose state is an :class:`AdaGCState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = clip_by_adagc(warmup=1, relative=2.0, decay=0.5, max_norm=10.0)
    >>> state = tx.init({"a": jnp.zeros(2)})
    >>> for g in ([3.0, 4.0], [6.0, 8.0], [30.0, 40.0]):
    ...   clipped, state = tx.update({"a": jnp.array(g)}, state)
    >>> print(np.asarray(clipped["a"]).round(3), state.gamma["a"])  # norm 50 cut to 2 * 7.5
    [ 9. 12.] 11.25

  References:
    Wang et al., `AdaGC: Improving Training Stability for Large Language Model
    Pretraining <https://arxiv.org/abs/2502.11034>`_, 2025.
  """
  _check("relative", relative, lambda x: x > 0, "must be > 0, e.g. clip_by_adagc(relative=1.04)")
  _check("decay", decay, lambda x: 0 <= x < 1, "must be in [0, 1), e.g. clip_by_adagc(decay=0.99)")
  _check("max_norm", max_norm, lambda x: x > 0, "must be > 0, e.g. clip_by_adagc(max_norm=1.0)")
  if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
    raise ValueError(f"`warmup` must be an int >= 0, e.g. clip_by_adagc(warmup=100), "
                     f"got {warmup!r}.")

  def init_fn(params):
    gamma = jax.tree.map(lambda p: jnp.zeros([], jnp.asarray(p).dtype), params)
    return AdaGCState(count=jnp.zeros([], jnp.int32), gamma=gamma)

  def update_fn(updates, state, params=None):
    del params
    first = state.count == 0
    in_warmup = state.count < warmup
    # The warm-up: clip by the global norm, keep each tensor's smallest clipped norm.
    scale = max_norm / (optax.tree.norm(updates) + eps)
    scale = jnp.where(scale < 1, scale, 1.0)
    warm = jax.tree.map(lambda g: g * scale.astype(g.dtype), updates)

    def per_tensor(g, w, gamma):
      norm, warm_norm = _norm(g), _norm(w)
      gamma = jnp.where(first, norm, gamma)  # Only with warmup=0: start at the first norm.
      limit = relative * gamma
      over = norm > limit
      clipped = jnp.where(over, g * (limit / (norm + eps)).astype(g.dtype), g)
      ema = decay * gamma + (1 - decay) * jnp.where(over, limit, norm)
      smallest = jnp.where(first, warm_norm, jnp.minimum(gamma, warm_norm))
      new_gamma = jnp.where(in_warmup, smallest, ema).astype(gamma.dtype)
      return jnp.where(in_warmup, w, clipped), new_gamma

    out = jax.tree.map(per_tensor, updates, warm, state.gamma)
    clipped = jax.tree.map(lambda _, o: o[0], updates, out)
    gamma = jax.tree.map(lambda _, o: o[1], updates, out)
    return clipped, AdaGCState(count=optax.safe_increment(state.count), gamma=gamma)

  return optax.GradientTransformation(init_fn, update_fn)


def adagc(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b2: jax.typing.ArrayLike = 0.999,
    weight_decay: jax.typing.ArrayLike = 0.0,
    relative: jax.typing.ArrayLike = 1.04,
    decay: jax.typing.ArrayLike = 0.99,
    warmup: int = 100,
    max_norm: jax.typing.ArrayLike = 1.0,
) -> optax.GradientTransformation:
  """AdaGC: :func:`clip_by_adagc` on the gradient, then AdamW.

  Args:
    learning_rate: A number, a traced scalar or a schedule.
    b2: Decay of Adam's second moment.
    weight_decay: Decoupled weight decay, on every leaf.
    relative: ``lambda_rel`` of :func:`clip_by_adagc`.
    decay: ``beta``, the decay of each tensor's EMA of clipped norms.
    warmup: Steps of global-norm clipping to ``max_norm`` first.
    max_norm: ``lambda_abs``, the global threshold during the warm-up.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = adagc(0.1, warmup=2)
    >>> params = jnp.zeros(2)
    >>> updates, _ = tx.update(jnp.array([3.0, -4.0]), tx.init(params), params)
    >>> print(np.asarray(updates).round(4))  # Adam's first step
    [-0.1  0.1]

  References:
    Wang et al., `AdaGC: Improving Training Stability for Large Language Model
    Pretraining <https://arxiv.org/abs/2502.11034>`_, 2025.
  """
  _check_b2(b2, "adagc")
  return optax.chain(
      clip_by_adagc(relative=relative, decay=decay, warmup=warmup, max_norm=max_norm),
      optax.scale_by_adam(b2=b2),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
  )


__all__ = ["AdaGCState", "adagc", "adam_update_rms_clip", "agc_adamw", "clip_by_adagc",
           "stable_adamw"]
