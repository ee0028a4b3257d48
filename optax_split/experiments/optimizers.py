"""Named optimizers, each built from an effective learning rate.

The presets' local step is ``local_fraction * learning_rate`` (0.01 by
default), so they get ``learning_rate = rate / 0.01``: every optimizer here
takes the same *effective* step size for the same ``rate``. SGD-like
optimizers sweep the task's ``rates``; Adam-like ones sweep ``adaptive_rates``
(their effective rate is their learning rate, and it lives on another scale).
The rate may be a schedule (the task's warm-up and decay times the swept rate).

Besides the textbook baselines (``sgd``, ``sgd_clip``, ``sgd_agc``, ``adam``,
``adam_clip``, ``rmsprop``) the registry holds what practitioners run:
``msgd`` and ``msgd_clip`` (SGD with momentum 0.9), ``adamw_clip``
(``clip_by_global_norm`` + AdamW, the LLM default), ``zclip`` (ZClip's
reference defaults before AdamW), ``grokfast`` (Grokfast-EMA's reference
defaults before Adam), ``muon`` (``optax.contrib.muon``), ``lamb``
(``optax.lamb``), ``ademamix`` (``optax.contrib.ademamix``, alpha swept) and
``adamw_clip_agc``, the presets' plain-optax twin (clipping, AdamW, then
``optax.adaptive_grad_clip`` on the kernels' step). Every optimizer takes
``weight_decay`` as a grid option (``adam:weight_decay=0/0.1``), which overrides
the task's.

A name may carry options after a colon, e.g. ``split_adam:alpha=-0.5,budget=0.02``
or ``sgd_clip:max_norm=1``. An option that names a grid hyperparameter fixes
it or sets its grid (``sgd_clip:max_norm=0.1/1``); the presets take ``alpha``
(a grid too: ``alpha=-1/0``), ``budget`` (the step split's budget relative to
the weight norm), ``decomposition=none`` (no step split), ``z``, ``ratio`` and
``cap`` (the guard's z-score, relative cap and absolute cap; ``none`` turns a
cap off), ``grouped`` (the guard's statistics per Flax ``module`` or per
``tensor``), ``guard=none``, ``momentum`` (``split_sgd``), ``b3`` and
``slow_alpha`` (``split_adam``'s slow trend inside Adam) and ``weight_decay``.
A name that ends in ``+split`` wraps the optimizer in
:func:`optax_split.split_step` (``muon+split``).
"""

import dataclasses
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

import optax_split as osp
from optax_split import _presets

