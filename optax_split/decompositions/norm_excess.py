"""``norm_excess``: the part of the updates over a global-norm budget."""

import dataclasses

import jax.numpy as jnp
import optax

from optax_split import _numerics, _validation
from optax_split.decompositions import base


@dataclasses.dataclass(frozen=True)
class NormExcess(base.Decomposition):
  """See :func:`norm_excess`."""

  max_norm: float

  def __post_init__(self):
    _validation.check_range(
        "max_norm", self.max_norm, low=0.0, fix="E.g. norm_excess(max_norm=1.0)."
    )

  def init(self, params):
    del params
    return optax.EmptyState()

  def decompose(self, updates, state, params):
    del params
    norm = jnp.sqrt(_numerics.tree_squared_norm(updates))
    kept = _numerics.kept_fraction(norm, self.max_norm)
    local, global_ = base.clipped_split(updates, kept)
    return local, global_, state, jnp.square(1 - kept).astype(base.STAT_DTYPE)


def norm_excess(max_norm: float) -> NormExcess:
  """The part of the updates over a global-norm budget.

  ``G = (1 - c) * g`` with ``c = min(1, max_norm / ||g||)``, so the local part
  ``c * g`` is ``g`` clipped to ``max_norm``. With ``alpha = -1`` the split step
  equals ``optax.clip_by_global_norm(max_norm)``, but it stays finite for a
  zero gradient (also with ``max_norm = 0``).

  Args:
    max_norm: The global-norm budget, at least 0.

  Returns:
    A :class:`Decomposition` for :func:`optax_split.split`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_split
    >>> tx = optax_split.split(optax_split.norm_excess(max_norm=2.5))
    >>> grads = jnp.array([3.0, 4.0])
    >>> parts, _ = tx.update(grads, tx.init(grads))
    >>> print(parts.local, parts.global_)
    [1.5 2. ] [1.5 2. ]

  References:
    Pascanu et al., `On the difficulty of training Recurrent Neural Networks
    <https://arxiv.org/abs/1211.5063>`_, 2013.
  """
  return NormExcess(max_norm)
