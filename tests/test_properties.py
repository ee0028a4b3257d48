"""Properties of every decomposition and preset over random pytrees (hypothesis).

The trees nest dicts, lists and tuples; their leaves are scalars, vectors, matrices and
higher-rank arrays (also with a zero-size axis) in float16, bfloat16, float32 and float64
(mixed in one tree), plus Python floats, ``None`` and ``optax.MaskedNode()`` (which, as
in optax's own transformations, are no leaves and pass through). Each array leaf holds
zeros, subnormals, tiny (1e-30), ordinary or huge values (1e30 where the dtype has room),
dense or sparse. float64 leaves run in JAX's x64 mode (without it JAX makes them float32).

Checked, for every decomposition of ``conftest.BUILT_IN_DECOMPOSITIONS`` (two steps, so
the stateful ones see a history) and for the presets:

- the split is lossless: ``local + global_ == g`` to a tolerance set by the dtype;
- finite gradients give finite updates, of the gradients' tree structure, shapes and
  dtypes; the state holds no NaN (Inf only where it means "no bound yet"), unless the
  gradients' squared norm overflows float32 (then the norm diagnostics read inf);
- a leaf that is not a real float fails with a TypeError that names it.

Speed: everything runs op by op (``jax.disable_jit``), so the few primitives compile once
per shape and dtype, not once per tree; examples are bounded and derandomized.
"""

import dataclasses
import inspect
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optax_split as osp
from conftest import BUILT_IN_DECOMPOSITIONS

SETTINGS = settings(
    max_examples=20, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NUM_STEPS = 2

SHAPES = ((), (0,), (3,), (2, 3), (2, 0, 3))
DTYPES = ("float16", "bfloat16", "float32", "float64")
MAGNITUDES = ("zero", "subnormal", "tiny", "unit", "huge")


@dataclasses.dataclass(frozen=True)
class Leaf:
  """How to fill one leaf (a plain object: a leaf of the spec tree)."""

  shape: tuple[int, ...]
  dtype: str
  magnitude: str
  density: float  # share of nonzero entries


PYTHON_FLOAT = Leaf((), "python", "unit", 1.0)

leaves = st.one_of(
    st.builds(Leaf, st.sampled_from(SHAPES), st.sampled_from(DTYPES),
              st.sampled_from(MAGNITUDES), st.sampled_from((1.0, 0.3, 0.0))),
    st.just(PYTHON_FLOAT),
    st.just(None),
    st.just(optax.MaskedNode()),
)
spec_trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.tuples(children, children),
        st.dictionaries(st.sampled_from("abcd"), children, max_size=3),
    ),
    max_leaves=6,
).filter(lambda tree: tree is not None)  # params=None means "no params" in optax's API


def huge(dtype: str, headroom: float) -> float:
  """A huge magnitude that leaves ``headroom`` below the dtype's largest value."""
  return min(1e30, float(jnp.finfo(dtype).max) / headroom)


def materialise(spec, seed: int, headroom: float):
  """A tree of arrays from a spec tree, filled from a NumPy generator."""
  rng = np.random.default_rng(seed)

  def leaf(spec: Leaf):
    if spec == PYTHON_FLOAT:
      return float(rng.standard_normal())
    finfo = jnp.finfo(spec.dtype)
    scale = {
        "zero": 0.0,
        "subnormal": float(finfo.smallest_subnormal) * 4,
        "tiny": 1e-30,
        "unit": 1.0,
        "huge": huge(spec.dtype, headroom),
    }[spec.magnitude]
    values = rng.standard_normal(spec.shape) * (rng.random(spec.shape) < spec.density)
    return jnp.asarray((values * scale).astype(np.dtype(spec.dtype)))

  return jax.tree.map(leaf, spec)


def uses_float64(spec) -> bool:
  return any(leaf.dtype == "float64" for leaf in jax.tree.leaves(spec))


def as_float64(x) -> np.ndarray:
  return np.asarray(x).astype(np.float64)


