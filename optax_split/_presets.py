"""The reference rates and the ready-made optimizers built on them."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_split import _validation
from optax_split._split import combine, scale_global, split
from optax_split.decompositions import (
  Decomposition,
  spike_excess,
  trend_component,
)

# The presets' defaults; README.md ("Choosing the defaults") shows the
# benchmark evidence behind them. The split is Grokfast-EMA's reference
# setting (EMA decay 0.98, lambda 2) for both presets.
DEFAULT_ALPHA = 2.0
DEFAULT_DECOMPOSITION = trend_component(decay=0.98)
# No absolute gradient-norm number: the guard's cap is a multiple of the run's
# own warm-up norms.
DEFAULT_GUARD = spike_excess()


def _check_alpha(alpha: Any) -> None:
  if callable(alpha):
    return
  _validation.check_range(
      "alpha", alpha, low=-1.0,
      fix="alpha = -1 drops the global component, 0 is plain SGD, > 0 amplifies it.",
  )


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


def _one_plus(alpha: optax.ScalarOrSchedule) -> optax.ScalarOrSchedule:
  return (lambda count: 1 + alpha(count)) if callable(alpha) else 1 + alpha


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
  _check_alpha(alpha)
  _check_local_fraction(local_fraction)
  eta_local = _times(local_fraction, learning_rate)
  return eta_local, _times(_one_plus(alpha), eta_local)


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


def _reweighted(
    alpha: optax.ScalarOrSchedule,
    decomposition: Decomposition,
    guard: Decomposition | None,
    local_fraction: jax.typing.ArrayLike,
    global_share: bool,
) -> optax.GradientTransformation:
  """``g -> g' + alpha * G(g')``, ``g'`` the guarded gradient: the presets' first stage."""
  _check_alpha(alpha)
  _check_local_fraction(local_fraction)
  return optax.chain(
      _drop_global(guard),
      split(decomposition, global_share=global_share),
      scale_global(_one_plus(alpha)),
      combine(),
  )


def split_sgd(
    learning_rate: optax.ScalarOrSchedule,
    alpha: optax.ScalarOrSchedule = DEFAULT_ALPHA,
    *,
    decomposition: Decomposition = DEFAULT_DECOMPOSITION,
    guard: Decomposition | None = DEFAULT_GUARD,
    local_fraction: jax.typing.ArrayLike = 0.01,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    weight_decay: jax.typing.ArrayLike = 0.0,
    global_share: bool = False,
) -> optax.GradientTransformation:
  """SGD on the split gradient: the step is ``-eta_local * (g + alpha * G)``.

  ``eta_local = local_fraction * learning_rate`` (see :func:`split_rates`).
  First the ``guard`` drops the part of the gradient over its threshold (by
  default an adaptive z-score threshold, capped at 10 times the mean gradient
  norm of the first 25 steps), so the step stays bounded however large the
  gradient grows; then the ``decomposition``
  splits what is left and its global part is weighted by ``1 + alpha``. With
  ``alpha = 0`` and ``guard=None`` this is ``optax.sgd(eta_local, momentum,
  nesterov)``.

  Args:
    learning_rate: The total rate ``eta_total``, or a schedule.
    alpha: Strength of the global update, at least -1.
    decomposition: Which global component to reweight.
    guard: A decomposition whose global part is dropped first, or None.
    local_fraction: ``eta_local / eta_total``.
    momentum: Optional heavy-ball momentum after the split.
    nesterov: Use Nesterov momentum.
    weight_decay: Decoupled weight decay, scaled by ``eta_local``.
    global_share: Whether to keep the ``global_share`` diagnostic. Off by
      default: for the default decomposition it costs extra reductions over
      the gradient (see :func:`optax_split.split`).

  Returns:
    An ``optax.GradientTransformation``; its state holds the diagnostics
    ``threshold`` and ``spike_count``, and ``global_share`` (None unless
    ``global_share=True``); read them with ``optax.tree.get``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_split as osp
    >>> params = {"w": jnp.ones(3)}
    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
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
  return optax.chain(
      _reweighted(alpha, decomposition, guard, local_fraction, global_share),
      optax.trace(decay=momentum, nesterov=nesterov) if momentum is not None
      else optax.identity(),
      _decay_weights(weight_decay),
      optax.scale_by_learning_rate(_times(local_fraction, learning_rate)),
  )


def split_adam(
    learning_rate: optax.ScalarOrSchedule,
    alpha: optax.ScalarOrSchedule = DEFAULT_ALPHA,
    *,
    decomposition: Decomposition = DEFAULT_DECOMPOSITION,
    guard: Decomposition | None = DEFAULT_GUARD,
    local_fraction: jax.typing.ArrayLike = 0.01,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    global_share: bool = False,
) -> optax.GradientTransformation:
  """Adam on the split-and-reweighted gradient.

  The raw gradient is guarded, split and reweighted to ``g' + alpha * G(g')``
  *before* Adam's moments, as Grokfast and ZClip are used with Adam; the step
  is then Adam's at rate ``eta_local = local_fraction * learning_rate``. With
  ``alpha = 0`` and ``guard=None`` this is ``optax.adamw(eta_local, b1, b2, eps,
  weight_decay=weight_decay)``. Memory: Adam's plus the decomposition's state.

  Args:
    learning_rate: The total rate ``eta_total``, or a schedule.
    alpha: Strength of the global update, at least -1.
    decomposition: Which global component to reweight.
    guard: A decomposition whose global part is dropped first, or None.
    local_fraction: ``eta_local / eta_total``.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: Adam's epsilon.
    weight_decay: Decoupled weight decay, scaled by ``eta_local``.
    global_share: Whether to keep the ``global_share`` diagnostic (see
      :func:`split_sgd`).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_split as osp
    >>> params = {"w": jnp.ones(3)}
    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
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
  return optax.chain(
      _reweighted(alpha, decomposition, guard, local_fraction, global_share),
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      _decay_weights(weight_decay),
      optax.scale_by_learning_rate(_times(local_fraction, learning_rate)),
  )

