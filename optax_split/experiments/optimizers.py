"""Named optimizers, each built from an effective learning rate.

The presets' local step is ``local_fraction * learning_rate`` (0.01 by
default), so they get ``learning_rate = rate / 0.01``: every optimizer here
takes the same *effective* step size for the same ``rate``. SGD-like
optimizers sweep the task's ``rates``; Adam-like ones sweep ``adaptive_rates``
(their effective rate is their learning rate, and it lives on another scale).

A name may carry options after a colon, e.g. ``split_sgd:alpha=3,decay=0.98``
or ``sgd_clip:max_norm=1``. An option that names a grid hyperparameter fixes
it or sets its grid (``sgd_clip:max_norm=0.1/1``); the presets take ``alpha``
(a grid too: ``alpha=1/3``), ``decomposition`` (``trend`` or ``mean``),
``decay`` (of the trend), ``z`` and ``cap`` (the guard's z-score and absolute
cap; ``cap=none`` keeps no cap) and ``guard=none``.
"""

import dataclasses
import itertools
from collections.abc import Callable

import optax

import optax_split as osp
from optax_split import _presets

LOCAL_FRACTION = 0.01


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """A named optimizer and the hyperparameter grid it sweeps besides the rate.

  Attributes:
    name: The name, with its options if any (``split_sgd:alpha=3``).
    build: ``build(rate, weight_decay, **grid_values) -> GradientTransformation``;
      every value may be a traced scalar.
    adaptive: Whether it sweeps the Adam-like grid of rates.
    grid: Extra hyperparameters swept with the rate, name -> values.
    description: What it is, for the report.
  """

  name: str
  build: Callable[..., optax.GradientTransformation]
  adaptive: bool
  grid: dict[str, tuple[float, ...]]
  description: str

  def configs(self, rates: tuple[float, ...]) -> list[dict[str, float]]:
    """Every combination of a rate and the grid's values, rate first."""
    names = ["rate", *self.grid]
    values = itertools.product(rates, *self.grid.values())
    return [dict(zip(names, combo, strict=True)) for combo in values]


def _decayed(scaling: optax.GradientTransformation, rate, weight_decay: float):
  """``scaling``, then decoupled weight decay ``weight_decay``, then the rate."""
  decay = optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity()
  return optax.chain(scaling, decay, optax.scale_by_learning_rate(rate))


def _sgd(rate, weight_decay):
  return _decayed(optax.identity(), rate, weight_decay)


def _sgd_clip(rate, weight_decay, max_norm):
  return optax.chain(optax.clip_by_global_norm(max_norm), _sgd(rate, weight_decay))


def _sgd_agc(rate, weight_decay, clipping):
  return optax.chain(optax.adaptive_grad_clip(clipping), _sgd(rate, weight_decay))


def _adam(rate, weight_decay):
  return optax.adamw(rate, weight_decay=weight_decay)


def _adam_clip(rate, weight_decay, max_norm):
  return optax.chain(optax.clip_by_global_norm(max_norm), _adam(rate, weight_decay))


def _rmsprop(rate, weight_decay):
  return _decayed(optax.scale_by_rms(), rate, weight_decay)


def _preset_kwargs(options: dict[str, str]) -> dict:
  """The presets' keyword arguments from ``name:key=value`` options."""
  options = dict(options)
  kwargs = {}
  if "alpha" in options and "/" not in options["alpha"]:
    kwargs["alpha"] = float(options.pop("alpha"))
  kind = options.pop("decomposition", None)
  decay = options.pop("decay", None)
  if kind == "mean":
    kwargs["decomposition"] = osp.mean_component()
  elif kind in (None, "trend"):
    if kind or decay:
      kwargs["decomposition"] = osp.trend_component(
          float(decay) if decay else _presets.DEFAULT_DECOMPOSITION.decay
      )
  else:
    raise ValueError(f"Unknown decomposition={kind!r}: use decomposition=trend or =mean.")
  if options.pop("guard", None) == "none":
    kwargs["guard"] = None
  elif "z" in options or "cap" in options:
    default = _presets.DEFAULT_GUARD
    cap = options.pop("cap", default.max_norm)
    kwargs["guard"] = osp.spike_excess(
        z=float(options.pop("z", default.z)), decay=default.decay, warmup=default.warmup,
        max_norm=None if cap in (None, "none") else float(cap),
    )
  if options:
    raise ValueError(
        f"Unknown option(s) {sorted(options)} for a preset; use alpha, decomposition, "
        "decay, z, cap or guard, e.g. split_sgd:alpha=3,decay=0.98."
    )
  return kwargs


