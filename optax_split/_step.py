"""``split_step``: a split of the step that any optimizer makes, after its rate."""

from typing import Any

import optax

from optax_split import _validation, defaults
from optax_split._schedules import map_schedules
from optax_split._split import check_decomposition, combine, scale_global, split
from optax_split.decompositions import Decomposition


def check_alpha(alpha: Any) -> None:
  """``alpha >= -1`` for a number; a schedule is taken as it is."""
  if callable(alpha):
    return
  _validation.check_range(
      "alpha", alpha, low=-1.0,
      fix="alpha = -1 drops the global component, 0 leaves the step as it is, "
      "-1 < alpha < 0 damps it, > 0 amplifies it.",
  )


def split_step(
    optimizer: optax.GradientTransformation,
    alpha: optax.ScalarOrSchedule = defaults.ALPHA,
    *,
    decomposition: Decomposition | None = defaults.STEP_DECOMPOSITION,
    global_share: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Splits the step that ``optimizer`` makes, after its rate, and reweights its global part.

  The step ``u`` (what ``optimizer.update`` returns, the rate folded in)
  becomes ``u + alpha * G(u)``. With the default decomposition ``G`` is the
  part of each unit's step over 1% of that unit's weight norm, so with
  ``alpha = -1`` (the default) no unit of a kernel moves by more than 1% of its
  norm in one step, whatever the rate: a per-unit trust budget, as LARS and
  LAMB keep one per layer (``optax.lars``, ``optax.lamb``), written as a split;
  ``-1 < alpha < 0`` damps the excess instead of dropping it. Biases, scales
  and all-zero units are left alone (see :func:`unit_excess`).

  It wraps any optax optimizer: ``optax.adamw``, ``optax.sgd``,
  ``optax.contrib.muon``, ``optax.lamb``, a chain with clipping. Equals
  ``optax.chain(optimizer, optax.adaptive_grad_clip(0.01, eps))`` on the
  kernels for ``alpha = -1`` and ``unit_excess(0.01, eps)`` (tested).

  Args:
    optimizer: The optimizer whose step is split; it gets the same ``update``
      arguments (params and any extra ones).
    alpha: Weight of the step's global part, at least -1 (or a schedule).
    decomposition: Which part of the step is global
      (``optax_split.defaults.STEP_DECOMPOSITION`` by default), or None for no
      split. Needs the params when it reads the weights, as the default does.
    global_share: Whether to keep ``||G||^2 / ||u||^2``, the share of the step
      that was cut, in the state (``split/global_share`` in
      :func:`optax_split.diagnostics`). Free for the default decomposition.

  Returns:
    An ``optax.GradientTransformationExtraArgs``: the optimizer's state, then
    the split's.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_split as osp
    >>> tx = osp.split_step(optax.sgd(learning_rate=1.0))
    >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    >>> grads = {"w": jnp.array([[0.3, 0.003], [0.4, 0.004]]), "b": jnp.ones(2)}
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> print(updates["w"])  # the first column's step cut to 1% of its norm (sqrt 2)
    [[-0.00848528 -0.003     ]
     [-0.01131371 -0.004     ]]
    >>> print(updates["b"])  # a bias is left alone
    [-1. -1.]
    >>> print(osp.diagnostics(state))
    {'split/global_share': Array(0.10..., dtype=float32)}

  References:
    You et al., `Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes <https://arxiv.org/abs/1904.00962>`_, 2020 (LAMB). Brock et
    al., `High-Performance Large-Scale Image Recognition Without Normalization
    <https://arxiv.org/abs/2102.06171>`_, 2021 (AGC).
  """
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(
        f"split_step() wraps an optax optimizer, got {optimizer!r}. E.g. "
        "osp.split_step(optax.adamw(1e-3))."
    )
  check_alpha(alpha)
  if decomposition is None:
    return optax.chain(optimizer, optax.identity())
  check_decomposition(decomposition, "split_step()",
                      "unit_excess(0.01, eps=0.0, min_ndim=2), or None for no split")
  reweight = optax.chain(
      split(decomposition, global_share=global_share),
      scale_global(map_schedules(lambda a: 1 + a, alpha)),
      combine(),
  )
  return optax.chain(optimizer, reweight)
