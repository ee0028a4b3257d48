"""The registry: named optimizers, each built from an effective learning rate.

The presets' local step is ``local_fraction * learning_rate``
(``optax_split.defaults.LOCAL_FRACTION``), so they get ``learning_rate = rate /
LOCAL_FRACTION``: every optimizer here takes the same *effective* step size for
the same ``rate``. SGD-like optimizers sweep the task's ``rates``; Adam-like
ones sweep ``adaptive_rates`` (their effective rate is their learning rate, and
it lives on another scale). The rate may be a schedule (the task's warm-up and
decay times the swept rate).

Besides the textbook baselines (``sgd``, ``sgd_clip``, ``sgd_agc``, ``adam``,
``adam_clip``, ``rmsprop``) the registry holds what practitioners run:
``msgd`` and ``msgd_clip`` (SGD with momentum 0.9), ``adamw_clip``
(``clip_by_global_norm`` + AdamW, the LLM default), ``zclip`` (ZClip's
reference defaults before AdamW), ``grokfast`` (Grokfast-EMA's reference
defaults before Adam), ``muon`` (``optax.contrib.muon``), ``lamb``
(``optax.lamb``), ``ademamix`` (``optax.contrib.ademamix``, alpha swept) and
``adamw_clip_agc``, the presets' plain-optax twin (clipping, AdamW, then
``optax.adaptive_grad_clip`` on the kernels' step), and the published
update-side clippers of :mod:`~optax_split.experiments.anchors`:
``stable_adamw`` (StableAdamW), ``adam_update_rms`` (Adam with its update's RMS
clipped to 1, as Adafactor and Levanter do), ``agc_adamw`` (the step split's
per-unit rule on the gradient, before AdamW) and ``adagc`` (AdaGC's per-tensor
clip against its own history). Every optimizer takes
``weight_decay`` as a grid option (``adam:weight_decay=0/0.1``), which overrides
the task's.

A name may carry options after a colon, e.g. ``split_adam:alpha=-0.5,budget=0.02``
or ``sgd_clip:max_norm=1``. An option that names a grid hyperparameter fixes
it or sets its grid (``sgd_clip:max_norm=0.1/1``); the presets take ``alpha``
(a grid too: ``alpha=-1/0``), ``budget`` (the step split's budget relative to
the weight norm), ``units=tensor`` (one budget per leaf), ``small=bound`` (bound
the leaves below two dimensions too), ``kernels=flax`` (Flax's ``bias`` and
``scale`` leaves are small whatever their dimensions), ``exempt=scale`` (leaves
named ``scale``, the norms' gains, left alone even when the small leaves are
bounded), ``decomposition=none``
(no step split), ``z``, ``ratio`` and
``cap`` (the guard's z-score, relative cap and absolute cap; ``none`` turns a
cap off), ``grouped`` (the guard's statistics per Flax ``module`` or per
``tensor``), ``guard=none``, ``momentum`` (``split_sgd``), ``b3`` and
``slow_alpha`` (``split_adam``'s slow trend inside Adam) and ``weight_decay``.
A name that ends in ``+split`` wraps the optimizer in
:func:`optax_split.split_step` (``muon+split``).
"""

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

import optax_split as osp
from optax_split.experiments import anchors

LOCAL_FRACTION = osp.defaults.LOCAL_FRACTION
# A name that ends in this wraps the optimizer in ``optax_split.split_step``.
STEP_SPLIT = "+split"


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

  Example:
    >>> spec = OptimizerSpec("sgd_clip", _sgd_clip, adaptive=False,
    ...                      grid={"max_norm": (0.1, 1.0)})
    >>> print(spec.configs((0.01,)))
    [{'rate': 0.01, 'max_norm': 0.1}, {'rate': 0.01, 'max_norm': 1.0}]
  """

  name: str
  build: Callable[..., optax.GradientTransformation]
  adaptive: bool
  grid: Mapping[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
  description: str = ""

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


def kernels(params):
  """True for the leaves of at least two dimensions: the step split's leaf handling."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