LOCAL_FRACTION = 0.01


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """A named optimizer and the hyperparameter grid it sweeps besides the rate.

  Attributes:
    name: The name, with its options if any (``split_sgd:alpha=3``).
    build: ``build(rate, weight_decay, **grid_values) -> GradientTransformation``,
      with ``b2`` (Adam's second-moment decay, set by the task) too when
      ``adaptive``; every value may be a traced scalar, and ``rate`` a schedule.
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


# ZClip's reference defaults (Kumar et al. 2025): EMA decay 0.97, z 2.5, 25
# warm-up steps, an absolute cap of 1.0.
ZCLIP = {"z": 2.5, "decay": 0.97, "warmup": 25, "max_norm": 1.0}
# Grokfast-EMA's reference defaults (Lee et al. 2024): EMA decay 0.98, lambda 2.
GROKFAST = {"decay": 0.98, "lamb": 2.0}


def _decayed(scaling: optax.GradientTransformation, rate, weight_decay):
  """``scaling``, then decoupled weight decay ``weight_decay``, then the rate."""
  decay = (optax.identity() if isinstance(weight_decay, (int, float)) and weight_decay == 0
           else optax.add_decayed_weights(weight_decay))
  return optax.chain(scaling, decay, optax.scale_by_learning_rate(rate))


def grokfast_ema(decay: float, lamb: float) -> optax.GradientTransformation:
  """Grokfast-EMA written with plain optax: ``g + lamb * m``, ``m`` the EMA of ``g``.

  As in the reference code the average starts at the first gradient. Optax has
  no transformation that adds a slow average back onto the gradient, so this is
  the short custom one a user would write; its state is ``optax.EmaState``.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = grokfast_ema(decay=0.5, lamb=2.0)
    >>> state = tx.init(jnp.zeros(2))
    >>> _, state = tx.update(jnp.array([2.0, 0.0]), state)
    >>> updates, _ = tx.update(jnp.array([0.0, 2.0]), state)
    >>> print(updates)
    [2. 4.]
  """
  ema = optax.ema(decay, debias=False)

  def update_fn(updates, state, params=None):
    del params
    first = state.count == 0
    ema_state = state._replace(
        ema=jax.tree.map(lambda g, m: jnp.where(first, g, m), updates, state.ema)
    )
    slow, ema_state = ema.update(updates, ema_state)
    return jax.tree.map(lambda g, m: g + lamb * m, updates, slow), ema_state

  return optax.GradientTransformation(ema.init, update_fn)


def _sgd(rate, weight_decay):
  return _decayed(optax.identity(), rate, weight_decay)


def _sgd_clip(rate, weight_decay, max_norm):
  return optax.chain(optax.clip_by_global_norm(max_norm), _sgd(rate, weight_decay))


def _sgd_agc(rate, weight_decay, clipping):
  return optax.chain(optax.adaptive_grad_clip(clipping), _sgd(rate, weight_decay))


def _msgd(rate, weight_decay):
  return _decayed(optax.trace(decay=0.9), rate, weight_decay)


def _msgd_clip(rate, weight_decay, max_norm):
  return optax.chain(optax.clip_by_global_norm(max_norm), _msgd(rate, weight_decay))


def _adam(rate, weight_decay, b2):
  return optax.adamw(rate, b2=b2, weight_decay=weight_decay)


def _adam_clip(rate, weight_decay, b2, max_norm):
  return optax.chain(optax.clip_by_global_norm(max_norm), _adam(rate, weight_decay, b2))


def _zclip(rate, weight_decay, b2):
  # ZClip drops the part of the gradient over its threshold: spike_excess at alpha = -1.
  zclip = optax.chain(osp.split(osp.spike_excess(**ZCLIP, max_ratio=None), global_share=False),
                      osp.scale_global(0.0), osp.combine())
  return optax.chain(zclip, _adam(rate, weight_decay, b2))


def _grokfast(rate, weight_decay, b2):
  return optax.chain(grokfast_ema(**GROKFAST), _adam(rate, weight_decay, b2))


def _rmsprop(rate, weight_decay, b2):
  return _decayed(optax.scale_by_rms(decay=b2), rate, weight_decay)


def _muon(rate, weight_decay, b2):
  # optax's defaults: Muon on every 2-D leaf, Adam (at the same rate) on the rest.
  return optax.contrib.muon(rate, weight_decay=weight_decay, adam_b2=b2,
                            adam_weight_decay=weight_decay)


def _lamb(rate, weight_decay, b2):
  return optax.lamb(rate, b2=b2, weight_decay=weight_decay)


def _ademamix(rate, weight_decay, b2, alpha, b3):
  return optax.contrib.ademamix(rate, b2=b2, b3=b3, alpha=alpha, weight_decay=weight_decay)


def kernels(params):
  """True for the leaves of at least two dimensions: the step split's leaf handling."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def _adamw_clip_agc(rate, weight_decay, b2, max_norm, clipping):
  # The presets' plain-optax twin: clipping, AdamW, then AGC on the kernels' step.
  return optax.chain(_adam_clip(rate, weight_decay, b2, max_norm),
                     optax.masked(optax.adaptive_grad_clip(clipping), kernels))