def squared_norm_overflows_float32(tree) -> bool:
  total = sum(float(np.sum(np.square(as_float64(x)))) for x in jax.tree.leaves(tree))
  return total > float(np.finfo(np.float32).max)


def assert_same_layout(tree, reference):
  """Same tree structure (None and MaskedNode where they were), shapes and dtypes."""
  assert jax.tree.structure(tree) == jax.tree.structure(reference)
  for x, r in zip(jax.tree.leaves(tree), jax.tree.leaves(reference), strict=True):
    assert x.shape == jnp.shape(r)
    assert x.dtype == jnp.result_type(r), (x.dtype, jnp.result_type(r))


def assert_finite(tree, what: str, *, allow_inf: bool = False):
  """No NaN in ``tree``, and no Inf unless ``allow_inf``."""
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    if jnp.issubdtype(x.dtype, jnp.inexact):
      x = as_float64(x)
      ok = ~np.isnan(x) if allow_inf else np.isfinite(x)
      assert np.all(ok), f"{what}{jax.tree_util.keystr(path)}: {x}"


def assert_statistics_usable(state, grads):
  """The state holds no NaN (an Inf is "no bound yet", e.g. spike_excess's cap in warm-up).

  Skipped when the gradients' squared norm overflows float32: the norm diagnostics are
  then inf, and ``global_share`` may be inf / inf.
  """
  if not squared_norm_overflows_float32(grads):
    assert_finite(state, "state", allow_inf=True)


def assert_lossless(local, global_, grads):
  """``|l + G - g| <= 2 eps (|l| + |G| + |g|) + 4 tiny`` element by element.

  Each part is rounded once to the gradient's dtype (eps its machine epsilon); a part
  formed as ``(1 - kept) * g`` carries the rounding of ``1 - kept``, which is relative
  to ``|g|``. ``tiny`` (the smallest normal number) covers subnormals flushed to zero.
  """
  for path, small_g, big_g, g in zip(
      jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(local),
      jax.tree.leaves(global_), jax.tree.leaves(grads), strict=True,
  ):
    finfo = jnp.finfo(jnp.result_type(g))
    small_g, big_g, g = as_float64(small_g), as_float64(big_g), as_float64(g)
    error = np.abs(small_g + big_g - g)
    scale = np.abs(small_g) + np.abs(big_g) + np.abs(g)
    bound = 2 * float(finfo.eps) * scale + 4 * float(finfo.tiny)
    assert np.all(error <= bound), (jax.tree_util.keystr(path[0]), error.max(), g)


def run(tx, spec, seed: int, headroom: float):
  """``NUM_STEPS`` updates of ``tx`` along gradients made from ``spec``, op by op."""
  params = materialise(spec, seed, headroom=1e3)
  state = tx.init(params)
  for step in range(NUM_STEPS):
    grads = materialise(spec, seed + 1 + step, headroom)
    updates, state = tx.update(grads, state, params)
    yield grads, updates, state


@pytest.fixture(autouse=True)
def op_by_op():
  with jax.disable_jit():
    yield


@pytest.mark.parametrize("decomposition", BUILT_IN_DECOMPOSITIONS)
@SETTINGS
@given(spec=spec_trees, seed=st.integers(0, 2**16))
def test_split_is_lossless_and_keeps_finite_values_dtypes_and_shapes(decomposition, spec, seed):
  tx = osp.split(BUILT_IN_DECOMPOSITIONS[decomposition])
  with jax.enable_x64(uses_float64(spec)):
    # Headroom 8: a part such as g - mean(g) may be twice the largest entry.
    for grads, parts, state in run(tx, spec, seed, headroom=8):
      assert isinstance(parts, osp.SplitUpdates)
      assert_same_layout(parts.local, grads)
      assert_same_layout(parts.global_, grads)
      assert_finite(parts, "parts")
      assert_lossless(parts.local, parts.global_, grads)
      assert_statistics_usable(state, grads)


def _default_alpha(preset) -> float:
  return float(inspect.signature(preset).parameters["alpha"].default)


