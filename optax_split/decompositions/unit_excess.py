"""``unit_excess``: the part of each unit's update over a budget set by its weight norm (AGC)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_split import _numerics, _validation
from optax_split.decompositions import base


def _leaf_name(path: tuple) -> str | None:
  """The last key of a leaf's path, as Flax names leaves (``kernel``, ``bias``, ``scale``)."""
  key = path[-1] if path else None
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.GetAttrKey):
    return key.name
  return None


def _unit_axes(x: jax.Array) -> tuple[int, ...]:
  """Axes that make one unit, as in ``optax.adaptive_grad_clip``."""
  if x.ndim <= 1:
    return tuple(range(x.ndim))
  if x.ndim <= 3:
    return (0,)
  if x.ndim <= 5:
    return tuple(range(x.ndim - 1))
  raise ValueError(
      f"unit_excess does not know the units of a leaf of shape {x.shape}. Reshape "
      "it, or leave it out with optax.masked(...)."
  )


@dataclasses.dataclass(frozen=True)
class UnitExcess(base.Decomposition):
  """See :func:`unit_excess`."""

  clipping: float = 0.01
  eps: float = 1e-3
  min_ndim: int = 0
  bound_small_leaves: bool = False
  small_leaf_names: tuple[str, ...] = ()
  per_tensor: bool = False
  exempt_leaf_names: tuple[str, ...] = ()

  def __post_init__(self):
    _validation.check_range(
        "clipping", self.clipping, low=0.0, low_inclusive=False,
        fix="E.g. unit_excess(clipping=0.01).",
    )
    _validation.check_range("eps", self.eps, low=0.0, fix="E.g. unit_excess(eps=1e-3).")
    if not isinstance(self.min_ndim, int) or isinstance(self.min_ndim, bool) or self.min_ndim < 0:
      raise ValueError(
          f"`min_ndim` must be an int of at least 0, got {self.min_ndim!r}. E.g. "
          "unit_excess(min_ndim=2) leaves biases and scales alone."
      )
    for name in ("bound_small_leaves", "per_tensor"):
      if not isinstance(getattr(self, name), bool):
        raise TypeError(
            f"`{name}` must be True or False, got {getattr(self, name)!r}. "
            f"E.g. unit_excess(min_ndim=2, {name}=True)."
        )
    for name, example in (("small_leaf_names", "('bias', 'scale')"),
                          ("exempt_leaf_names", "('scale',)")):
      names = getattr(self, name)
      if not isinstance(names, tuple) or not all(isinstance(n, str) for n in names):
        raise TypeError(
            f"`{name}` must be a tuple of leaf names, got {names!r}. "
            f"E.g. unit_excess(min_ndim=2, {name}={example})."
        )

  def init(self, params):
    del params
    return optax.EmptyState()

  def _role(self, path: tuple, leaf: jax.Array) -> str:
    """``exempt`` (left alone by name), ``small`` (a bias, a scale) or ``kernel``."""
    name = _leaf_name(path)
    if name in self.exempt_leaf_names:
      return "exempt"
    return "small" if leaf.ndim < self.min_ndim or name in self.small_leaf_names else "kernel"

  def _axes(self, x: jax.Array, small: bool) -> tuple[int, ...]:
    """The axes one unit of ``x`` spans: all of them for a small leaf or ``per_tensor``."""
    return tuple(range(x.ndim)) if small or self.per_tensor else _unit_axes(x)

  def _leaf(self, g: jax.Array, p_sq: jax.Array, role: str,
            kernel_rms: jax.Array) -> tuple[jax.Array, ...]:
    small = role != "kernel"
    if role == "exempt" or (small and not self.bound_small_leaves):
      # Left alone: wholly local.
      total_sq = _numerics.squared_norm(g)
      return g, jnp.zeros_like(g), jnp.zeros_like(total_sq), total_sq
    # A small leaf is one unit; its floor lets a zero-initialised bias move as far
    # per element as a kernel weight of the tree's RMS may.
    g_sq = _numerics.squared_norm(g, axis=self._axes(g, small), keepdims=True)
    p_norm = jnp.sqrt(p_sq)
    if small:
      p_norm = jnp.maximum(p_norm, np.sqrt(g.size) * kernel_rms)
    budget = self.clipping * jnp.maximum(p_norm, self.eps)
    # A zero budget (a zero unit with eps = 0) would freeze the unit for good:
    # such a unit is left alone instead.
    kept = jnp.where(budget > 0, _numerics.kept_fraction(jnp.sqrt(g_sq), budget), 1)
    local = (kept * g).astype(g.dtype)
    global_ = ((1 - kept) * g).astype(g.dtype)
    # Both sums in one reduction: XLA would rewrite a lone sum of ``g_sq`` into a
    # second full pass over the squares of ``g``.
    sums = jnp.stack([jnp.square(1 - kept) * g_sq, g_sq]).reshape(2, -1).sum(axis=1)
    global_sq, total_sq = sums[0], sums[1]
    return local, global_, global_sq, total_sq

  def _kernel_rms(self, p_sq, params, roles) -> jax.Array:
    """RMS of the kernels' weights, the leaves that are neither small nor exempt (0 if none)."""
    kernels = [(unit_sq, p.size) for unit_sq, p, role in zip(
        jax.tree.leaves(p_sq), jax.tree.leaves(params), jax.tree.leaves(roles), strict=True)
        if role == "kernel" and p.size]
    if not self.bound_small_leaves or not kernels:
      return jnp.zeros([], jnp.float32)
    total = sum(jnp.sum(unit_sq) for unit_sq, _ in kernels)
    return jnp.sqrt(total / sum(size for _, size in kernels))

  def decompose(self, updates, state, params):
    if params is None:
      raise ValueError(
          "unit_excess needs the params, to set each unit's budget from its weight "
          "norm. Pass them: tx.update(grads, state, params)."
      )
    # Python strings, decided at trace time from each leaf's path and shape.
    roles = jax.tree_util.tree_map_with_path(self._role, params)
    # Each unit's squared weight norm.
    p_sq = jax.tree.map(
        lambda p, role: _numerics.squared_norm(p, axis=self._axes(p, role != "kernel"),
                                               keepdims=True),
        params, roles)
    if self.bound_small_leaves:
      # The small leaves' floor sums the norms of every kernel. Left to fuse, XLA
      # read each kernel again for that sum, after nothing orders that read before
      # the kernel's in-place (donated) update, so it kept a copy of every kernel.
      # Computed once here, each kernel is read only before its own update.
      p_sq = jax.lax.optimization_barrier(p_sq)
    kernel_rms = self._kernel_rms(p_sq, params, roles)
    leaf = lambda g, unit_sq, role: self._leaf(g, unit_sq, role, kernel_rms)  # noqa: E731
    local, global_, global_sq, total_sq = base.map_unzip(leaf, 4, updates, p_sq, roles)
    share = base.share(sum(jax.tree.leaves(global_sq), 0.0), sum(jax.tree.leaves(total_sq), 0.0))
    return local, global_, state, share


