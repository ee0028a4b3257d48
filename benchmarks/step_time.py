"""Step time and memory of each split chain against the nearest optax chain.

Times the jitted update-and-apply step (params and state donated, as in
training) of every case in ``cases.py``, running the split and the optax step
alternately in one process so that both see the same machine load. Reports per
case and size: median step times, the median ratio of back-to-back pairs (with
the 10th-90th percentile of the pair ratios as the spread), the compiled
temporary memory of each (``memory_analysis()``), the state bytes of each, and
both step times against a memory-bandwidth floor: the bytes a step must read
and write (gradients, params in and out, params-shaped state in and out) over
the bandwidth of a jitted elementwise copy ``x + 1`` of a params-sized buffer on
the same device.

``--sharded`` instead compiles every step with the params sharded over 8
devices (simulated CPU devices unless the machine has 8) and compares the
memory per device; nothing is timed then.

``--gpu`` (or ``benchmarks/gpu.sh``) is the accelerator run: 100M and 300M
parameters by default, and a second table of the bandwidth each step achieves
(the bytes it must move over its time) against the measured copy bandwidth and
the device's nominal memory bandwidth where it is known. Without a GPU it runs
on the CPU and says so, which is what the tests do with tiny sizes.

Usage:
  python benchmarks/step_time.py --sizes 1000000 10000000 --repeats 40
  python benchmarks/step_time.py --gpu                # 100M and 300M params, on a GPU
  python benchmarks/step_time.py --sharded --sizes 10000000
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import cases
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

SHARDED_DEVICES = 8
# --gpu's defaults: large enough that a step is bound by memory, not by launches.
GPU_SIZES = (100_000_000, 300_000_000)
GPU_REPEATS = 20
# Nominal memory bandwidth (bytes/s) of some accelerators, by jax's device_kind.
PEAK_BANDWIDTH = {
    "NVIDIA H200": 4.8e12,
    "NVIDIA H100 80GB HBM3": 3.35e12,
    "NVIDIA H100 PCIe": 2.0e12,
    "NVIDIA A100-SXM4-80GB": 2.04e12,
    "NVIDIA A100-SXM4-40GB": 1.56e12,
    "NVIDIA A100-PCIE-40GB": 1.56e12,
    "NVIDIA L4": 0.3e12,
    "NVIDIA GeForce RTX 4090": 1.01e12,
    "TPU v4": 1.2e12,
    "TPU v5 lite": 0.82e12,
    "TPU v5": 2.76e12,
}
# Set in the process that rerun_with_simulated_devices starts, so it cannot loop.
_RERUN_MARK = "STEP_TIME_SIMULATED_DEVICES"


def tree_bytes(tree) -> int:
  """Bytes of all array leaves of ``tree``."""
  return sum(leaf.nbytes for leaf in jax.tree.leaves(tree))


def tree_bytes_per_device(tree) -> int:
  """Bytes of ``tree`` held by the first device (its shards, or whole replicated leaves)."""
  return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(tree))


def params_shaped_bytes(state, params) -> int:
  """Bytes of the state leaves shaped like a params leaf: what a step reads and writes in full."""
  shapes = {leaf.shape for leaf in jax.tree.leaves(params)}
  return sum(leaf.nbytes for leaf in jax.tree.leaves(state) if leaf.ndim and leaf.shape in shapes)


def compile_step(tx: optax.GradientTransformation, params, state, grads):
  """The update-and-apply step, compiled with params and state donated."""

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()


def fresh_copy(tree):
  """A copy to donate, where the same params go into more than one step."""
  return jax.tree.map(jnp.copy, tree)


def check_same_step(case: cases.Case, compiled, txs, params, grads) -> float:
  """Max abs difference of the two first steps; raises if the case claims they are equal.

  The compiled steps run from zero params, so the new params are the updates exactly.
  """
  zeros = optax.tree.zeros_like(params)
  steps = [
      step(fresh_copy(zeros), tx.init(params), grads)[0]
      for step, tx in zip(compiled, txs, strict=True)
  ]
  diff = max(
      float(jnp.max(jnp.abs(a - b))) for a, b in zip(*map(jax.tree.leaves, steps), strict=True)
  )
  scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(steps[1]))
  if case.same_step and diff > 1e-5 * scale:
    raise AssertionError(f"{case.name}: the split and optax steps differ by {diff:.3g} "
                         f"(step scale {scale:.3g}); the comparison would not be fair.")
  return diff


def copy_bandwidth(params, repeats: int) -> float:
  """Bytes per second of a jitted, donated elementwise copy of a params-sized buffer."""
  size = sum(leaf.size for leaf in jax.tree.leaves(params))
  copy = jax.jit(lambda x: x + 1, donate_argnums=0)
  x = jnp.zeros(size, jnp.float32)
  x = copy(x).block_until_ready()
  times = []
  for _ in range(max(repeats, 5)):
    start = time.perf_counter()
    x = copy(x).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * x.nbytes / statistics.median(times)


def time_pair(compiled, txs, params, grads, repeats: int, warmup: int):
  """Step times (seconds) of both chains, run alternately; the first to run alternates too."""
  # The params are shared by both chains, so each gets a copy to donate; each init's
  # state is fresh (tests/test_donation.py checks that no init aliases a buffer).
  carries = [(fresh_copy(params), tx.init(params)) for tx in txs]
  times = ([], [])
  for rep in range(warmup + repeats):
    order = (0, 1) if rep % 2 == 0 else (1, 0)
    for i in order:
      start = time.perf_counter()
      carries[i] = jax.block_until_ready(compiled[i](*carries[i], grads))
      if rep >= warmup:
        times[i].append(time.perf_counter() - start)
  return times


def bench_case(case: cases.Case, params, grads, repeats: int, warmup: int, bandwidth: float):
  txs = (case.build_split(), case.build_optax())
  states = [tx.init(params) for tx in txs]
  compiled = [compile_step(tx, params, s, grads) for tx, s in zip(txs, states, strict=True)]
  diff = check_same_step(case, compiled, txs, params, grads)
  split_times, optax_times = time_pair(compiled, txs, params, grads, repeats, warmup)
  pair_ratios = np.array(split_times) / np.array(optax_times)
  floors = [
      (tree_bytes(grads) + 2 * tree_bytes(params) + 2 * params_shaped_bytes(s, params)) / bandwidth
      for s in states
  ]
  row = {"case": case.name, "baseline": case.baseline, "step_diff": diff}
  for side, times, state, comp, floor in zip(
      ("split", "optax"), (split_times, optax_times), states, compiled, floors, strict=True
  ):
    row[f"{side}_ms"] = 1e3 * statistics.median(times)
    row[f"{side}_temp_bytes"] = comp.memory_analysis().temp_size_in_bytes
    row[f"{side}_state_bytes"] = tree_bytes(state)
    row[f"{side}_floor_ms"] = 1e3 * floor
    # The bytes the step must move, over its time: the bandwidth it achieves.
    row[f"{side}_gbps"] = floor * bandwidth / statistics.median(times) / 1e9
  # The ratio of each back-to-back pair cancels most of the load that other
  # processes put on the machine; its median is the headline number.
  row["ratio"], row["ratio_p10"], row["ratio_p90"] = (
      float(q) for q in np.percentile(pair_ratios, [50, 10, 90])
  )
  return row


def print_rows(rows, size: int, bandwidth: float) -> None:
  print(f"\n## {size:,} params (float32), copy bandwidth {bandwidth / 1e9:.2f} GB/s")
  print("| case | optax side | split ms | optax ms | pair ratio (p10-p90) | temp MB split/optax "
        "| state MB split/optax (difference) | split/floor | optax/floor |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(
        f"| {r['case']} | {r['baseline']} | {r['split_ms']:.2f} | {r['optax_ms']:.2f} "
        f"| {r['ratio']:.3f} ({r['ratio_p10']:.2f}-{r['ratio_p90']:.2f}) "
        f"| {r['split_temp_bytes'] / 1e6:.2f}/{r['optax_temp_bytes'] / 1e6:.2f} "
        f"| {r['split_state_bytes'] / 1e6:.2f}/{r['optax_state_bytes'] / 1e6:.2f} "
        f"({r['split_state_bytes'] - r['optax_state_bytes']:+d} B) "
        f"| {r['split_ms'] / r['split_floor_ms']:.2f} | {r['optax_ms'] / r['optax_floor_ms']:.2f} |"
    )


def print_bandwidth(rows, size: int, bandwidth: float, device) -> None:
  """The bandwidth each step achieves, against the copy's and the device's nominal one."""
  peak = PEAK_BANDWIDTH.get(device.device_kind)
  peak_text = f"{peak / 1e9:.0f} GB/s nominal" if peak else "nominal bandwidth unknown"
  print(f"\n## {size:,} params: achieved bandwidth on {device.device_kind} "
        f"(copy {bandwidth / 1e9:.1f} GB/s, {peak_text})")
  print("| case | split GB/s | optax GB/s | split/copy | optax/copy | split/nominal "
        "| optax/nominal |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    nominal = (f"{1e9 * r['split_gbps'] / peak:.2f} | {1e9 * r['optax_gbps'] / peak:.2f}"
               if peak else "- | -")
    print(f"| {r['case']} | {r['split_gbps']:.1f} | {r['optax_gbps']:.1f} "
          f"| {1e9 * r['split_gbps'] / bandwidth:.2f} | {1e9 * r['optax_gbps'] / bandwidth:.2f} "
          f"| {nominal} |")


def selected_cases(args) -> list:
  return [c for c in cases.CASES if not args.cases or any(k in c.name for k in args.cases)]


def run_timed(args) -> list:
  results = []
  for size in args.sizes:
    key_params, key_grads = jax.random.split(jax.random.key(size))
    params = cases.make_params(size, key_params)
    grads = cases.make_grads(params, key_grads)
    bandwidth = copy_bandwidth(params, args.repeats)
    rows = [bench_case(c, params, grads, args.repeats, args.warmup, bandwidth)
            for c in selected_cases(args)]
    print_rows(rows, tree_bytes(params) // 4, bandwidth)
    if args.gpu:
      print_bandwidth(rows, tree_bytes(params) // 4, bandwidth, jax.devices()[0])
    results.append({"size": tree_bytes(params) // 4, "bandwidth": bandwidth, "rows": rows,
                    "device_kind": jax.devices()[0].device_kind})
  return results


def sharded_memory(case: cases.Case, params, grads) -> dict:
  """Per-device memory of both steps compiled with params sharded along their first axis."""
  row = {"case": case.name, "baseline": case.baseline}
  for side, tx in (("split", case.build_split()), ("optax", case.build_optax())):
    state = tx.init(params)
    stats = compile_step(tx, params, state, grads).memory_analysis()
    row[f"{side}_state_bytes"] = tree_bytes_per_device(state)
    row[f"{side}_temp_bytes"] = stats.temp_size_in_bytes
    row[f"{side}_total_bytes"] = (
        stats.argument_size_in_bytes + stats.output_size_in_bytes
        - stats.alias_size_in_bytes + stats.temp_size_in_bytes
    )
  return row


def run_sharded(args) -> list:
  # Auto axes: sharding propagated by the compiler. (With explicit sharding types
  # optax.adaptive_grad_clip fails to trace in jax 0.10.)
  mesh = jax.make_mesh((SHARDED_DEVICES,), ("data",), axis_types=(AxisType.Auto,))
  shard = NamedSharding(mesh, PartitionSpec("data"))
  results = []
  for size in args.sizes:
    key_params, key_grads = jax.random.split(jax.random.key(size))
    params = jax.device_put(cases.make_params(size, key_params, multiple=SHARDED_DEVICES), shard)
    grads = jax.device_put(cases.make_grads(params, key_grads), shard)
    rows = [sharded_memory(c, params, grads) for c in selected_cases(args)]
    n = tree_bytes(params) // 4
    print(f"\n## {n:,} params sharded over {SHARDED_DEVICES} devices: bytes per device")
    print("| case | optax side | state split/optax | temp split/optax | total split/optax |")
    print("|---|---|---|---|---|")
    for r in rows:
      print(f"| {r['case']} | {r['baseline']} "
            + " ".join(f"| {r[f'split_{k}_bytes']:,}/{r[f'optax_{k}_bytes']:,}"
                       for k in ("state", "temp", "total"))
            + " |")
    results.append({"size": n, "devices": SHARDED_DEVICES, "rows": rows})
  return results


def rerun_with_simulated_devices() -> int:
  """Runs this script again in a process whose CPU backend has 8 devices.

  XLA reads the device count when the backend starts, so it cannot change in a
  running process.
  """
  if os.environ.get(_RERUN_MARK):
    sys.exit(f"--sharded needs {SHARDED_DEVICES} devices, and this process has "
             f"{jax.device_count()} even with simulated CPU devices. Check XLA_FLAGS.")
  flags = os.environ.get("XLA_FLAGS", "")
  env = dict(
      os.environ,
      **{_RERUN_MARK: "1"},
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={SHARDED_DEVICES}".strip(),
  )
  return subprocess.run([sys.executable, *sys.argv], env=env, check=False).returncode


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=None,
                      help="approximate parameter counts (float32); default 1M and 10M, "
                           "with --gpu 100M and 300M")
  parser.add_argument("--repeats", type=int, default=None,
                      help=f"timed steps of each chain; default 40, with --gpu {GPU_REPEATS}")
  parser.add_argument("--gpu", action="store_true",
                      help="the accelerator run: larger default sizes and a table of the "
                           "bandwidth each step achieves (runs on the CPU where there is no GPU)")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each chain first")
  parser.add_argument("--sharded", action="store_true",
                      help=f"compare memory per device with params sharded over "
                           f"{SHARDED_DEVICES} devices instead of timing")
  parser.add_argument("--json", help="also write the results to this JSON file")
  parser.add_argument("--cases", nargs="+", metavar="TEXT",
                      help="only the cases whose name contains one of these, e.g. --cases trend")
  args = parser.parse_args(argv)
  if args.gpu and args.sharded:
    parser.error("--gpu times the steps and --sharded only compiles them: pass one of them")
  if args.sizes is None:
    args.sizes = list(GPU_SIZES) if args.gpu else [1_000_000, 10_000_000]
  if args.repeats is None:
    args.repeats = GPU_REPEATS if args.gpu else 40
  if args.cases and not selected_cases(args):
    parser.error(f"--cases {' '.join(args.cases)} matches none of: "
                 + ", ".join(c.name for c in cases.CASES))
  for name in ("sizes", "repeats"):
    values = np.atleast_1d(getattr(args, name))
    if np.any(values < 1):
      parser.error(f"--{name} must be positive, got {getattr(args, name)}; e.g. --{name} 10")
  if args.warmup < 0:
    parser.error(f"--warmup must be at least 0, got {args.warmup}; e.g. --warmup 3")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.sharded and jax.device_count() < SHARDED_DEVICES:
    return rerun_with_simulated_devices()
  print(f"jax {jax.__version__}, optax {optax.__version__}, device: {jax.devices()[0].device_kind}"
        f" x {jax.device_count()}")
  if args.gpu and jax.default_backend() != "gpu":
    print(f"--gpu: no GPU here, running on {jax.default_backend()} (a test of the script, "
          "not a GPU measurement)")
  results = run_sharded(args) if args.sharded else run_timed(args)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