# With momentum and weight decay: every stage of the presets' chains (their defaults
# otherwise).
PRESETS = {
    "split_sgd": lambda: osp.split_sgd(1.0, momentum=0.9, weight_decay=1e-4),
    "split_adam": lambda: osp.split_adam(1.0, weight_decay=1e-4),
}
# The presets' momentum adds up to 10x in the gradient's dtype before the learning rate
# scales it, and their split of the step forms u + alpha * G(u), which grows u only for
# alpha > 0: huge values leave room for that.
PRESET_HEADROOM = 80 * max(1.0, 1 + max(_default_alpha(osp.split_sgd),
                                        _default_alpha(osp.split_adam)))


@pytest.mark.parametrize("preset", PRESETS)
@settings(SETTINGS, max_examples=15)
@given(spec=spec_trees, seed=st.integers(0, 2**16))
def test_presets_keep_finite_values_dtypes_and_shapes(preset, spec, seed):
  tx = PRESETS[preset]()
  with jax.enable_x64(uses_float64(spec)):
    for grads, updates, state in run(tx, spec, seed, headroom=PRESET_HEADROOM):
      assert_same_layout(updates, grads)
      if preset == "split_adam":
        # optax's Adam itself (optax.adam) returns NaN or Inf in float16 for gradients
        # under ~1e-4: its eps = 1e-8 and the squares underflow to 0 there.
        updates = jax.tree.map(lambda u: None if u.dtype == jnp.float16 else u, updates)
      assert_finite(updates, "updates")
      assert_statistics_usable(state, grads)


# ------------------------------------------------------------------- bad input ----

BAD_LEAVES = {
    "int32": jnp.arange(3, dtype=jnp.int32),
    "bool": jnp.ones(2, bool),
    "complex64": jnp.ones((2, 2), jnp.complex64),
    "python int": 3,
}
TRANSFORMATIONS = {
    **{name: lambda d=d: osp.split(d) for name, d in BUILT_IN_DECOMPOSITIONS.items()},
    **PRESETS,
}


def _with_bad_leaf(tree, index: int, bad):
  """``tree`` with its ``index``-th array leaf (mod their number) replaced by ``bad``."""
  flat, treedef = jax.tree.flatten(tree)
  path = jax.tree_util.tree_flatten_with_path(tree)[0][index % len(flat)][0]
  flat[index % len(flat)] = bad
  return jax.tree.unflatten(treedef, flat), jax.tree_util.keystr(path)


@pytest.mark.parametrize("transformation", TRANSFORMATIONS)
@settings(SETTINGS, max_examples=8)
@given(spec=spec_trees, seed=st.integers(0, 2**16), index=st.integers(0, 5),
       bad=st.sampled_from(tuple(BAD_LEAVES)))
def test_a_leaf_that_is_not_a_real_float_fails_with_a_message_that_names_it(
    transformation, spec, seed, index, bad
):
  tx = TRANSFORMATIONS[transformation]()
  params = materialise(spec, seed, headroom=1e3)
  if not jax.tree.leaves(params):
    return  # nothing to replace
  with jax.enable_x64(uses_float64(spec)):
    bad_tree, where = _with_bad_leaf(params, index, BAD_LEAVES[bad])
    with pytest.raises(TypeError, match=r"params" + re.escape(where)):
      tx.init(bad_tree)
    with pytest.raises(TypeError, match=r"updates" + re.escape(where)):
      tx.update(bad_tree, tx.init(params), params)


def test_subnormals_are_subnormal():
  """The generator makes what it claims (guards the strategy, not the library)."""
  x = materialise(Leaf((64,), "float32", "subnormal", 1.0), seed=0, headroom=8)
  nonzero = np.abs(np.asarray(x))[np.asarray(x) != 0]
  assert nonzero.size and np.all(nonzero < np.finfo(np.float32).tiny)
  assert ml_dtypes.finfo(ml_dtypes.bfloat16).max > huge("bfloat16", 8) >= 1e30
