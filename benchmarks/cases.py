"""The comparisons of the step-time benchmark: each split chain beside the nearest optax chain.

Every case pairs a chain built with ``optax_split`` with the chain a user would
otherwise write with optax alone. Both are full optimizers (they end in the
descent step), run at the same effective learning rate on the same pytree. Where
the split computes exactly the optax step (a documented special case), the
case says so and the benchmark checks it on one step before timing.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

import optax_split as osp
from optax_split.experiments.optimizers import grokfast_ema, kernels

# The effective step size (the presets' local rate); the timing does not depend on it.
LEARNING_RATE = 1e-3
# Clipping budget of the norm-based cases: far below the benchmark gradients' norm, so the
# clip is active on every step.
MAX_NORM = 1.0
# Grokfast-EMA's defaults (Lee et al. 2024): decay 0.98, lambda 2.
TREND_DECAY = 0.98
TREND_LAMBDA = 2.0
# Presets take the total rate; their local step is local_fraction (0.01) of it.
PRESET_RATE = LEARNING_RATE / 0.01


@dataclasses.dataclass(frozen=True)
class Case:
  """One row of the benchmark.

  Attributes:
    name: Short name of the split side.
    baseline: What the optax side is, in words.
    build_split: Builds the optimizer made with ``optax_split``.
    build_optax: Builds the nearest optimizer made with optax alone.
    same_step: Whether both compute the same step, so that the benchmark can
      check it.
  """

  name: str
  baseline: str
  build_split: Callable[[], optax.GradientTransformation]
  build_optax: Callable[[], optax.GradientTransformation]
  same_step: bool


def _bare(
    decomposition: osp.Decomposition, alpha: float, *, global_share: bool = False
) -> optax.GradientTransformation:
  """The bare algorithm: split, scale each branch at its reference rate, combine.

  ``global_share=False`` is ``split``'s default; the rows with ``global_share=True``
  show what the opt-in diagnostic costs.
  """
  eta_local = LEARNING_RATE
  return optax.chain(
      osp.split(decomposition, global_share=global_share),
      osp.scale_local(-eta_local),
      osp.scale_global(-(1 + alpha) * eta_local),
      osp.combine(),
  )


def _clipped(*rest: optax.GradientTransformation) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(MAX_NORM), *rest)


def _step_agc(optimizer: optax.GradientTransformation, eps: float = 0.0, *,
              every_leaf: bool = False) -> optax.GradientTransformation:
  """AGC after the optimizer on the leaves of 2+ dims: the step split in plain optax.

  ``every_leaf`` clips the biases too, each as one unit: split_sgd's step split,
  less the floor that lets a zero bias move.
  """
  agc = optax.adaptive_grad_clip(0.01, eps=eps)
  return optax.chain(optimizer, agc if every_leaf else optax.masked(agc, kernels))


CASES = (
    Case(
        # The control: one optax chain against itself. Its ratio is what the machine's noise
        # alone gives, the scale against which every other ratio is read.
        "control: optax against itself",
        "clip_by_global_norm + sgd",
        lambda: _clipped(optax.sgd(LEARNING_RATE)),
        lambda: _clipped(optax.sgd(LEARNING_RATE)),
        same_step=True,
    ),
    Case(
        "norm_excess",
        "clip_by_global_norm + sgd",
        lambda: _bare(osp.norm_excess(MAX_NORM), alpha=-1.0),
        lambda: _clipped(optax.sgd(LEARNING_RATE)),
        same_step=True,
    ),
    Case(
        "mean_component",
        "centralize + sgd",
        lambda: _bare(osp.mean_component(keep_axis=0), alpha=-1.0),
        lambda: optax.chain(optax.centralize(), optax.sgd(LEARNING_RATE)),
        same_step=True,
    ),
    Case(
        "mean_component, global_share=True",
        "centralize + sgd",
        lambda: _bare(osp.mean_component(keep_axis=0), alpha=-1.0, global_share=True),
        lambda: optax.chain(optax.centralize(), optax.sgd(LEARNING_RATE)),
        same_step=True,
    ),
    Case(
        "unit_excess",
        "adaptive_grad_clip + sgd",
        lambda: _bare(osp.unit_excess(clipping=0.01), alpha=-1.0),
        lambda: optax.chain(optax.adaptive_grad_clip(0.01), optax.sgd(LEARNING_RATE)),
        same_step=True,
    ),
    Case(
        "trend_component",
        "Grokfast-EMA (optax.ema + g + lambda*m) + sgd",
        lambda: _bare(osp.trend_component(TREND_DECAY), alpha=TREND_LAMBDA),
        lambda: optax.chain(grokfast_ema(TREND_DECAY, TREND_LAMBDA), optax.sgd(LEARNING_RATE)),
        same_step=True,
    ),
    Case(
        "trend_component, global_share=True",
        "Grokfast-EMA (optax.ema + g + lambda*m) + sgd",
        lambda: _bare(osp.trend_component(TREND_DECAY), alpha=TREND_LAMBDA, global_share=True),
        lambda: optax.chain(grokfast_ema(TREND_DECAY, TREND_LAMBDA), optax.sgd(LEARNING_RATE)),
        same_step=True,
    ),
    Case(
        "spike_excess",
        "clip_by_global_norm + sgd (a fixed threshold)",
        lambda: _bare(osp.spike_excess(max_norm=MAX_NORM), alpha=-1.0),
        lambda: _clipped(optax.sgd(LEARNING_RATE)),
        same_step=False,
    ),
    Case(
        # With AGC's floor eps: from the zero params of the step check, the default eps = 0
        # leaves all-zero units alone where optax's AGC freezes them.
        "split_step(adamw)",
        "adamw + adaptive_grad_clip on the kernels",
        lambda: osp.split_step(optax.adamw(LEARNING_RATE),
                               decomposition=osp.unit_excess(0.01, eps=1e-3, min_ndim=2)),
        lambda: _step_agc(optax.adamw(LEARNING_RATE), eps=1e-3),
        same_step=True,
    ),
    Case(
        "split_sgd (defaults)",
        "clip_by_global_norm + sgd(momentum=0.9) + adaptive_grad_clip on every leaf",
        lambda: osp.split_sgd(PRESET_RATE),
        lambda: _step_agc(_clipped(optax.sgd(LEARNING_RATE, momentum=0.9)), every_leaf=True),
        same_step=False,
    ),
    Case(
        "split_adam (defaults)",
        "clip_by_global_norm + adamw + adaptive_grad_clip on the kernels",
        lambda: osp.split_adam(PRESET_RATE),
        lambda: _step_agc(_clipped(optax.adamw(LEARNING_RATE))),
        same_step=False,
    ),
)


def make_params(size: int, key: jax.Array, *, layers: int = 4, multiple: int = 8) -> dict:
  """An MLP-like pytree of about ``size`` float32 parameters.

  ``layers`` square ``(d, d)`` kernels with ``(d,)`` biases; ``d`` is a multiple
  of ``multiple`` so that every leaf can be sharded over that many devices.
  """
  width = max(multiple, int((size / layers) ** 0.5) // multiple * multiple)
  keys = jax.random.split(key, layers)
  return {
      f"layer{i}": {
          "kernel": 0.05 * jax.random.normal(k, (width, width), jnp.float32),
          "bias": jnp.zeros((width,), jnp.float32),
      }
      for i, k in enumerate(keys)
  }


def make_grads(params: dict, key: jax.Array) -> dict:
  """Standard-normal gradients for ``params``: a global norm far above ``MAX_NORM``."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten(
      [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves, strict=True)]
  )