# The baselines' builders. Decoupled weight decay comes after the direction and
# before the rate, as in optax.adamw; optax.add_decayed_weights skips a literal 0.
def _decayed(direction, rate, weight_decay):
  return optax.chain(direction, optax.add_decayed_weights(weight_decay),
                     optax.scale_by_learning_rate(rate))


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
  # ZClip drops the part of the gradient over its threshold: the guard with its settings.
  zclip = osp.guard(osp.spike_excess(**ZCLIP, max_ratio=None))
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


def _adamw_clip_agc(rate, weight_decay, b2, max_norm, clipping):
  # The presets' plain-optax twin: clipping, AdamW, then AGC on the kernels' step.
  return optax.chain(_adam_clip(rate, weight_decay, b2, max_norm),
                     optax.masked(optax.adaptive_grad_clip(clipping), kernels))


def _stable_adamw(rate, weight_decay, b2):
  return anchors.stable_adamw(rate, b2=b2, weight_decay=weight_decay)


def _adam_update_rms(rate, weight_decay, b2, threshold):
  return anchors.adam_update_rms_clip(rate, b2=b2, weight_decay=weight_decay,
                                      threshold=threshold)


def _agc_adamw(rate, weight_decay, b2, clipping):
  return anchors.agc_adamw(rate, b2=b2, weight_decay=weight_decay, clipping=clipping)


def _adagc(rate, weight_decay, b2):
  return anchors.adagc(rate, b2=b2, weight_decay=weight_decay)


_CLIPS = (0.1, 1.0, 10.0)
BASELINES: dict[str, OptimizerSpec] = {spec.name: spec for spec in (
    OptimizerSpec("sgd", _sgd, adaptive=False, description="optax.sgd"),
    OptimizerSpec("sgd_clip", _sgd_clip, adaptive=False, grid={"max_norm": _CLIPS},
                  description="optax.clip_by_global_norm + optax.sgd"),
    OptimizerSpec("sgd_agc", _sgd_agc, adaptive=False, grid={"clipping": (0.003, 0.01, 0.1)},
                  description="optax.adaptive_grad_clip + optax.sgd"),
    OptimizerSpec("adam", _adam, adaptive=True,
                  description="optax.adamw (weight decay only where the task sets one)"),
    OptimizerSpec("adam_clip", _adam_clip, adaptive=True, grid={"max_norm": (1.0,)},
                  description="optax.clip_by_global_norm + optax.adamw"),
    OptimizerSpec("rmsprop", _rmsprop, adaptive=True,
                  description="optax.scale_by_rms (optax.rmsprop)"),
    OptimizerSpec("msgd", _msgd, adaptive=False, description="optax.sgd with momentum 0.9"),
    OptimizerSpec("msgd_clip", _msgd_clip, adaptive=False, grid={"max_norm": _CLIPS},
                  description="optax.clip_by_global_norm + optax.sgd with momentum 0.9"),
    OptimizerSpec("adamw_clip", _adam_clip, adaptive=True, grid={"max_norm": _CLIPS},
                  description="optax.clip_by_global_norm + optax.adamw"),
    OptimizerSpec("zclip", _zclip, adaptive=True,
                  description="ZClip (z 2.5, EMA 0.97, warm-up 25, cap 1.0) + optax.adamw"),
    OptimizerSpec("grokfast", _grokfast, adaptive=True,
                  description="Grokfast-EMA (EMA 0.98, lambda 2) + optax.adamw"),
    OptimizerSpec("muon", _muon, adaptive=True,
                  description="optax.contrib.muon (Muon on 2-D leaves, Adam on the rest)"),
    OptimizerSpec("lamb", _lamb, adaptive=True, description="optax.lamb"),
    OptimizerSpec("ademamix", _ademamix, adaptive=True,
                  grid={"alpha": (2.0, 5.0), "b3": (0.999,)},
                  description="optax.contrib.ademamix"),
    OptimizerSpec("stable_adamw", _stable_adamw, adaptive=True,
                  description="StableAdamW: AdamW, per-tensor rate / max(1, RMS(g^2 / v_hat))"),
    OptimizerSpec("adam_update_rms", _adam_update_rms, adaptive=True,
                  grid={"threshold": (1.0,)},
                  description="optax.scale_by_adam + optax.clip_by_block_rms + decay + rate "
                  "(update RMS clipping)"),
    OptimizerSpec("agc_adamw", _agc_adamw, adaptive=True, grid={"clipping": (0.01,)},
                  description="optax.adaptive_grad_clip on the kernels' gradient + optax.adamw"),
    OptimizerSpec("adagc", _adagc, adaptive=True,
                  description="AdaGC (per-tensor clip at 1.04x an EMA of its norms) + AdamW"),
    OptimizerSpec("adamw_clip_agc", _adamw_clip_agc, adaptive=True,
                  grid={"max_norm": (1.0,), "clipping": (0.01,)},
                  description="optax.clip_by_global_norm + optax.adamw + "
                  "optax.adaptive_grad_clip on the kernels' step: split_adam's plain-optax twin"),
)}


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