def _preset(factory, options):
  """``build(rate, weight_decay, [alpha])`` of a preset; ``alpha`` is given when swept."""
  kwargs = _preset_kwargs(options)

  def build(rate, weight_decay, **alpha):
    # The runner logs the global share for the plots, so it is opted in here.
    return factory(rate / LOCAL_FRACTION, local_fraction=LOCAL_FRACTION,
                   weight_decay=weight_decay, global_share=True, **kwargs, **alpha)

  return build


# name -> (builder, adaptive, grid, description). Builders of the presets take
# the options first.
_BASELINES = {
    "sgd": (_sgd, False, {}, "optax.sgd"),
    "sgd_clip": (_sgd_clip, False, {"max_norm": (0.1, 1.0, 10.0)},
                 "optax.clip_by_global_norm + optax.sgd"),
    "sgd_agc": (_sgd_agc, False, {"clipping": (0.003, 0.01, 0.1)},
                "optax.adaptive_grad_clip + optax.sgd"),
    "adam": (_adam, True, {}, "optax.adamw (weight decay only where the task sets one)"),
    "adam_clip": (_adam_clip, True, {"max_norm": (1.0,)},
                  "optax.clip_by_global_norm + optax.adamw"),
    "rmsprop": (_rmsprop, True, {}, "optax.scale_by_rms (optax.rmsprop)"),
}
_PRESETS = {
    "split_sgd": (osp.split_sgd, False, "optax_split.split_sgd, learning_rate = rate / 0.01"),
    "split_adam": (osp.split_adam, True, "optax_split.split_adam, learning_rate = rate / 0.01"),
}
NAMES = (*_BASELINES, *_PRESETS)
DEFAULT_NAMES = NAMES


def _parse_options(text: str, name: str) -> dict[str, str]:
  options = {}
  for item in filter(None, text.split(",")):
    key, sep, value = item.partition("=")
    if not sep or not key or not value:
      raise ValueError(
          f"Bad option {item!r} in {name!r}: write key=value, e.g. sgd_clip:max_norm=1."
      )
    options[key.strip()] = value.strip()
  return options


def _values(text: str) -> tuple[float, ...]:
  return tuple(float(v) for v in text.split("/"))


def get(name: str) -> OptimizerSpec:
  """The optimizer called ``name`` (options after a colon).

  Example:
    >>> spec = get("sgd_clip:max_norm=1")
    >>> print(spec.grid, spec.adaptive)
    {'max_norm': (1.0,)} False
    >>> print([c["rate"] for c in get("split_sgd").configs((0.01, 0.1))])
    [0.01, 0.1]
  """
  base, _, text = name.partition(":")
  options = _parse_options(text, name)
  if base in _BASELINES:
    build, adaptive, grid, description = _BASELINES[base]
    grid = dict(grid)
    for key, value in options.items():
      if key not in grid:
        raise ValueError(
            f"{base} has no option {key!r}; it takes {sorted(grid) or 'none'}."
        )
      grid[key] = _values(value)
    return OptimizerSpec(name, build, adaptive, grid, description)
  if base in _PRESETS:
    factory, adaptive, description = _PRESETS[base]
    # Several alphas (alpha=1/3) are swept in the one program, like the rates.
    grid = {"alpha": _values(options.pop("alpha"))} if "/" in options.get("alpha", "") else {}
    return OptimizerSpec(name, _preset(factory, options), adaptive, grid, description)
  raise ValueError(f"Unknown optimizer {base!r}. Choose from {', '.join(NAMES)}.")