def _preset_kwargs(options: dict[str, str]) -> dict:
  """The presets' keyword arguments from ``name:key=value`` options."""
  options = dict(options)
  kwargs = {}
  if "alpha" in options and "/" not in options["alpha"]:
    kwargs["alpha"] = float(options.pop("alpha"))
  kind = options.pop("decomposition", None)
  budget = options.pop("budget", None)
  if kind == "none":
    kwargs["decomposition"] = None
  elif kind not in (None, "unit"):
    raise ValueError(f"Unknown decomposition={kind!r}: use decomposition=unit or =none.")
  elif budget is not None:
    default = _presets.DEFAULT_DECOMPOSITION
    kwargs["decomposition"] = osp.unit_excess(float(budget), eps=default.eps,
                                              min_ndim=default.min_ndim)
  for key in ("b3", "slow_alpha", "momentum"):
    if key in options:
      kwargs[key] = float(options.pop(key))
  guard = options.pop("guard", None)
  if guard == "none":
    kwargs["guard"] = None
  elif guard is not None:
    raise ValueError(f"Unknown guard={guard!r}: only guard=none turns the guard off.")
  elif {"z", "cap", "ratio", "grouped"} & set(options):
    default = _presets.DEFAULT_GUARD
    cap, ratio = options.pop("cap", default.max_norm), options.pop("ratio", default.max_ratio)
    kwargs["guard"] = _grouped(options.pop("grouped", None), osp.spike_excess(
        z=float(options.pop("z", default.z)), decay=default.decay, warmup=default.warmup,
        max_ratio=None if ratio in (None, "none") else float(ratio),
        max_norm=None if cap in (None, "none") else float(cap),
    ))
  if options:
    raise ValueError(
        f"Unknown option(s) {sorted(options)} for a preset; use alpha, budget, decomposition, "
        "z, ratio, cap, grouped, guard, b3, slow_alpha, momentum or weight_decay, e.g. "
        "split_adam:budget=0.02,guard=none."
    )
  return kwargs


def module_labels(params) -> dict:
  """Each leaf labelled by its Flax module: the first key under ``"params"``.

  Example:
    >>> import jax.numpy as jnp
    >>> params = {"params": {"Block_0": {"Dense_0": {"kernel": jnp.ones(2)}},
    ...                      "Embed_0": {"embedding": jnp.ones(2)}}}
    >>> print(module_labels(params))
    {'params': {'Block_0': {'Dense_0': {'kernel': 'Block_0'}}, 'Embed_0': {'embedding': 'Embed_0'}}}
  """
  def label(path, _):
    keys = [getattr(k, "key", str(k)) for k in path]
    return str(keys[1] if keys[0] == "params" and len(keys) > 1 else keys[0])

  return jax.tree_util.tree_map_with_path(label, params)


def _grouped(kind: str | None, guard: osp.Decomposition) -> osp.Decomposition:
  """The guard with its statistics per module (``module``) or per tensor (``tensor``)."""
  if kind is None:
    return guard
  if kind == "module":
    return osp.grouped(guard, module_labels)
  if kind == "tensor":
    return osp.grouped(guard)
  raise ValueError(f"Unknown grouped={kind!r}: use grouped=module or grouped=tensor.")


def _over_local_fraction(rate):
  """The presets' ``learning_rate`` for an effective ``rate`` (a number or a schedule)."""
  if callable(rate):
    return lambda count: rate(count) / LOCAL_FRACTION
  return rate / LOCAL_FRACTION


