"""Runs the optimizers on params sharded over a 2 x 4 mesh and reports what they do.

Run by ``tests/test_sharding.py`` in a fresh process with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set before JAX
starts); prints one JSON object: per case, whether updates and state keep the params'
shardings, the largest difference from the same steps on one device, and the shapes that the
compiled update all-gathers.
"""

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optax_split as osp

SPECS = {
    "kernel": P("data", "model"),
    "bias": P("model"),
    "conv": P(None, None, "data", "model"),
}
SHAPES = {"kernel": (8, 16), "bias": (16,), "conv": (3, 3, 8, 16)}

DECOMPOSITIONS = {
    "mean_component": osp.mean_component(),
    "trend_component": osp.trend_component(),
    "norm_excess": osp.norm_excess(max_norm=1.0),
    # Without a warm-up, the adaptive threshold already acts on the second step.
    "spike_excess": osp.spike_excess(warmup=1),
    "unit_excess": osp.unit_excess(),
}


def bare_chain(decomposition):
  eta_local, eta_global = osp.split_rates(0.1, alpha=1.0)
  return optax.chain(
      # The diagnostic on: its scalar must be replicated like the statistics.
      osp.split(decomposition, global_share=True), osp.scale_local(-eta_local),
      osp.scale_global(-eta_global),
      osp.combine(),
  )


# The bare chain with every decomposition, and the presets with their defaults: between them
# every reduction in the library (per unit, per leaf, global norms, the presets' guard) and
# the params-shaped states (trend, momentum, Adam's moments). The presets add no reduction
# that depends on their decomposition, so their other combinations are left out for speed.
CASES = {
    **{f"bare_chain-{name}": bare_chain(d) for name, d in DECOMPOSITIONS.items()},
    "split_sgd-default": osp.split_sgd(0.1, momentum=0.9),
    "split_adam-default": osp.split_adam(1.0),
}


def random_tree(seed):
  """Params-shaped float32 values, made by NumPy (nothing to compile)."""
  rng = np.random.default_rng(seed)
  return {name: rng.standard_normal(shape, np.float32) for name, shape in SHAPES.items()}


def sharding_report(tree, params):
  """For each leaf: does it carry its param's sharding (params-shaped) or full replication?"""
  by_shape = {p.shape: p.sharding for p in jax.tree.leaves(params)}
  report = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    expected = by_shape.get(leaf.shape)
    ok = (leaf.sharding.is_equivalent_to(expected, leaf.ndim) if expected is not None
          else leaf.sharding.is_fully_replicated)
    report.append({"leaf": jax.tree_util.keystr(path), "ok": bool(ok),
                   "sharding": str(leaf.sharding.spec if hasattr(leaf.sharding, "spec")
                                   else leaf.sharding)})
  return report


def all_gather_shapes(hlo_text):
  """Result shapes of the all-gathers in compiled HLO, e.g. ``f32[8,16]`` -> ``[8, 16]``."""
  shapes = []
  for match in re.finditer(r"= \w+\[([\d,]*)\][^=]*? all-gather(?:-start)?\(", hlo_text):
    shapes.append([int(d) for d in match.group(1).split(",") if d])
  return shapes


def max_relative_difference(tree, reference):
  """Largest ``|x - y| / max|y|`` over the leaves (equal infinities count as equal)."""
  diffs = []
  for x, y in zip(jax.tree.leaves(tree), jax.tree.leaves(reference), strict=True):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf, where both are inf
      diff = np.where(x == y, 0.0, np.abs(x - y))
    scale = np.max(np.abs(y), initial=0.0, where=np.isfinite(y))
    diffs.append(float(np.max(diff, initial=0.0)) / max(scale, 1e-30))
  return max(diffs)


def check(tx, mesh):
  # The second gradient is larger, so that the clipping thresholds act on it.
  params = random_tree(0)
  grad_steps = [random_tree(1), jax.tree.map(lambda g: 3 * g, random_tree(2))]

  with jax.set_mesh(mesh):
    shardings = {name: NamedSharding(mesh, spec) for name, spec in SPECS.items()}
    sharded_params, sharded_grad_steps = jax.device_put((params, grad_steps), (
        shardings, [shardings] * len(grad_steps)
    ))
    state = jax.jit(tx.init)(sharded_params)
    update = jax.jit(tx.update).lower(sharded_grad_steps[0], state, sharded_params).compile()
    report = {"init_state": sharding_report(state, sharded_params), "updates": [], "state": []}
    for grads in sharded_grad_steps:
      updates, state = update(grads, state, sharded_params)
      report["updates"] += sharding_report(updates, sharded_params)
      report["state"] += sharding_report(state, sharded_params)
  report["all_gathers"] = all_gather_shapes(update.as_text())

  # The same steps on one device: the global norms must agree.
  single = jax.devices()[0]
  params, grad_steps = jax.device_put((params, grad_steps), single)
  ref_update = jax.jit(tx.update)
  ref_state = jax.jit(tx.init)(params)
  for grads in grad_steps:
    ref_updates, ref_state = ref_update(grads, ref_state, params)
  report["max_relative_difference"] = max_relative_difference(
      (updates, state), (ref_updates, ref_state)
  )
  return report


def control_all_gathers(mesh):
  """What the parser finds where an all-gather must happen: replicating the kernel."""
  kernel = jax.device_put(jnp.ones(SHAPES["kernel"]), NamedSharding(mesh, SPECS["kernel"]))
  with jax.set_mesh(mesh):
    replicate = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, P()))
    return all_gather_shapes(replicate.lower(kernel).compile().as_text())


def main():
  mesh = jax.make_mesh((2, 4), ("data", "model"))
  report = {
      "device_count": jax.device_count(),
      "param_shapes": [list(shape) for shape in SHAPES.values()],
      "control_all_gathers": control_all_gathers(mesh),
      "cases": {name: check(tx, mesh) for name, tx in CASES.items()},
  }
  json.dump(report, sys.stdout)


if __name__ == "__main__":
  main()