def _optional(text: str | None) -> float | None:
  return None if text in (None, "none") else float(text)


def _pick(name: str, value: str, choices: dict):
  if value not in choices:
    raise ValueError(f"Unknown {name}={value!r}: use {name}=" + " or =".join(choices) + ".")
  return choices[value]


def _step_decomposition(default: osp.UnitExcess, budget: str | None = None,
                        units: str | None = None, small: str | None = None,
                        kernels: str | None = None,
                        exempt: str | None = None) -> osp.UnitExcess:
  """A preset's default split of the step with the options of the design sweep changed.

  ``budget`` (relative to the weight norm), ``units`` (``unit``: AGC's, or
  ``tensor``: one per leaf), ``small`` (the leaves below two dimensions
  ``alone`` or ``bound``) and ``kernels`` (told from small leaves by ``ndim``
  alone, or ``flax``: Flax's ``bias`` and ``scale`` leaves are small whatever
  their dimensions) and ``exempt`` (``none``, or ``scale``: leaves named
  ``scale`` left alone). An option not given keeps the preset's default.
  """
  changes = {}
  if budget is not None:
    changes["clipping"] = float(budget)
  if units is not None:
    changes["per_tensor"] = _pick("units", units, {"unit": False, "tensor": True})
  if small is not None:
    changes["bound_small_leaves"] = _pick("small", small, {"alone": False, "bound": True})
  if kernels is not None:
    changes["small_leaf_names"] = _pick("kernels", kernels, {"ndim": (), "flax": ("bias", "scale")})
  if exempt is not None:
    changes["exempt_leaf_names"] = _pick("exempt", exempt, {"none": (), "scale": ("scale",)})
  return dataclasses.replace(default, **changes)


def _preset_kwargs(options: Mapping[str, str], decomposition: osp.UnitExcess) -> dict:
  """A preset's keyword arguments from ``name:key=value`` options (an alpha grid apart).

  ``decomposition`` is the preset's default split of the step, which the
  ``budget``, ``units``, ``small``, ``kernels`` and ``exempt`` options change.
  """
  options = dict(options)
  kwargs = {}
  if "alpha" in options:
    kwargs["alpha"] = float(options.pop("alpha"))
  kind = options.pop("decomposition", None)
  unit_options = {k: options.pop(k) for k in ("budget", "units", "small", "kernels", "exempt")
                  if k in options}
  if kind == "none":
    kwargs["decomposition"] = None
  elif kind not in (None, "unit"):
    raise ValueError(f"Unknown decomposition={kind!r}: use decomposition=unit or =none.")
  elif unit_options:
    kwargs["decomposition"] = _step_decomposition(decomposition, **unit_options)
  for key in ("b3", "slow_alpha", "momentum"):
    if key in options:
      kwargs[key] = float(options.pop(key))
  guard = options.pop("guard", None)
  if guard == "none":
    kwargs["guard"] = None
  elif guard is not None:
    raise ValueError(f"Unknown guard={guard!r}: only guard=none turns the guard off.")
  elif {"z", "cap", "ratio", "grouped"} & set(options):
    default = osp.defaults.GUARD
    cap, ratio = options.pop("cap", default.max_norm), options.pop("ratio", default.max_ratio)
    kwargs["guard"] = _grouped(options.pop("grouped", None), osp.spike_excess(
        z=float(options.pop("z", default.z)), decay=default.decay, warmup=default.warmup,
        max_ratio=_optional(ratio), max_norm=_optional(cap),
    ))
  if options:
    raise ValueError(
        f"Unknown option(s) {sorted(options)} for a preset; use alpha, budget, units, small, "
        "kernels, decomposition, z, ratio, cap, grouped, guard, b3, slow_alpha, momentum or "
        "weight_decay, e.g. split_adam:budget=0.02,guard=none."
    )
  return kwargs


