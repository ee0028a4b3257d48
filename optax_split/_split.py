"""The split primitives: split, per-branch transformations, combine."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_split import _validation
from optax_split.decompositions import Decomposition


class SplitUpdates(NamedTuple):
  """Updates split in two branches, each with the structure of the original.

  Made by :func:`split`, consumed by :func:`combine`; in between, transform a
  branch with :func:`scale_local`, :func:`scale_global`, :func:`on_local` or
  :func:`on_global`. ``local + global_`` gives the original updates back (to
  rounding).

  Attributes:
    local: The local component, ``g - G``.
    global_: The global component ``G`` picked by the decomposition.
  """

  local: optax.Updates
  global_: optax.Updates


class SplitState(NamedTuple):
  """State of :func:`split`.

  Attributes:
    global_share: ``||G||^2 / ||g||^2`` at the last step (float32; 0 for zero
      updates) with ``split(..., global_share=True)``, else None (the
      default). Read it with ``optax.tree.get(state, "global_share")``.
    decomposition: The decomposition's own state.
  """

  global_share: jax.Array | None
  decomposition: Any


def _usage(caller: str) -> str:
  return (
      f"Put split(decomposition) before {caller} in the chain, e.g. "
      "optax.chain(split(norm_excess(1.0)), scale_local(-0.01), "
      "scale_global(-0.02), combine())."
  )


def _require_split(updates: Any, caller: str) -> SplitUpdates:
  if not isinstance(updates, SplitUpdates):
    raise TypeError(
        f"{caller} expects the SplitUpdates made by split(), got {type(updates).__name__}. "
        + _usage(caller)
    )
  return updates


def check_decomposition(decomposition: Any, caller: str, example: str) -> None:
  """Raises TypeError unless ``decomposition`` is a :class:`Decomposition`."""
  if not isinstance(decomposition, Decomposition):
    raise TypeError(
        f"{caller}: `decomposition` must be a decomposition such as {example}, "
        f"got {decomposition!r}."
    )


def decompose_checked(
    decomposition: Decomposition, updates: Any, state: Any, params: Any, *, caller: str
) -> tuple[Any, Any, Any, jax.Array]:
  """``decomposition.decompose`` after the checks every splitting transformation makes.

  The updates (and params, when given) must be real floating pytrees of one
  structure, not split already; Python numbers and NumPy leaves become arrays.
  """
  if isinstance(updates, SplitUpdates):
    raise TypeError(
        f"{caller} got updates that are split already. To split one branch again, "
        "wrap the inner chain: on_local(optax.chain(split(d), ..., combine()))."
    )
  _validation.check_float_leaves(updates, what="updates", caller=caller)
  _validation.check_same_structure(updates, params, caller=caller)
  updates = _validation.as_arrays(updates)
  if params is not None:
    _validation.check_float_leaves(params, what="params", caller=caller)
    params = _validation.as_arrays(params)
  return decomposition.decompose(updates, state, params)


def split(
    decomposition: Decomposition, *, global_share: bool = False
) -> optax.GradientTransformation:
  """Splits params-shaped updates into ``SplitUpdates(local, global_)``.

  The decomposition picks the global component ``G``; the local one is the rest,
  ``g - G``. Follow with per-branch transformations and :func:`combine`.

  The ``global_share`` diagnostic is opt-in (``global_share=True``): it is free
  for the norm-based decompositions (:func:`norm_excess`, :func:`spike_excess`,
  :func:`unit_excess`) but costs :func:`mean_component` and
  :func:`trend_component` extra reductions over the updates, which also keep XLA
  from fusing the step into one pass. Off, the compiled step is as fast as the
  optax chain it replaces.

  Args:
    decomposition: Which global component to take, e.g. :func:`norm_excess`,
      :func:`mean_component`, :func:`trend_component`, :func:`spike_excess` or
      :func:`unit_excess`.
    global_share: Whether to keep ``||G||^2 / ||g||^2`` in the state. Off by
      default: the state then holds None there and the compiled step skips the
      sums.

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`SplitState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_split as osp
    >>> tx = optax.chain(
    ...     osp.split(osp.norm_excess(max_norm=2.5), global_share=True),
    ...     osp.scale_local(-0.5),
    ...     osp.scale_global(0.0),   # drop the excess: clipped SGD
    ...     osp.combine(),
    ... )
    >>> params = jnp.array([0.0, 0.0])
    >>> updates, state = tx.update(jnp.array([3.0, 4.0]), tx.init(params))
    >>> print(updates, optax.tree.get(state, "global_share"))
    [-0.75 -1.  ] 0.25
  """
  check_decomposition(decomposition, "split()", "norm_excess(1.0) or trend_component()")
  if not isinstance(global_share, bool):
    raise TypeError(
        f"`global_share` must be True or False, got {global_share!r}. E.g. "
        "split(trend_component(), global_share=False)."
    )

  def init_fn(params):
    _validation.check_float_leaves(params, what="params", caller="split()")
    return SplitState(
        global_share=jnp.zeros([], jnp.float32) if global_share else None,
        decomposition=decomposition.init(params),
    )

  def update_fn(updates, state, params=None):
    local, global_, decomposition_state, share = decompose_checked(
        decomposition, updates, state.decomposition, params, caller="split()"
    )
    # Unused, the share's sums are dropped from the compiled step.
    share = share if global_share else None
    return SplitUpdates(local, global_), SplitState(share, decomposition_state)

  return optax.GradientTransformation(init_fn, update_fn)


def combine() -> optax.GradientTransformation:
  """Joins ``SplitUpdates`` back into params-shaped updates: ``local + global_``.

  Returns:
    A stateless ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_split as osp
    >>> tx = optax.chain(osp.split(osp.mean_component()), osp.combine())
    >>> grads = jnp.array([[1.0, 2.0], [3.0, 5.0]])
    >>> updates, _ = tx.update(grads, tx.init(grads))
    >>> print(updates)
    [[1. 2.]
     [3. 5.]]
  """

  def update_fn(updates, state, params=None):
    del params
    updates = _require_split(updates, "combine()")
    return jax.tree.map(lambda local, big_g: local + big_g, updates.local, updates.global_), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _on_branch(
    inner: optax.GradientTransformation, branch: str, caller: str
) -> optax.GradientTransformationExtraArgs:
  inner = optax.with_extra_args_support(inner)

  def update_fn(updates, state, params=None, **extra_args):
    updates = _require_split(updates, caller)
    new_branch, state = inner.update(getattr(updates, branch), state, params, **extra_args)
    return updates._replace(**{branch: new_branch}), state

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def on_local(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Applies any optax transformation to the local branch only.

  The inner state is params-shaped, so stateful transformations (momentum,
  Adam, another split) work between :func:`split` and :func:`combine`, where a
  plain ``optax.chain`` member would be initialised for the wrong structure.

  Args:
    inner: The transformation for the local branch.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is ``inner``'s.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_split as osp
    >>> tx = optax.chain(
    ...     osp.split(osp.mean_component()),
    ...     osp.on_local(optax.sgd(0.1, momentum=0.9)),
    ...     osp.scale_global(-0.1),
    ...     osp.combine(),
    ... )
    >>> params = jnp.zeros((2, 2))
    >>> updates, state = tx.update(jnp.ones((2, 2)), tx.init(params))
    >>> print(updates)
    [[-0.1 -0.1]
     [-0.1 -0.1]]
  """
  return _on_branch(inner, "local", "on_local()")


def on_global(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Applies any optax transformation to the global branch only.

  See :func:`on_local`.

  Args:
    inner: The transformation for the global branch.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is ``inner``'s.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_split as osp
    >>> tx = optax.chain(
    ...     osp.split(osp.norm_excess(2.5)),
    ...     osp.on_global(optax.clip_by_global_norm(0.5)),
    ...     osp.combine(),
    ... )
    >>> updates, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
    >>> print(updates)
    [1.8 2.4]
  """
  return _on_branch(inner, "global_", "on_global()")


def _is_literal_zero(rate: Any) -> bool:
  """Whether ``rate`` is the number 0 itself: known when the step is traced, never a tracer."""
  return isinstance(rate, (int, float, np.integer, np.floating)) and rate == 0


def _scale(rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
  """Multiplies updates by a scalar or a schedule, keeping each leaf's dtype.

  A rate of exactly 0 (a number, not a schedule or a traced value) drops the
  branch: zeros take its place. XLA folds ``x + 0`` away but must keep
  ``0 * x`` (NaN for an infinite ``x``), so the compiled step never reads a
  dropped branch, costs no more than the optax chain it replaces, and a
  non-finite value confined to that branch stays out of the step.
  """
  if callable(rate):
    return optax.scale_by_schedule(rate)

  def update_fn(updates, state, params=None):
    del params
    if _is_literal_zero(rate):
      return jax.tree.map(jnp.zeros_like, updates), state
    return jax.tree.map(lambda u: jnp.asarray(rate, u.dtype) * u, updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def scale_local(rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
  """Multiplies the local branch by ``rate`` (a scalar or an optax schedule).

  For a descent step pass a negative rate, e.g. ``-eta_local`` from
  :func:`optax_split.split_rates`. A rate of exactly ``0`` (a number) drops
  the branch: zeros take its place, so the compiled step never reads it and
  an Inf or NaN in it stays out of the step.

  Args:
    rate: The factor, or a schedule of the step count.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_split as osp
    >>> tx = optax.chain(osp.split(osp.norm_excess(2.5)), osp.scale_local(-1.0), osp.combine())
    >>> updates, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
    >>> print(updates)
    [0. 0.]
  """
  return _on_branch(_scale(rate), "local", "scale_local()")


def scale_global(rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
  """Multiplies the global branch by ``rate`` (a scalar or an optax schedule).

  ``scale_global(0.0)`` (``alpha = -1``) drops the global component: zeros take
  its place, so the compiled step never reads it (it costs what the optax
  chain it replaces costs) and an Inf or NaN in it stays out of the step. A
  schedule or a traced rate multiplies, also when it is 0.

  Args:
    rate: The factor, or a schedule of the step count.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_split as osp
    >>> tx = optax.chain(osp.split(osp.norm_excess(2.5)), osp.scale_global(0.0), osp.combine())
    >>> updates, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
    >>> print(updates)
    [1.5 2. ]
  """
  return _on_branch(_scale(rate), "global_", "scale_global()")
