"""``guard``: drop the part of the gradient that a decomposition picks, ZClip-style."""

from typing import Any, NamedTuple

import optax

from optax_split import defaults
from optax_split._split import check_decomposition, decompose_checked
from optax_split.decompositions import Decomposition


class GuardState(NamedTuple):
  """State of :func:`guard`.

  Its own type tells the guard's statistics from those of a split's
  decomposition, e.g. for :func:`optax_split.diagnostics` (``guard/...``).

  Attributes:
    decomposition: The guard decomposition's state.
  """

  decomposition: Any


def guard(decomposition: Decomposition = defaults.GUARD) -> optax.GradientTransformation:
  """Keeps the local part of a split and drops the global part: a clip for any chain.

  With the default :func:`spike_excess` this is a ZClip-style adaptive clip:
  the part of the gradient's global norm over a z-score threshold of the
  run's recent norms is dropped, and the threshold never exceeds a multiple of
  their running mean, so it follows a slow drift of the norm and cuts a burst.
  Place it first in a chain, before the optimizer, as the presets do. It is
  ``optax.chain(split(decomposition), scale_global(0.0), combine())`` with a
  state of its own type, so that :func:`optax_split.diagnostics` reads its
  quantities as ``guard/threshold``, ``guard/spike_count``, ...

  With ``spike_excess(on_spike="skip")`` a step over the threshold, or with a
  non-finite element, becomes a zero gradient, so NaN and Inf never reach the
  optimizer after it.

  Args:
    decomposition: Which part of the gradient to drop, e.g.
      :func:`spike_excess` (the default, ``optax_split.defaults.GUARD``),
      :func:`norm_excess` for a fixed global-norm clip, or :func:`grouped` of
      either for per-tensor statistics.

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`GuardState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_split as osp
    >>> tx = optax.chain(osp.guard(osp.spike_excess(warmup=3)), optax.sgd(0.1))
    >>> params = jnp.zeros(2)
    >>> state = tx.init(params)
    >>> for g in ([1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [300.0, 400.0]):
    ...   updates, state = tx.update(jnp.array(g), state, params)
    >>> print(updates.round(6))  # the burst cut to the threshold, its direction kept
    [-0.06 -0.08]
    >>> print(osp.diagnostics(state)["guard/spike_count"])
    1

  References:
    Kumar et al., `ZClip: Adaptive Spike Mitigation for LLM Pre-Training
    <https://arxiv.org/abs/2504.02507>`_, 2025.
  """
  check_decomposition(decomposition, "guard()", "spike_excess() or norm_excess(1.0)")

  def init_fn(params):
    return GuardState(decomposition.init(params))

  def update_fn(updates, state, params=None):
    local, _, inner, _ = decompose_checked(
        decomposition, updates, state.decomposition, params, caller="guard()"
    )
    return local, GuardState(inner)

  return optax.GradientTransformation(init_fn, update_fn)
