"""The reference rates, and the presets: ``split_step`` around a guarded optax optimizer."""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_split import _validation, defaults
from optax_split._guard import guard as guard_transformation
from optax_split._schedules import map_schedules
from optax_split._step import check_alpha, split_step
from optax_split.decompositions import Decomposition


def _local_rate(learning_rate: optax.ScalarOrSchedule,
                local_fraction: Any) -> optax.ScalarOrSchedule:
  """``eta_local = local_fraction * learning_rate``, after checking ``local_fraction``."""
  _validation.check_range(
      "local_fraction", local_fraction, low=0.0, low_inclusive=False,
      fix="It sets eta_local = local_fraction * learning_rate; the reference is 0.01.",
  )
  return map_schedules(lambda fraction, rate: fraction * rate, local_fraction, learning_rate)


def split_rates(
    learning_rate: optax.ScalarOrSchedule,
    alpha: optax.ScalarOrSchedule,
    local_fraction: jax.typing.ArrayLike = defaults.LOCAL_FRACTION,
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
  eta_local = _local_rate(learning_rate, local_fraction)
  return eta_local, map_schedules(lambda a, rate: (1 + a) * rate, alpha, eta_local)


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


def _guarded(guard: Decomposition | None) -> optax.GradientTransformation:
  """The presets' ``guard`` argument as a transformation: None for none."""
  if guard is None:
    return optax.identity()
  if not isinstance(guard, Decomposition):
    raise TypeError(f"`guard` must be a decomposition such as spike_excess() or None, "
                    f"got {guard!r}. E.g. split_adam(1.0, guard=spike_excess(z=2.5)).")
  return guard_transformation(guard)


def split_sgd(
    learning_rate: optax.ScalarOrSchedule,
    alpha: optax.ScalarOrSchedule = defaults.ALPHA,
    *,
    decomposition: Decomposition | None = defaults.SGD_STEP_DECOMPOSITION,
    guard: Decomposition | None = defaults.GUARD,
    local_fraction: jax.typing.ArrayLike = defaults.LOCAL_FRACTION,
    momentum: jax.typing.ArrayLike | None = defaults.MOMENTUM,
    nesterov: bool = False,
    weight_decay: jax.typing.ArrayLike = 0.0,
    global_share: bool = True,
) -> optax.GradientTransformation:
  """Momentum SGD whose step is split: ``-eta_local * (d + alpha * G(d))``.

  ``d`` is the momentum of the guarded gradient and ``eta_local =
  local_fraction * learning_rate`` (see :func:`split_rates`). It is
  ``split_step(optax.chain(guard(guard), <momentum, weight decay, eta_local>),
  alpha, decomposition=decomposition)``: :func:`guard` drops the gradient's
  spike excess, and :func:`split_step` splits the step after the rate (by
  default a per-unit trust budget relative to the weights, biases and other
  leaves below 2 dimensions included: ``defaults.SGD_STEP_DECOMPOSITION``).
  The defaults live in :mod:`optax_split.defaults`.

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
  momentum_sgd = optax.chain(
      _guarded(guard),
      optax.identity() if momentum is None else optax.trace(decay=momentum, nesterov=nesterov),
      _decay_weights(weight_decay),
      optax.scale_by_learning_rate(_local_rate(learning_rate, local_fraction)),
  )
  return split_step(momentum_sgd, alpha, decomposition=decomposition, global_share=global_share)


def split_adam(
    learning_rate: optax.ScalarOrSchedule,
    alpha: optax.ScalarOrSchedule = defaults.ALPHA,
    *,
    decomposition: Decomposition | None = defaults.STEP_DECOMPOSITION,
    guard: Decomposition | None = defaults.GUARD,
    local_fraction: jax.typing.ArrayLike = defaults.LOCAL_FRACTION,
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
  place of momentum: ``split_step(optax.chain(guard(guard), <AdamW at
  eta_local>), alpha, decomposition=decomposition)``. With ``alpha = 0`` (or
  ``decomposition=None``) and ``guard=None`` this is ``optax.adamw(eta_local,
  b1, b2, eps, weight_decay=weight_decay)``.

  **The slow trend inside Adam** (``b3``, off by default): Adam's first moment
  ``mu_hat`` is split into ``mu_hat - m`` (local) and ``m`` (global), ``m`` a
  slow EMA of the raw gradient with decay ``b3``, and the global part is
  weighted by ``1 + slow_alpha`` before Adam's preconditioner. That is
  AdEMAMix, built on ``optax.contrib.scale_by_ademamix``: with
  ``decomposition=None, guard=None`` this equals
  ``optax.contrib.ademamix(eta_local, b1, b2, b3, slow_alpha, eps,
  weight_decay=weight_decay)``, schedules of ``b3`` and ``slow_alpha``
  included.

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
    The preset is a few public pieces: the guard, AdamW at ``eta_local``,
    and the split of its step.

    >>> import jax
    >>> import optax
    >>> import optax_split as osp
    >>> params = {"w": jax.random.normal(jax.random.key(0), (4, 3))}
    >>> grads = {"w": jax.random.normal(jax.random.key(1), (4, 3))}
    >>> tx = osp.split_adam(learning_rate=1.0, weight_decay=0.1)
    >>> same = osp.split_step(optax.chain(osp.guard(), optax.adamw(0.01, weight_decay=0.1)))
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> expected, _ = same.update(grads, same.init(params), params)
    >>> print(bool(jax.numpy.all(updates["w"] == expected["w"])))
    True
  """
  if b3 is None:
    direction = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  else:
    if not callable(b3):
      _validation.check_range("b3", b3, low=0.0, high=1.0, high_inclusive=False,
                              fix="E.g. split_adam(..., b3=0.999), or b3=None.")
    direction = optax.contrib.scale_by_ademamix(b1=b1, b2=b2, b3=b3, alpha=slow_alpha, eps=eps)
  adamw = optax.chain(
      _guarded(guard),
      direction,
      _decay_weights(weight_decay),
      optax.scale_by_learning_rate(_local_rate(learning_rate, local_fraction)),
  )
  return split_step(adamw, alpha, decomposition=decomposition, global_share=global_share)


def split_muon(
    learning_rate: optax.ScalarOrSchedule,
    alpha: optax.ScalarOrSchedule = defaults.ALPHA,
    *,
    decomposition: Decomposition | None = defaults.MUON_STEP_DECOMPOSITION,
    guard: Decomposition | None = defaults.GUARD,
    local_fraction: jax.typing.ArrayLike = defaults.LOCAL_FRACTION,
    beta: jax.typing.ArrayLike = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.999,
    weight_decay: jax.typing.ArrayLike = 0.0,
    global_share: bool = True,
) -> optax.GradientTransformation:
  """Muon whose step is split: guard -> ``optax.contrib.muon`` -> split of the step.

  As :func:`split_adam`, with optax's Muon in place of AdamW:
  ``split_step(optax.chain(guard(guard), optax.contrib.muon(eta_local, ...)),
  alpha, decomposition=decomposition)``. Muon orthogonalises the momentum of
  each 2-D leaf (Newton-Schulz, ``ns_steps`` iterations) and runs Adam
  (``adam_b1``, ``adam_b2``) on the other leaves, both at ``eta_local =
  local_fraction * learning_rate``; the split then keeps each kernel unit's
  step within 1% of its weight norm, and each leaf below 2-D within 1% of
  its own, as :func:`split_sgd` does (far above its best rate on an exploding
  RNN, Muon's step left the read-out vector unbounded where Adam's alone did
  not), except the leaves named ``scale``, the gains of LayerNorm and
  RMSNorm, which Adam moves at its rate (``defaults.MUON_STEP_DECOMPOSITION``).
  With ``alpha = 0`` (or
  ``decomposition=None``) and ``guard=None`` this is
  ``optax.contrib.muon(eta_local, beta=beta, ns_steps=ns_steps,
  weight_decay=weight_decay, nesterov=nesterov, adam_b1=adam_b1,
  adam_b2=adam_b2, adam_weight_decay=weight_decay)``.

  Memory: Muon's momentum and the Adam state of the leaves below 2-D.

  Args:
    learning_rate: The total rate ``eta_total``, or a schedule.
    alpha: Weight of the step's global part, at least -1 (or a schedule).
    decomposition: Which part of the step is global, or None for no split.
    guard: A decomposition whose global part is dropped from the gradient
      first, or None.
    local_fraction: ``eta_local / eta_total``.
    beta: Muon's momentum decay.
    nesterov: Use Nesterov momentum (Muon's default).
    ns_steps: Newton-Schulz iterations.
    adam_b1: First-moment decay of the Adam on the leaves below 2-D.
    adam_b2: Second-moment decay of that Adam.
    weight_decay: Decoupled weight decay on every leaf, scaled by ``eta_local``.
    global_share: Whether to keep the share of the step that the split cut.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    The preset is a few public pieces: the guard, Muon at ``eta_local``, and
    the split of its step.

    >>> import jax
    >>> import optax
    >>> import optax_split as osp
    >>> params = {"w": jax.random.normal(jax.random.key(0), (4, 3))}
    >>> grads = {"w": jax.random.normal(jax.random.key(1), (4, 3))}
    >>> tx = osp.split_muon(learning_rate=1.0)
    >>> muon = optax.chain(osp.guard(), optax.contrib.muon(0.01))
    >>> same = osp.split_step(muon, decomposition=osp.defaults.MUON_STEP_DECOMPOSITION)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> expected, _ = same.update(grads, same.init(params), params)
    >>> print(bool(jax.numpy.all(updates["w"] == expected["w"])))
    True

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024.
  """
  _validation.check_range("beta", beta, low=0.0, high=1.0, high_inclusive=False,
                          fix="Muon's momentum decay; the default is 0.95.")
  _validation.check_range("weight_decay", weight_decay, low=0.0, fix="E.g. weight_decay=1e-4.")
  if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 1:
    raise ValueError(f"`ns_steps` must be a positive int, got {ns_steps!r}. "
                     "Muon's Newton-Schulz iterations; the default is 5.")
  muon = optax.contrib.muon(
      _local_rate(learning_rate, local_fraction), beta=beta, ns_steps=ns_steps,
      weight_decay=weight_decay, nesterov=nesterov, adam_b1=adam_b1, adam_b2=adam_b2,
      adam_weight_decay=weight_decay,
  )
  return split_step(optax.chain(_guarded(guard), muon), alpha, decomposition=decomposition,
                    global_share=global_share)
