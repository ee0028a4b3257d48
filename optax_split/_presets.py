"""The reference rates and the ready-made optimizers built on them."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_split import _validation
from optax_split._slow_trend import scale_by_adam_with_slow_trend
from optax_split._step import DEFAULT_STEP_DECOMPOSITION, check_alpha, one_plus, reweight
from optax_split.decompositions import Decomposition, spike_excess

# The presets' defaults; README.md ("Choosing the defaults") shows the suite's
# evidence behind them. The split sits on the step, after the optimizer and the
# rate: the part of each kernel unit's step over 1% of its weight norm is
# dropped (alpha = -1).
DEFAULT_ALPHA = -1.0
DEFAULT_DECOMPOSITION = DEFAULT_STEP_DECOMPOSITION
# No absolute gradient-norm number: the guard's bound follows the run's own
# recent norms.
DEFAULT_GUARD = spike_excess()


def _check_local_fraction(local_fraction: Any) -> None:
  _validation.check_range(
      "local_fraction", local_fraction, low=0.0, low_inclusive=False,
      fix="It sets eta_local = local_fraction * learning_rate; the reference is 0.01.",
  )


def _times(factor: Any, rate: optax.ScalarOrSchedule) -> optax.ScalarOrSchedule:
  """``factor * rate`` where either may be a schedule of the step count."""
  if callable(factor) or callable(rate):
    as_schedule = lambda x: x if callable(x) else (lambda count: x)  # noqa: E731
    factor_fn, rate_fn = as_schedule(factor), as_schedule(rate)
    return lambda count: factor_fn(count) * rate_fn(count)
  return factor * rate


def split_rates(
    learning_rate: optax.ScalarOrSchedule,
    alpha: optax.ScalarOrSchedule,
    local_fraction: jax.typing.ArrayLike = 0.01,
) -> tuple[optax.ScalarOrSchedule, optax.ScalarOrSchedule]:
  """The reference rates: ``eta_local`` and ``eta_global = (1 + alpha) * eta_local``.

  ``eta_local = local_fraction * learning_rate``, so the step
  ``-(eta_local * l + eta_global * G)`` equals ``-eta_local * (g + alpha * G)``.
  Schedules in, schedules out.

  Args:
    learning_rate: The total learning rate ``eta_total``, or a schedule.
    alpha: Strength of the global update, at least -1 (or a schedule).
    local_fraction: ``eta_local / eta_total``, positive.

  Returns:
    ``(eta_local, eta_global)``, numbers or schedules.

  Example:
    >>> import optax
    >>> import optax_split as osp
    >>> eta_local, eta_global = osp.split_rates(1.0, alpha=2.0)
    >>> print(eta_local, eta_global)
    0.01 0.03
    >>> eta_local, eta_global = osp.split_rates(optax.linear_schedule(1.0, 0.0, 10), 2.0)
    >>> print(round(float(eta_global(5)), 6))
    0.015
  """
  check_alpha(alpha)
  _check_local_fraction(local_fraction)
  eta_local = _times(local_fraction, learning_rate)
  return eta_local, _times(one_plus(alpha), eta_local)


class GuardState(NamedTuple):
  """State of the presets' guard (see :func:`split_sgd`).

  Its own type tells the guard's statistics from those of a split's
  decomposition, e.g. for :func:`optax_split.diagnostics`.

  Attributes:
    decomposition: The guard decomposition's state.
  """

  decomposition: Any


def _drop_global(guard: Decomposition | None) -> optax.GradientTransformation:
  """Keeps only the local part of the guard's split: the step's absolute bound."""
  if guard is None:
    return optax.identity()
  if not isinstance(guard, Decomposition):
    raise TypeError(f"`guard` must be a decomposition such as spike_excess() "
                    f"or None, got {guard!r}.")

  def init_fn(params):
    return GuardState(guard.init(params))

  def update_fn(updates, state, params=None):
    _validation.check_float_leaves(updates, what="updates", caller="The guard")
    updates = _validation.as_arrays(updates)
    params = None if params is None else _validation.as_arrays(params)
    local, _, inner, _ = guard.decompose(updates, state.decomposition, params)
    return local, GuardState(inner)

  return optax.GradientTransformation(init_fn, update_fn)


def _decay_weights(weight_decay: jax.typing.ArrayLike) -> optax.GradientTransformation:
  """``optax.add_decayed_weights`` that needs no params when the decay is a literal 0.

  Plain SGD users call ``update`` without params; an injected (array) decay
  always takes the params, as in ``optax.adamw``.
  """
  if isinstance(weight_decay, (int, float)) and weight_decay == 0:
    return optax.GradientTransformation(optax.init_empty_state, lambda u, s, p=None: (u, s))
  _validation.check_range("weight_decay", weight_decay, low=0.0, fix="E.g. weight_decay=1e-4.")

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("weight_decay needs the params: tx.update(grads, state, params).")
    decayed = jax.tree.map(
        lambda u, p: u + jnp.asarray(weight_decay, u.dtype) * jnp.asarray(p, u.dtype),
        updates, params,
    )
    return decayed, state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _preset(
    guard: Decomposition | None,
    direction: optax.GradientTransformation,
    weight_decay: jax.typing.ArrayLike,
    learning_rate: optax.ScalarOrSchedule,
    local_fraction: jax.typing.ArrayLike,
    decomposition: Decomposition | None,
    alpha: optax.ScalarOrSchedule,
    global_share: bool,
) -> optax.GradientTransformation:
  """guard -> the optimizer's direction -> weight decay -> the rate -> the step's split."""
  _check_local_fraction(local_fraction)
  return optax.chain(
      _drop_global(guard),
      direction,
      _decay_weights(weight_decay),
      optax.scale_by_learning_rate(_times(local_fraction, learning_rate)),
      reweight(decomposition, alpha, global_share),
  )


def split_sgd(
    learning_rate: optax.ScalarOrSchedule,
    alpha: optax.ScalarOrSchedule = DEFAULT_ALPHA,
    *,
    decomposition: Decomposition | None = DEFAULT_DECOMPOSITION,
    guard: Decomposition | None = DEFAULT_GUARD,
    local_fraction: jax.typing.ArrayLike = 0.01,
    momentum: jax.typing.ArrayLike | None = 0.9,
    nesterov: bool = False,
    weight_decay: jax.typing.ArrayLike = 0.0,
    global_share: bool = True,
) -> optax.GradientTransformation:
  """Momentum SGD whose step is split: ``-eta_local * (d + alpha * G(d))``.

  ``d`` is the momentum of the guarded gradient and ``eta_local =
  local_fraction * learning_rate`` (see :func:`split_rates`). In order:

  1. the ``guard`` drops the part of the gradient over an adaptive threshold
     (by default ZClip's z-score rule, bounded relative to the run's recent
     norms: :func:`spike_excess`);
  2. heavy-ball momentum (``momentum``, 0.9 by default), decoupled
     ``weight_decay``, and the rate ``eta_local``;
  3. the ``decomposition`` splits that step and its global part is weighted by
     ``1 + alpha``. By default it is the part of each kernel unit's step over
     1% of the unit's weight norm, and ``alpha = -1`` drops it: a per-unit
     trust budget (see :func:`split_step`).

  With ``alpha = 0`` (or ``decomposition=None``) and ``guard=None`` this is
  ``optax.sgd(eta_local, momentum, nesterov)``.

  Args:
    learning_rate: The total rate ``eta_total``, or a schedule.
    alpha: Weight of the step's global part, at least -1 (or a schedule).
    decomposition: Which part of the step is global, or None for no split.
    guard: A decomposition whose global part is dropped from the gradient
      first, or None.
    local_fraction: ``eta_local / eta_total``.
    momentum: Heavy-ball momentum, or None for none.
    nesterov: Use Nesterov momentum.
    weight_decay: Decoupled weight decay, scaled by ``eta_local``.
    global_share: Whether to keep the share of the step that the split cut
      (``split/global_share``); free for the default decomposition.

  Returns:
    An ``optax.GradientTransformation``; :func:`optax_split.diagnostics` reads
    the guard's ``guard/threshold``, ``guard/spike_count``, ... and the
    step's ``split/global_share``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_split as osp
    >>> params = {"w": jnp.ones((2, 3))}
    >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
    >>> tx = osp.split_sgd(learning_rate=10.0)
    >>> @jax.jit
    ... def step(params, state):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> state = tx.init(params)
    >>> for _ in range(200):
    ...   params, state = step(params, state)
    >>> print(float(loss(params)) < 1e-3)
    True
  """
  direction = (optax.trace(decay=momentum, nesterov=nesterov) if momentum is not None
               else optax.identity())
  return _preset(guard, direction, weight_decay, learning_rate, local_fraction, decomposition,
                 alpha, global_share)


def split_adam(
    learning_rate: optax.ScalarOrSchedule,
    alpha: optax.ScalarOrSchedule = DEFAULT_ALPHA,
    *,
    decomposition: Decomposition | None = DEFAULT_DECOMPOSITION,
    guard: Decomposition | None = DEFAULT_GUARD,
    local_fraction: jax.typing.ArrayLike = 0.01,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    b3: optax.ScalarOrSchedule | None = None,
    slow_alpha: optax.ScalarOrSchedule = 5.0,
    global_share: bool = True,
) -> optax.GradientTransformation:
  """AdamW whose step is split: guard -> Adam -> weight decay -> rate -> split of the step.

  As :func:`split_sgd`, with Adam's direction (``b1``, ``b2``, ``eps``) in
  place of momentum: the ``guard`` drops the gradient's spike excess, AdamW
  makes its step at ``eta_local = local_fraction * learning_rate``, and the
  ``decomposition`` splits that step, its global part weighted by
  ``1 + alpha`` (by default the part of each kernel unit's step over 1% of its
  weight norm, dropped). With ``alpha = 0`` (or ``decomposition=None``) and
  ``guard=None`` this is ``optax.adamw(eta_local, b1, b2, eps,
  weight_decay=weight_decay)``.

  **The slow trend inside Adam** (``b3``, off by default): Adam's first moment
  is split into ``mu_hat - m`` (local) and ``m`` (global), ``m`` a slow EMA
  of the raw gradient with decay ``b3``, and the global part is weighted by
  ``1 + slow_alpha`` before Adam's preconditioner. That is AdEMAMix: with
  ``decomposition=None, guard=None`` this equals
  ``optax.contrib.ademamix(eta_local, b1, b2, b3, slow_alpha, eps,
  weight_decay=weight_decay)``, schedules of ``b3`` and ``slow_alpha``
  included (tested). It pays in long runs, with ``b3`` and ``slow_alpha``
  warmed up.

  Memory: Adam's state (plus the slow trend's buffer with ``b3``) and a few
  scalars.

  Args:
    learning_rate: The total rate ``eta_total``, or a schedule.
    alpha: Weight of the step's global part, at least -1 (or a schedule).
    decomposition: Which part of the step is global, or None for no split.
    guard: A decomposition whose global part is dropped from the gradient
      first, or None.
    local_fraction: ``eta_local / eta_total``.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: Adam's epsilon.
    weight_decay: Decoupled weight decay, scaled by ``eta_local``.
    b3: Decay of the slow trend inside Adam (AdEMAMix's ``b3``), or None.
    slow_alpha: Strength of the slow trend (AdEMAMix's ``alpha``); used only
      with ``b3``.
    global_share: Whether to keep the share of the step that the split cut.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_split as osp
    >>> params = {"w": jnp.ones((2, 3))}
    >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
    >>> tx = osp.split_adam(learning_rate=10.0)
    >>> @jax.jit
    ... def step(params, state):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> state = tx.init(params)
    >>> for _ in range(300):
    ...   params, state = step(params, state)
    >>> print(float(loss(params)) < 1e-2)
    True
  """
  if b3 is None:
    direction = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  else:
    if not callable(b3):
      _validation.check_range("b3", b3, low=0.0, high=1.0, high_inclusive=False,
                              fix="E.g. split_adam(..., b3=0.999), or b3=None.")
    direction = scale_by_adam_with_slow_trend(b1, b2, b3, slow_alpha, eps)
  return _preset(guard, direction, weight_decay, learning_rate, local_fraction, decomposition,
                 alpha, global_share)
