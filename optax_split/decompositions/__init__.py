"""Decompositions: each picks the global component ``G`` of an updates pytree.

One module per decomposition; :mod:`~optax_split.decompositions.base` holds the
interface and the helpers they share. Everything public is re-exported from
:mod:`optax_split`.
"""

from optax_split.decompositions.base import Decomposition
from optax_split.decompositions.grouped import Grouped, GroupedState, grouped
from optax_split.decompositions.mean import MeanComponent, mean_component
from optax_split.decompositions.norm_excess import NormExcess, norm_excess
from optax_split.decompositions.spike_excess import SpikeExcess, SpikeExcessState, spike_excess
from optax_split.decompositions.trend import TrendComponent, TrendState, trend_component
from optax_split.decompositions.unit_excess import UnitExcess, unit_excess

__all__ = [
    "Decomposition",
    "Grouped",
    "GroupedState",
    "MeanComponent",
    "NormExcess",
    "SpikeExcess",
    "SpikeExcessState",
    "TrendComponent",
    "TrendState",
    "UnitExcess",
    "grouped",
    "mean_component",
    "norm_excess",
    "spike_excess",
    "trend_component",
    "unit_excess",
]
