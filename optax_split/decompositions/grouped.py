"""``grouped``: another decomposition applied to each group of leaves, with its own state."""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_split import _numerics
from optax_split.decompositions import base

_FIX = (
    "Give one label per params leaf (or per subtree), e.g. "
    "grouped(spike_excess(), lambda p: jax.tree.map(lambda _: 'all', p)), or "
    "grouped(spike_excess(), {'encoder': 'enc', 'decoder': 'dec'}) for params "
    "{'encoder': ..., 'decoder': ...}; or param_labels=None for one group per leaf."
)


class GroupedState(NamedTuple):
  """State of :func:`grouped`.

  Attributes:
    groups: The inner decomposition's state for each group, a dict from the
      group's label (a string, in sorted order) to that state. With
      ``param_labels=None`` the labels are the leaves' key paths, such as
      ``"dense/kernel"`` (``"root"`` for params that are a single array).
  """

  groups: dict[str, Any]


def _path_label(path: tuple[Any, ...]) -> str:
  return jax.tree_util.keystr(path, simple=True, separator="/") or "root"


# eq=False: ``param_labels`` may be a dict, which cannot be hashed; two
# Grouped objects are equal only when they are the same object.
@dataclasses.dataclass(frozen=True, eq=False)
class Grouped(base.Decomposition):
  """See :func:`grouped`."""

  decomposition: base.Decomposition
  param_labels: Any = None

  def __post_init__(self):
    if not isinstance(self.decomposition, base.Decomposition):
      raise TypeError(
          f"grouped() expects a decomposition such as spike_excess(), got "
          f"{self.decomposition!r}. E.g. grouped(spike_excess(), param_labels=None)."
      )
    if isinstance(self.param_labels, base.Decomposition):
      raise TypeError(
          "grouped() takes one decomposition and then `param_labels`, got a second "
          f"decomposition {self.param_labels!r}. To use two, chain two splits."
      )

  def _leaf_labels(self, tree: Any) -> list[str]:
    """One string label per leaf of ``tree``, in the order of ``jax.tree.leaves``."""
    if self.param_labels is None:
      labels = [_path_label(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]
      if len(set(labels)) < len(labels):
        twice = sorted({label for label in labels if labels.count(label) > 1})
        raise ValueError(
            f"grouped(): two leaves have the same key path label {twice}, as a key with a "
            "'/' in it can. Pass `param_labels` to name the groups yourself, e.g. "
            "param_labels=lambda p: jax.tree_util.tree_map_with_path("
            "lambda path, _: jax.tree_util.keystr(path), p)."
        )
      return labels
    labels = self.param_labels(tree) if callable(self.param_labels) else self.param_labels
    try:
      # Labels may also name whole subtrees, as optax.masked's mask may.
      per_leaf = jax.tree.map(lambda label, sub: jax.tree.map(lambda _: label, sub), labels, tree)
      leaf_labels = jax.tree.structure(tree).flatten_up_to(per_leaf)
    except (ValueError, TypeError) as error:
      raise ValueError(
          "grouped(): `param_labels` does not match the params' tree structure:\n"
          f"  param_labels: {jax.tree.structure(labels)}\n"
          f"  params:       {jax.tree.structure(tree)}\n" + _FIX
      ) from error
    names = {}
    for label in leaf_labels:
      if not isinstance(label, (str, int)) or isinstance(label, bool):
        raise TypeError(
            f"grouped(): `param_labels` must give str (or int) labels, got {label!r}. " + _FIX
        )
      if names.setdefault(str(label), label) != label:
        raise ValueError(
            f"grouped(): `param_labels` holds {names[str(label)]!r} and {label!r}, which "
            "read the same. Use distinct strings."
        )
    return [str(label) for label in leaf_labels]

  def _masks(self, tree: Any) -> dict[str, Any]:
    """For each label (sorted), ``tree`` with the other groups' leaves masked out."""
    leaves, treedef = jax.tree.flatten(tree)
    leaf_labels = self._leaf_labels(tree)
    return {
        label: treedef.unflatten(
            [x if own == label else optax.MaskedNode()
             for x, own in zip(leaves, leaf_labels, strict=True)]
        )
        for label in sorted(set(leaf_labels))
    }

  def init(self, params):
    return GroupedState(
        {label: self.decomposition.init(group) for label, group in self._masks(params).items()}
    )

  def decompose(self, updates, state, params):
    groups = self._masks(updates)
    if set(groups) != set(state.groups):
      raise ValueError(
          "grouped(): the updates' groups differ from those the state was made for:\n"
          f"  updates: {sorted(groups)}\n  state:   {sorted(state.groups)}\n"
          "Initialise with params of the same structure as the updates."
      )
    param_groups = dict.fromkeys(groups) if params is None else self._masks(params)
    local_parts, global_parts, new_states, shares, squares = {}, {}, {}, {}, {}
    for label, group in groups.items():
      local, global_, new_states[label], shares[label] = self.decomposition.decompose(
          group, state.groups[label], param_groups[label]
      )
      local_parts[label] = jax.tree.leaves(local)
      global_parts[label] = jax.tree.leaves(global_)
      # ||g_k||^2: the same sum as the inner norm-based decompositions' own, so
      # the compiler computes it once (and drops it when the share is unused).
      squares[label] = _numerics.tree_squared_norm(group)
    if len(groups) == 1:
      # One group is the inner decomposition itself, to the bit.
      (share,) = shares.values()
    else:
      share = _combined_share(shares, squares, groups)

    leaf_labels = self._leaf_labels(updates)
    treedef = jax.tree.structure(updates)

    def reassemble(parts):
      iterators = {label: iter(leaves) for label, leaves in parts.items()}
      return treedef.unflatten([next(iterators[label]) for label in leaf_labels])

    return reassemble(local_parts), reassemble(global_parts), GroupedState(new_states), share


def _combined_share(shares: dict, squares: dict, groups: dict) -> jax.Array:
  """``sum_k share_k ||g_k||^2 / sum_k ||g_k||^2``, finite where only the squares overflow.

  A finite step whose squared norm overflows would give inf / inf; only then
  (``lax.cond``: no cost on other steps) the weights are taken again from the
  groups' norms relative to the largest one.
  """
  labels = sorted(groups)
  total_sq = sum(squares[k] for k in labels)

  def plain() -> jax.Array:
    return base.share(sum(shares[k] * squares[k] for k in labels), total_sq)

  def rescaled() -> jax.Array:
    norms = [_numerics.tree_norm(groups[k]).astype(base.STAT_DTYPE) for k in labels]
    largest = functools.reduce(jnp.maximum, norms)
    weights = [jnp.square(_numerics.safe_divide(norm, largest)) for norm in norms]
    return base.share(sum(shares[k] * w for k, w in zip(labels, weights, strict=True)),
                      sum(weights))

  return jax.lax.cond(total_sq == jnp.inf, rescaled, plain)


def grouped(
    decomposition: base.Decomposition,
    param_labels: Any | Callable[[optax.Params], Any] | None = None,
) -> Grouped:
  """Applies ``decomposition`` to each group of leaves separately, each with its own state.

  Each group is decomposed as if it were the whole updates: a norm-based
  decomposition measures the group's own norm and keeps its own statistics, so
  ``split(grouped(spike_excess()))`` is ZClip per tensor (as AdaGC clips each
  tensor against its own history), and labels by module give per-module
  statistics. The group passed to the inner decomposition is the updates with
  the other groups' leaves replaced by ``optax.MaskedNode()`` (as in
  ``optax.partition``), and likewise its params.

  With a single group the result equals ``decomposition``'s, bit for bit.
  ``global_share`` combines the groups: ``sum_k ||G_k||^2 / sum_k ||g_k||^2``.

  Args:
    decomposition: The decomposition to apply to each group, e.g.
      :func:`spike_excess`.
    param_labels: As ``optax.partition`` takes them: a pytree of labels (str or
      int) with the params' structure, or a prefix of it (a label for a whole
      subtree), or a function of the params that returns one. None (the
      default) makes every leaf its own group, labelled by its key path
      (``"dense/kernel"``; two leaves whose paths read the same are an error).

  Returns:
    A :class:`Decomposition` whose state is a :class:`GroupedState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_split as osp
    >>> params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    >>> tx = osp.split(osp.grouped(osp.norm_excess(max_norm=1.0)))
    >>> parts, state = tx.update({"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.6, 0.8])},
    ...                          tx.init(params))
    >>> print(parts.local["a"], parts.local["b"])
    [0.6 0.8] [0.6 0.8]
    >>> print(sorted(state.decomposition.groups))
    ['a', 'b']

  References:
    Wang et al., `AdaGC: Improving Training Stability for Large Language Model
    Pretraining <https://arxiv.org/abs/2502.11034>`_, 2025.
  """
  return Grouped(decomposition, param_labels)
