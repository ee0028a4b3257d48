"""``diagnostics``: every diagnostic scalar of an optimizer state, by a readable name."""

from typing import Any

import jax
import jax.numpy as jnp

from optax_split._guard import GuardState
from optax_split._split import SplitState
from optax_split.decompositions.grouped import GroupedState
from optax_split.decompositions.spike_excess import SpikeExcessState

_SPIKE_FIELDS = ("norm", "threshold", "cap", "spike_count")
_FOUND = (GuardState, SplitState, SpikeExcessState, GroupedState)


def _find(tree: Any) -> list[Any]:
  """The states of :data:`_FOUND` types in ``tree``, outermost only, in flatten order."""
  leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, _FOUND))
  return [leaf for leaf in leaves if isinstance(leaf, _FOUND)]


def _decomposition_entries(state: Any, prefix: str = "") -> list[tuple[str, Any]]:
  """``(name, value)`` pairs of a decomposition's state, names relative to its role."""
  if isinstance(state, SpikeExcessState):
    return [(prefix + field, getattr(state, field)) for field in _SPIKE_FIELDS]
  if isinstance(state, GroupedState):
    return [
        entry
        for label in sorted(state.groups)
        for entry in _decomposition_entries(state.groups[label], f"{prefix}{label}/")
    ]
  return []


def _role(node: Any) -> tuple[str, list[tuple[str, Any]]]:
  if isinstance(node, GuardState):
    return "guard", _decomposition_entries(node.decomposition)
  if isinstance(node, SplitState):
    share = [] if node.global_share is None else [("global_share", node.global_share)]
    return "split", share + _decomposition_entries(node.decomposition)
  return "decomposition", _decomposition_entries(node)


def diagnostics(state: Any) -> dict[str, jax.Array]:
  """Every diagnostic of an optimizer state, as scalars under readable, stable names.

  Walks any (nested) optimizer state: ``optax.chain``'s tuples,
  ``inject_hyperparams``, ``MultiSteps``, ``apply_if_finite``, ``masked``,
  ``partition``, :func:`on_local` / :func:`on_global` and dicts. Each name is
  ``role/quantity``, the role telling which stage it comes from:

  - ``guard/...``: a :func:`guard`, such as the presets'; with
    :func:`spike_excess`, ``guard/norm`` (the gradient norm the guard saw,
    before it acted), ``guard/threshold`` (in force at the last step),
    ``guard/cap`` and ``guard/spike_count``.
  - ``split/...``: a :func:`split`: ``split/global_share`` (unless it was
    turned off), and the quantities of its decomposition as above, e.g.
    ``split/threshold`` for ``split(spike_excess())``. In the presets and
    :func:`split_step` the split is the step's, and ``split/global_share`` is
    the share of the step (squared norm) that it cut.
  - ``decomposition/...``: a decomposition's state held by some other
    transformation.

  Under :func:`grouped` the group's label comes before the quantity:
  ``guard/<label>/threshold``. When a role occurs more than once (two splits in
  one chain, a split nested in :func:`on_local`), the first in the state's
  flatten order (the order of the chain, outer before inner) keeps the plain
  name and the next ones are numbered from 2: ``split/...``, ``split_2/...``,
  ``split_3/...``. Names depend only on the optimizer's structure, never on
  values.

  The values are the state's own arrays (jit-compatible: call it inside
  ``jax.jit`` and return the dict), ready for any logger.

  Args:
    state: An optimizer state, or any pytree that holds one.

  Returns:
    A dict from name to scalar array, sorted by name (the order in which
    ``jax.jit`` returns a dict).

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_split as osp
    >>> tx = osp.split_sgd(learning_rate=100.0)
    >>> params = {"w": jnp.ones((3, 2))}
    >>> grads = {"w": jnp.array([[3.0, 0.0], [4.0, 0.0], [0.0, 0.0]])}
    >>> _, state = tx.update(grads, tx.init(params), params)
    >>> for name, value in osp.diagnostics(state).items():
    ...   print(name, value)
    guard/cap 50.0
    guard/norm 5.0
    guard/spike_count 0
    guard/threshold inf
    split/global_share 0.9...
  """
  nodes = [_role(node) for node in _find(state)]
  seen: dict[str, int] = {}
  result = {}
  for role, entries in nodes:
    seen[role] = seen.get(role, 0) + 1
    name = role if seen[role] == 1 else f"{role}_{seen[role]}"
    for quantity, value in entries:
      result[f"{name}/{quantity}"] = jnp.asarray(value)
  return dict(sorted(result.items()))
