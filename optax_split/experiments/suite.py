"""The suite's configuration: its optimizers and, per task, the sizes of a full and a quick run.

Per task, each optimizer is tuned over the task's grid of effective rates (and
its own grid, such as a clipping threshold); the presets run at their
defaults with only the rate swept. A preset given an ``alpha`` grid
(``split_adam:alpha=-1/0``) is reported once per ``alpha``, and the slice at
its default ``alpha`` is reported under the preset's plain name: that is how
the defaults are chosen on the whole suite.

Besides the comparison table, the suite reports per optimizer its
learning-rate sensitivity, its loss spikes (both in
:mod:`~optax_split.experiments.metrics`) and the rank of its tuned best on
each task, with the mean rank.
"""

import dataclasses

from optax_split.experiments import optimizers
from optax_split.experiments.results import Settings

# The suite's optimizers: what practitioners run (Muon, LAMB and AdEMAMix among
# them), the presets' plain-optax twin, the step split around AdamW (the preset
# without its guard) and around Muon (split_step's defaults: no guard, leaves
# below 2-D left alone), and the presets at their defaults.
OPTIMIZERS = (
    "msgd_clip", "adamw_clip", "adam", "zclip", "muon", "lamb", "ademamix",
    "adamw_clip_agc", "muon+split", "split_sgd", "split_adam", "split_adam:guard=none",
    "split_muon",
)

# Per task: the settings of the full run and of ``--quick`` (sized for CI).
# ``task`` holds the task's options, the rest the run's.
FULL = {
    # 8 vmapped seeds resolve the top rows (3 and 2 did not: the last digit
    # moved the ranks), and each grid reaches 10x past every row's best rate.
    "adding": {"task": {}, "steps": 2000, "seeds": 8,
               "adaptive_rates": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1),
               "rates": (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)},
    "deep_mlp": {"task": {}, "steps": 1000, "seeds": 8,
                 "adaptive_rates": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1),
                 "rates": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)},
    # The Adam-like grid reaches 1.0, so that the step split's best rate is inside it.
    "lm": {"task": {}, "steps": 1000, "seeds": 2,
           "adaptive_rates": (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
           "rates": (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)},
    # The practitioners' setting (GPT init, no biases, b2 0.95), with 4 paired seeds.
    "lm_gpt": {"task": {}, "steps": 1000, "seeds": 4,
               "adaptive_rates": (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
               "rates": (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)},
    # Every optimizer sweeps the decoupled weight decay, 0 (Grokfast's regime)
    # included: in this regime weight decay decides whether a run groks at all.
    "grokking": {"task": {}, "steps": 1000, "seeds": 1, "weight_decays": (0.0, 1.0),
                 "adaptive_rates": (1e-3, 3e-3), "rates": (1.0,)},
}
QUICK = {
    "adding": {"task": {"length": 6, "hidden": 4, "eval_size": 16}, "steps": 20, "seeds": 1,
               "rates": (0.01, 10.0), "adaptive_rates": (0.01,)},
    "lm": {"task": {"context": 8, "width": 8, "depth": 1, "heads": 2, "batch_size": 2,
                    "max_bytes": 50_000, "eval_windows": 4},
           "steps": 20, "seeds": 1, "rates": (0.1,), "adaptive_rates": (1e-3, 1.0)},
}
TASKS = tuple(FULL)


def size(name: str, *, quick: bool) -> dict:
  """The sizes of task ``name``: its ``--quick`` ones where it has them, else the full ones.

  Example:
    >>> print(size("adding", quick=True)["steps"], size("deep_mlp", quick=True)["steps"])
    20 1000
  """
  return (QUICK if quick else FULL).get(name, FULL[name])


def settings(sizes: dict, task_rates: tuple[float, ...],
             task_adaptive_rates: tuple[float, ...]) -> Settings:
  """The run's settings from a task's ``sizes``, the task's own grids where they set none."""
  decays = sizes.get("weight_decays")
  return Settings(sizes["steps"], sizes["seeds"], tuple(sizes.get("rates", task_rates)),
                  tuple(sizes.get("adaptive_rates", task_adaptive_rates)),
                  None if decays is None else tuple(decays))


def with_weight_decays(spec: optimizers.OptimizerSpec,
                       values: tuple[float, ...] | None) -> optimizers.OptimizerSpec:
  """``spec`` sweeping ``values`` of the weight decay too (a task's ``weight_decays``).

  A weight decay the name already sets (``adam:weight_decay=0.1``) is kept.

  Example:
    >>> print(with_weight_decays(optimizers.get("adam"), (0.0, 1.0)).grid)
    {'weight_decay': (0.0, 1.0)}
  """
  if values is None or "weight_decay" in spec.grid:
    return spec
  return dataclasses.replace(spec, grid={**spec.grid, "weight_decay": tuple(values)})