def unit_excess(
    clipping: float = 0.01, eps: float = 1e-3, *, min_ndim: int = 0,
    bound_small_leaves: bool = False, small_leaf_names: tuple[str, ...] = (),
    per_tensor: bool = False, exempt_leaf_names: tuple[str, ...] = (),
) -> UnitExcess:
  """The part of each unit's update over a budget set by its weight norm.

  For each unit (the rows of a ``(in, out)`` kernel's output column, a conv
  filter, a whole bias), ``G = (1 - c) * g`` with
  ``c = min(1, clipping * max(||W||, eps) / ||g||)``. With ``alpha = -1`` the
  split step equals ``optax.adaptive_grad_clip(clipping, eps)`` (AGC). Needs
  ``params`` in ``update``.

  On a gradient this is AGC; on the *step* (after the optimizer and the rate,
  see :func:`optax_split.split_step`) it is a trust budget: no unit moves by
  more than ``clipping`` times its weight norm in one step, the per-unit form
  of LAMB's and LARS's trust ratio. There ``eps=0`` and ``min_ndim=2`` keep it
  free of absolute numbers: a unit whose budget is zero (all-zero weights and
  ``eps = 0``) is left alone rather than frozen, and leaves of fewer than
  ``min_ndim`` dimensions (biases, LayerNorm scales) are wholly local.

  Args:
    clipping: Largest allowed ratio of a unit's update norm to its weight norm.
    eps: Floor on the weight norm, so zero-initialised units can move; with
      ``eps=0`` a unit of zero weight norm is not clipped at all.
    min_ndim: Leaves with fewer dimensions are left alone (``0``: none is),
      unless ``bound_small_leaves``.
    bound_small_leaves: Bound the small leaves (fewer than ``min_ndim``
      dimensions, or named in ``small_leaf_names``) too, each as one unit
      whose weight norm counts as at least ``sqrt(size) * r``, ``r`` the RMS
      of the kernels' weights: a zero-initialised bias may then move per
      element by ``clipping * r``, as far as a kernel weight of that RMS, with
      no absolute number.
    small_leaf_names: Leaves whose name (the last key of their path) is listed
      are small leaves whatever their dimensions: ``('bias', 'scale')`` tells
      Flax's biases and LayerNorm scales from its kernels, such as the
      ``(heads, head_dim)`` biases of ``nn.MultiHeadDotProductAttention``.
    per_tensor: One unit per leaf (LAMB's granularity) instead of AGC's units.
    exempt_leaf_names: Leaves whose name is listed are left alone (wholly
      local) whatever their dimensions, even with ``bound_small_leaves``:
      ``('scale',)`` exempts the gains of Flax's ``LayerNorm`` and ``RMSNorm``.

  Returns:
    A :class:`Decomposition` for :func:`optax_split.split`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_split
    >>> tx = optax_split.split(optax_split.unit_excess(clipping=0.1))
    >>> params, grads = jnp.array([3.0, 4.0]), jnp.array([1.0, 0.0])
    >>> parts, _ = tx.update(grads, tx.init(params), params)
    >>> print(parts.local)
    [0.5 0. ]

  References:
    Brock et al., `High-Performance Large-Scale Image Recognition Without
    Normalization <https://arxiv.org/abs/2102.06171>`_, 2021.
  """
  return UnitExcess(clipping, eps, min_ndim, bound_small_leaves, small_leaf_names, per_tensor,
                    exempt_leaf_names)
