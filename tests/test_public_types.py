"""Each exported class refuses the bad input that its factory refuses, with the same error."""

import pytest

import optax_split as osp

# (factory, class, bad keyword arguments); every other field at its default.
BAD_INPUTS = [
    (osp.spike_excess, osp.SpikeExcess, {"on_spike": "bogus"}),
    (osp.spike_excess, osp.SpikeExcess, {"z": 0.0}),
    (osp.spike_excess, osp.SpikeExcess, {"decay": 1.0}),
    (osp.spike_excess, osp.SpikeExcess, {"warmup": 0}),
    (osp.spike_excess, osp.SpikeExcess, {"max_ratio": 0.5}),
    (osp.spike_excess, osp.SpikeExcess, {"max_norm": -1.0}),
    (osp.unit_excess, osp.UnitExcess, {"clipping": 0.0}),
    (osp.unit_excess, osp.UnitExcess, {"eps": -1.0}),
    (osp.unit_excess, osp.UnitExcess, {"min_ndim": -1}),
    (osp.unit_excess, osp.UnitExcess, {"bound_small_leaves": 1}),
    (osp.unit_excess, osp.UnitExcess, {"small_leaf_names": "bias"}),
    (osp.unit_excess, osp.UnitExcess, {"small_leaf_names": ["bias"]}),
    (osp.unit_excess, osp.UnitExcess, {"per_tensor": "yes"}),
    (osp.unit_excess, osp.UnitExcess, {"exempt_leaf_names": "scale"}),
    (osp.norm_excess, osp.NormExcess, {"max_norm": -1.0}),
    (osp.trend_component, osp.TrendComponent, {"decay": 1.5}),
    (osp.mean_component, osp.MeanComponent, {"keep_axis": 0.5}),
    (osp.grouped, osp.Grouped, {"decomposition": "spike"}),
    (osp.grouped, osp.Grouped, {"decomposition": osp.spike_excess(),
                                "param_labels": osp.norm_excess(1.0)}),
]


@pytest.mark.parametrize("factory, cls, bad", BAD_INPUTS,
                         ids=[f"{c.__name__}-{next(iter(b))}" for _, c, b in BAD_INPUTS])
def test_the_class_refuses_what_its_factory_refuses(factory, cls, bad):
  defaults = {"max_norm": 1.0} if cls is osp.NormExcess else {}
  with pytest.raises((TypeError, ValueError)) as from_factory:
    factory(**{**defaults, **bad})
  with pytest.raises(type(from_factory.value)) as from_class:
    cls(**{**defaults, **bad})
  assert str(from_class.value) == str(from_factory.value)
  name = next(iter(bad))
  assert f"`{name}`" in str(from_class.value) or "decomposition" in str(from_class.value)


def test_defaults_hold_what_the_presets_use():
  import inspect

  step_splits = {osp.split_sgd: osp.defaults.SGD_STEP_DECOMPOSITION,
                 osp.split_adam: osp.defaults.STEP_DECOMPOSITION,
                 osp.split_muon: osp.defaults.MUON_STEP_DECOMPOSITION}
  for preset, step_split in step_splits.items():
    signature = inspect.signature(preset).parameters
    assert signature["alpha"].default == osp.defaults.ALPHA
    assert signature["decomposition"].default is step_split
    assert signature["guard"].default is osp.defaults.GUARD
    assert signature["local_fraction"].default == osp.defaults.LOCAL_FRACTION
  step = inspect.signature(osp.split_step).parameters
  assert step["alpha"].default == osp.defaults.ALPHA
  assert step["decomposition"].default is osp.defaults.STEP_DECOMPOSITION
  assert inspect.signature(osp.guard).parameters["decomposition"].default is osp.defaults.GUARD