@dataclasses.dataclass(frozen=True)
class Preset:
  """A preset of optax-split, run at the effective rate: options give an :class:`OptimizerSpec`.

  Attributes:
    name: The preset's name (``split_adam``).
    factory: The preset itself (``optax_split.split_adam``).
    adaptive: Whether it sweeps the Adam-like grid of rates.
    description: What it is, for the report.
    b2_argument: The factory's argument that takes the task's ``b2``.

  Example:
    >>> print(PRESETS["split_sgd"].spec({"alpha": "-1/0"}).grid)
    {'alpha': (-1.0, 0.0)}
  """

  name: str
  factory: Callable[..., optax.GradientTransformation]
  adaptive: bool
  description: str
  b2_argument: str = "b2"

  def spec(self, options: Mapping[str, str] | None = None,
           name: str | None = None) -> OptimizerSpec:
    """The preset with ``options`` (strings, as after the colon of a name), named ``name``."""
    options = dict(options or {})
    # Several alphas (alpha=1/3) are swept in the one program, like the rates.
    grid = {"alpha": _values(options.pop("alpha"))} if "/" in options.get("alpha", "") else {}
    if "weight_decay" in options:
      grid["weight_decay"] = _values(options.pop("weight_decay"))
    default = inspect.signature(self.factory).parameters["decomposition"].default
    kwargs = _preset_kwargs(options, default)
    over_local_fraction = lambda r: r / LOCAL_FRACTION  # noqa: E731

    def build(rate, weight_decay, **more):
      if "b2" in more:
        more[self.b2_argument] = more.pop("b2")
      # The runner logs the global share for the plots, so it is opted in here.
      return self.factory(osp.map_schedules(over_local_fraction, rate),
                          local_fraction=LOCAL_FRACTION, weight_decay=weight_decay,
                          global_share=True, **kwargs, **more)

    return OptimizerSpec(name or self.name, build, self.adaptive, grid, self.description)


_EFFECTIVE = f"learning_rate = rate / {LOCAL_FRACTION:g}"
PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset("split_sgd", osp.split_sgd, adaptive=False,
           description=f"optax_split.split_sgd, {_EFFECTIVE}"),
    Preset("split_adam", osp.split_adam, adaptive=True,
           description=f"optax_split.split_adam, {_EFFECTIVE}"),
    Preset("split_muon", osp.split_muon, adaptive=True,
           description=f"optax_split.split_muon, {_EFFECTIVE}", b2_argument="adam_b2"),
)}
NAMES = (*BASELINES, *PRESETS)
# What `optax-split compare` runs unless told otherwise: what practitioners run
# (momentum SGD and AdamW with clipping, ZClip), Muon, and the presets at their
# defaults.
DEFAULT_NAMES = ("msgd_clip", "adamw_clip", "zclip", "muon", "split_sgd", "split_adam",
                 "split_muon")


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
  if base in BASELINES:
    spec = BASELINES[base]
    grid = dict(spec.grid)
    for key, value in options.items():
      if key not in grid and key != "weight_decay":
        raise ValueError(
            f"{base} has no option {key!r}; it takes {sorted([*grid, 'weight_decay'])}."
        )
      grid[key] = _values(value)
    return dataclasses.replace(spec, name=name, grid=grid)
  if base in PRESETS:
    return PRESETS[base].spec(options, name)
  raise ValueError(f"Unknown optimizer {base!r}. Choose from {', '.join(NAMES)}.")
