"""The defaults of the presets and of :func:`optax_split.split_step`, in one place.

README.md ("Choosing the defaults") shows the evidence behind each. None holds
an absolute gradient-norm number: every bound is relative to the run.

- :data:`ALPHA`: the weight of the step's global part is ``1 + ALPHA``; -1
  drops the part that the decomposition picks.
- :data:`LOCAL_FRACTION`: ``eta_local = LOCAL_FRACTION * learning_rate``, the
  reference formulation.
- :data:`STEP_DECOMPOSITION`: the split of the step, after the optimizer and
  the rate: the part of each kernel unit's step over 1% of that unit's weight
  norm. Biases and scales (fewer than 2 dimensions) are left alone, and so is
  a unit whose weights are all zero (``eps=0``). :func:`optax_split.split_step`
  and :func:`optax_split.split_adam` use it: Adam's step is already bounded per
  element by the rate, whatever the gradient.
- :data:`SGD_STEP_DECOMPOSITION`: the same, with each leaf below 2 dimensions
  bounded too, as one unit (``bound_small_leaves=True``), for
  :func:`optax_split.split_sgd`: momentum SGD's step grows with the gradient.
- :data:`MUON_STEP_DECOMPOSITION`: ``SGD_STEP_DECOMPOSITION`` with the leaves
  named ``scale`` (the gains of Flax's LayerNorm and RMSNorm) left alone, for
  :func:`optax_split.split_muon`: Muon's kernel steps drove a read-out vector
  left alone to run away (tests/test_presets.py), and bounding the norms'
  gains cost it on ``lm_gpt`` (README, "Choosing the defaults").
- :data:`GUARD`: the ZClip-style guard on the gradient (:func:`optax_split.guard`),
  bounded relative to the run's recent norms.
- :data:`MOMENTUM`: heavy-ball momentum of :func:`optax_split.split_sgd`.

Example:
  >>> import optax_split as osp
  >>> print(osp.defaults.ALPHA, osp.defaults.STEP_DECOMPOSITION.clipping)
  -1.0 0.01
"""

import dataclasses

from optax_split.decompositions import spike_excess, unit_excess

ALPHA = -1.0
LOCAL_FRACTION = 0.01
STEP_DECOMPOSITION = unit_excess(clipping=0.01, eps=0.0, min_ndim=2)
SGD_STEP_DECOMPOSITION = dataclasses.replace(STEP_DECOMPOSITION, bound_small_leaves=True)
MUON_STEP_DECOMPOSITION = dataclasses.replace(SGD_STEP_DECOMPOSITION, exempt_leaf_names=("scale",))
GUARD = spike_excess()
MOMENTUM = 0.9