def _preset(factory, options, adaptive):
  """``build(rate, weight_decay, [b2], [alpha])`` of a preset; ``alpha`` is given when swept."""
  kwargs = _preset_kwargs(options)

  def build(rate, weight_decay, **more):
    # The runner logs the global share for the plots, so it is opted in here.
    return factory(_over_local_fraction(rate), local_fraction=LOCAL_FRACTION,
                   weight_decay=weight_decay, global_share=True, **kwargs, **more)

  if not adaptive:
    return build
  return lambda rate, weight_decay, b2, **alpha: build(rate, weight_decay, b2=b2, **alpha)


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
    "msgd": (_msgd, False, {}, "optax.sgd with momentum 0.9"),
    "msgd_clip": (_msgd_clip, False, {"max_norm": (0.1, 1.0, 10.0)},
                  "optax.clip_by_global_norm + optax.sgd with momentum 0.9"),
    "adamw_clip": (_adam_clip, True, {"max_norm": (0.1, 1.0, 10.0)},
                   "optax.clip_by_global_norm + optax.adamw"),
    "zclip": (_zclip, True, {}, "ZClip (z 2.5, EMA 0.97, warm-up 25, cap 1.0) + optax.adamw"),
    "grokfast": (_grokfast, True, {}, "Grokfast-EMA (EMA 0.98, lambda 2) + optax.adamw"),
    "muon": (_muon, True, {}, "optax.contrib.muon (Muon on 2-D leaves, Adam on the rest)"),
    "lamb": (_lamb, True, {}, "optax.lamb"),
    "ademamix": (_ademamix, True, {"alpha": (2.0, 5.0), "b3": (0.999,)},
                 "optax.contrib.ademamix"),
    "adamw_clip_agc": (_adamw_clip_agc, True, {"max_norm": (1.0,), "clipping": (0.01,)},
                       "optax.clip_by_global_norm + optax.adamw + optax.adaptive_grad_clip "
                       "on the kernels' step: split_adam's plain-optax twin"),
}
PRESETS = {
    "split_sgd": (osp.split_sgd, False, "optax_split.split_sgd, learning_rate = rate / 0.01"),
    "split_adam": (osp.split_adam, True, "optax_split.split_adam, learning_rate = rate / 0.01"),
}
NAMES = (*_BASELINES, *PRESETS)
# What `optax-split compare` runs unless told otherwise: what practitioners run
# (momentum SGD and AdamW with clipping, ZClip), Muon (the suite's strongest
# baseline: #2 on adding and on lm, results/suite/suite.md), the presets at
# their defaults, and the step split around Muon.
DEFAULT_NAMES = ("msgd_clip", "adamw_clip", "zclip", "muon", "split_sgd", "split_adam",
                 "muon+split")


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


# A name that ends in this wraps the optimizer in ``optax_split.split_step``.
STEP_SPLIT = "+split"


def _with_step_split(spec: OptimizerSpec) -> OptimizerSpec:
  """``spec`` with its step split by ``optax_split.split_step`` at its defaults."""

  def build(*args, **kwargs):
    return osp.split_step(spec.build(*args, **kwargs))

  return dataclasses.replace(spec, name=spec.name + STEP_SPLIT, build=build,
                             description=f"{spec.description}, its step split by "
                             "optax_split.split_step (defaults)")


def get(name: str) -> OptimizerSpec:
  """The optimizer called ``name`` (options after a colon; ``+split`` wraps it in ``split_step``).

  Example:
    >>> spec = get("sgd_clip:max_norm=1")
    >>> print(spec.grid, spec.adaptive)
    {'max_norm': (1.0,)} False
    >>> print([c["rate"] for c in get("split_sgd").configs((0.01, 0.1))])
    [0.01, 0.1]
    >>> print(get("muon+split").name)
    muon+split
  """
  if name.endswith(STEP_SPLIT):
    return _with_step_split(get(name.removesuffix(STEP_SPLIT)))
  base, _, text = name.partition(":")
  options = _parse_options(text, name)
  if base in _BASELINES:
    build, adaptive, grid, description = _BASELINES[base]
    grid = dict(grid)
    for key, value in options.items():
      if key not in grid and key != "weight_decay":
        raise ValueError(
            f"{base} has no option {key!r}; it takes {sorted([*grid, 'weight_decay'])}."
        )
      grid[key] = _values(value)
    return OptimizerSpec(name, build, adaptive, grid, description)
  if base in PRESETS:
    factory, adaptive, description = PRESETS[base]
    # Several alphas (alpha=1/3) are swept in the one program, like the rates.
    grid = {"alpha": _values(options.pop("alpha"))} if "/" in options.get("alpha", "") else {}
    if "weight_decay" in options:
      grid["weight_decay"] = _values(options.pop("weight_decay"))
    return OptimizerSpec(name, _preset(factory, options, adaptive), adaptive, grid, description)
  raise ValueError(f"Unknown optimizer {base!r}. Choose from {', '.join(NAMES)}.")
