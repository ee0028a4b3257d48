"""optax-split: split gradients into global and local parts, scale them apart.

Composable Optax transformations against exploding gradients and loss spikes:
:func:`split` a gradient with a decomposition, scale or transform each branch,
:func:`combine` the branches again; split the step any optimizer makes with
:func:`split_step`; clip spikes in any chain with :func:`guard`; or use the
presets :func:`split_sgd`, :func:`split_adam` and :func:`split_muon`, built from those pieces with
the defaults in :mod:`optax_split.defaults`.
"""

from optax_split import defaults
from optax_split._diagnostics import diagnostics
from optax_split._guard import GuardState, guard
from optax_split._presets import split_adam, split_muon, split_rates, split_sgd
from optax_split._schedules import map_schedules
from optax_split._split import (
    SplitState,
    SplitUpdates,
    combine,
    on_global,
    on_local,
    scale_global,
    scale_local,
    split,
)
from optax_split._step import split_step
from optax_split.decompositions import (
    Decomposition,
    Grouped,
    GroupedState,
    MeanComponent,
    NormExcess,
    SpikeExcess,
    SpikeExcessState,
    TrendComponent,
    TrendState,
    UnitExcess,
    grouped,
    mean_component,
    norm_excess,
    spike_excess,
    trend_component,
    unit_excess,
)

__version__ = "0.7.0"

__all__ = [
    "Decomposition",
    "Grouped",
    "GroupedState",
    "GuardState",
    "MeanComponent",
    "NormExcess",
    "SpikeExcess",
    "SpikeExcessState",
    "SplitState",
    "SplitUpdates",
    "TrendComponent",
    "TrendState",
    "UnitExcess",
    "combine",
    "defaults",
    "diagnostics",
    "grouped",
    "guard",
    "map_schedules",
    "mean_component",
    "norm_excess",
    "on_global",
    "on_local",
    "scale_global",
    "scale_local",
    "spike_excess",
    "split",
    "split_adam",
    "split_muon",
    "split_rates",
    "split_sgd",
    "split_step",
    "trend_component",
    "unit_excess",
]
