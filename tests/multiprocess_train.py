"""Trains a small MLP on a 2 x 2 mesh, in one process or in two, and reports what it did.

Run as a script by ``tests/test_multiprocess.py`` (which also loads it for its table of cases);
two modes:

- ``multiprocess_train.py OUT CKPT_DIR --port PORT --process-id I --num-processes 2``: one of
  two processes on JAX's distributed runtime (CPU collectives over gloo), each with two host
  CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=2``, set by the caller);
  the mesh spans both processes. Mid-run, both processes save a multi-process Orbax checkpoint
  into ``CKPT_DIR``, restore it into the same shardings and resume.
- ``multiprocess_train.py OUT`` (no ``--port``): the reference, one process with four devices
  on the same 2 x 2 mesh. It also reports the all-reduces in the compiled sharded update of
  every case and the optimizer state's bytes per device.

Each process writes one JSON object to ``OUT`` (gloo logs to stdout, so stdout is not used):
per case, the loss at every step, this process's shards of the final params and optimizer state
(as the hex of their bytes, so that the test compares bits) and its own copies of the
optimizer's scalar statistics, with whether they equal every other process's (gathered).
"""

import argparse
import json
import math
import re
import time

import numpy as np

STEPS = 30  # Past the warm-up of every spike_excess below (5 in the bare chain, 25 in presets).
# The checkpoint holds the params and state after this many steps; the run resumes from there.
# The presets' statistics leave their warm-up (25 steps) after the restore; few steps are
# left to run, as each step waits on collectives across processes.
SAVE_AT = 24
BATCH, D_IN, HIDDEN, D_OUT = 16, 8, 16, 4
# FSDP-style: every param is sharded over "fsdp" along one axis (one is left replicated, as
# small leaves often are); the batch is sharded over "data".
PARAM_SPECS = {"w1": (None, "fsdp"), "b1": ("fsdp",), "w2": ("fsdp", None), "b2": ()}
BATCH_SPEC = ("data", None)


def cases(osp, optax, global_share=True):
  """Name -> optimizer. One more case (e.g. a ``grouped(...)`` decomposition) is one line."""

  def bare(decomposition):
    eta_local, eta_global = osp.split_rates(1.0, alpha=1.0)
    return optax.chain(osp.split(decomposition, global_share=global_share),
                       osp.scale_local(-eta_local), osp.scale_global(-eta_global), osp.combine())

  return {
      "split_sgd": osp.split_sgd(1.0, global_share=global_share),
      "split_adam": osp.split_adam(0.1, global_share=global_share),
      "bare-mean_component": bare(osp.mean_component()),
      "bare-trend_component": bare(osp.trend_component()),
      "bare-norm_excess": bare(osp.norm_excess(max_norm=0.5)),
      "bare-spike_excess": bare(osp.spike_excess(warmup=5)),
      "bare-unit_excess": bare(osp.unit_excess()),
  }


def init_params():
  rng = np.random.default_rng(0)
  return {
      "w1": rng.standard_normal((D_IN, HIDDEN), np.float32) / np.sqrt(D_IN),
      "b1": np.zeros(HIDDEN, np.float32),
      "w2": rng.standard_normal((HIDDEN, D_OUT), np.float32) / np.sqrt(HIDDEN),
      "b2": np.zeros(D_OUT, np.float32),
  }


def global_batch(step):
  """The whole batch of a step, the same in every process (each keeps its own shards)."""
  rng = np.random.default_rng(1000 + step)
  x = rng.standard_normal((BATCH, D_IN), np.float32)
  target = np.sin(x @ np.linspace(-1.0, 1.0, D_IN * D_OUT, dtype=np.float32).reshape(D_IN, D_OUT))
  # An occasional large batch, so that the spike statistics see spikes.
  scale = np.float32(8.0 if step % 11 == 10 else 1.0)
  return scale * x, scale * target


def as_hex(array):
  array = np.ascontiguousarray(array)
  return {"dtype": str(array.dtype), "shape": list(array.shape), "hex": array.tobytes().hex()}


def all_reduce_shapes(hlo_text):
  """Result types of the all-reduces in compiled HLO, e.g. ``f32[]`` or ``(f32[], f32[4])``."""
  pattern = r"= (\([^()]*\)|\w+\[[\d,]*\](?:\{[\d,]*\})?) all-reduce(?:-start)?\("
  return [re.sub(r"\{[\d,]*\}|/\*index=\d+\*/", "", m.group(1))
          for m in re.finditer(pattern, hlo_text)]


def split_conditional_branches(hlo_text):
  """``(text run every step, text of lax.cond branches)`` of compiled HLO.

  The branches' computations (and what they call) hold the ops that run only
  when their branch is taken, e.g. the guard's rescaled norm on an overflow.
  """
  blocks = re.split(r"\n(?=(?:ENTRY )?%[\w.\-]+ \()", hlo_text)
  named = {}
  for block in blocks:
    match = re.match(r"(?:ENTRY )?%([\w.\-]+) \(", block)
    if match:
      named[match.group(1)] = block
  pending = [name for block in named.values()
             for group in re.findall(r"branch_computations=\{([^}]*)\}", block)
             for name in re.findall(r"%([\w.\-]+)", group)]
  branches = set()
  while pending:
    name = pending.pop()
    if name in branches or name not in named:
      continue
    branches.add(name)
    pending += re.findall(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)", named[name])
  every_step = "\n".join(b for n, b in named.items() if n not in branches)
  return every_step, "\n".join(named[n] for n in branches)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("out")
  parser.add_argument("checkpoint_dir", nargs="?")
  parser.add_argument("--port", type=int)
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--num-processes", type=int, default=1)
  args = parser.parse_args()
  start, seconds = time.monotonic(), {}

  def lap(phase):
    seconds[phase] = round(time.monotonic() - start - sum(seconds.values()), 2)

  import jax

  distributed = args.port is not None
  if distributed:
    try:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(
          coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes,
          process_id=args.process_id, initialization_timeout=30,
      )
    except Exception as error:  # Reported, so that the test can tell "no gloo" from a bug.
      with open(args.out, "w") as f:
        json.dump({"init_error": f"{type(error).__name__}: {error}"}, f)
      raise

  import jax.numpy as jnp
  import optax
  from jax.experimental import multihost_utils
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  import optax_split as osp

  lap("start")

  # Devices are numbered process by process. Laid out on the diagonal, each row and each
  # column of the 2 x 2 mesh holds one device of each process, so every collective of the
  # step (the batch's gradient sum over "data", the norms over "fsdp") crosses processes.
  devices = jax.devices()
  assert len(devices) == 4, devices
  mesh = Mesh(np.array([[devices[0], devices[2]], [devices[3], devices[1]]]), ("data", "fsdp"))
  param_shardings = {k: NamedSharding(mesh, P(*spec)) for k, spec in PARAM_SPECS.items()}
  batch_sharding = NamedSharding(mesh, P(*BATCH_SPEC))
  replicated = NamedSharding(mesh, P())

  def put(array, sharding):
    """A global array from the same host values in every process (each puts its own shards)."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

  def loss_fn(params, x, target):
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean(jnp.square(hidden @ params["w2"] + params["b2"] - target))

  batches = [tuple(put(a, batch_sharding) for a in global_batch(i)) for i in range(STEPS)]

  def shards(tree):
    """Per leaf, this process's shards: ``{"start:stop,...": bytes as hex}``.

    The test merges the processes' shards (nothing to compile or communicate here) and checks
    that every copy of a shard, on any device of any process, holds the same bits.
    """
    leaves = []
    for leaf in jax.tree.leaves(tree):
      found = {}
      for shard in leaf.addressable_shards:
        index = ",".join(f"{s.start or 0}:{dim if s.stop is None else s.stop}"
                         for s, dim in zip(shard.index, leaf.shape, strict=True))
        data = np.asarray(shard.data).tobytes().hex()
        assert found.setdefault(index, data) == data, "replicas differ within a process"
      leaves.append({"dtype": str(leaf.dtype), "shape": list(leaf.shape), "shards": found})
    return leaves

  def local_scalars(state):
    """This process's own copies of the state's scalars: every addressable shard."""
    scalars = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
      if leaf.ndim == 0:
        assert leaf.sharding.is_fully_replicated, (path, leaf.sharding)
        copies = [np.asarray(shard.data) for shard in leaf.addressable_shards]
        scalars[jax.tree_util.keystr(path)] = copies
    return scalars

  def abstract_state(tx):
    """The optimizer state's shapes and dtypes, its params-shaped leaves sharded like params.

    On a mesh of ``Auto`` axes (this one, as most multi-host code has), ``jit(tx.init)`` alone
    would leave the state's zeros replicated: its out_shardings come from the params'.
    """
    abstract = jax.eval_shape(tx.init, abstract_params)
    shardings = optax.tree.map_params(
        tx, lambda _, sharding: sharding, abstract, param_shardings,
        transform_non_params=lambda _: replicated,
    )
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)

  def bytes_per_device(abstract_tree):
    return sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
               for a in jax.tree.leaves(abstract_tree))

  report = {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
            "cases": {}}
  params0 = {k: put(v, param_shardings[k]) for k, v in init_params().items()}
  abstract_params = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), params0)
  # All cases in one program: one compile and one dispatch per step for all of them (each
  # case's arithmetic is its own; the reference runs the very same program).
  txs = cases(osp, optax)
  state_shardings = {
      name: jax.tree.map(lambda a: a.sharding, abstract_state(tx)) for name, tx in txs.items()
  }
  init = jax.jit(lambda params: {name: tx.init(params) for name, tx in txs.items()},
                 out_shardings=state_shardings)

  def train_step(params, states, x, target):
    new_params, new_states, losses = {}, {}, {}
    for name, tx in txs.items():
      losses[name], grads = jax.value_and_grad(loss_fn)(params[name], x, target)
      updates, new_states[name] = tx.update(grads, states[name], params[name])
      new_params[name] = optax.apply_updates(params[name], updates)
    return new_params, new_states, losses

  step = jax.jit(train_step, out_shardings=(
      {name: param_shardings for name in txs}, state_shardings, {name: replicated for name in txs}
  ))
  params, states, losses = {name: params0 for name in txs}, init(params0), []
  lap("init")
  for i in range(STEPS):
    if i == 1:
      jax.block_until_ready(params)
      lap("first_step")
    if i == SAVE_AT:
      snapshot = {"params": params, "opt_states": states}
    params, states, loss = step(params, states, *batches[i])
    losses.append(loss)
  final = {"params": params, "opt_states": states}

  all_scalars = {}
  for name in txs:
    scalars = local_scalars(states[name])
    report["cases"][name] = {
        "losses": [float(loss[name].addressable_data(0)).hex() for loss in losses],
        "final": shards((params[name], states[name])),
        "scalars": {k: [as_hex(c) for c in v] for k, v in scalars.items()},
        "spike_count": {k: int(v[0]) for k, v in scalars.items() if "spike_count" in k},
    }
    all_scalars[name] = {k: np.stack(v) for k, v in scalars.items()}

  # Every process's copies of the statistics, gathered in every process: all must be equal.
  everyone = multihost_utils.process_allgather(all_scalars, tiled=False)
  for name, gathered in everyone.items():
    report["cases"][name]["scalars_equal_in_all_processes"] = all(
        bool(np.all(v == v.reshape(-1)[0])) for v in gathered.values()
    )

  lap("train")
  if args.checkpoint_dir:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(f"{args.checkpoint_dir}/step_{SAVE_AT}", snapshot)
      checkpointer.wait_until_finished()
      # Restored into the shardings of the saved arrays.
      target = jax.tree.map(ocp.utils.to_shape_dtype_struct, snapshot)
      del snapshot
      restored = checkpointer.restore(f"{args.checkpoint_dir}/step_{SAVE_AT}", target)
    same_shardings = all(
        a.sharding.is_equivalent_to(b.sharding, a.ndim) for a, b in
        zip(jax.tree.leaves(restored), jax.tree.leaves(final), strict=True)
    )
    params, states = restored["params"], restored["opt_states"]
    for i in range(SAVE_AT, STEPS):
      params, states, _ = step(params, states, *batches[i])
    for name in txs:
      report["cases"][name]["resumed"] = shards((params[name], states[name]))
      report["cases"][name]["restored_same_shardings"] = same_shardings

  lap("checkpoint")
  if not distributed:
    # What the sharded optimizer update alone communicates, and what its state holds.
    # With the global_share diagnostic (the default) and without it; lowered from shapes and
    # shardings alone. Compiled with LLVM's cheaper passes: the HLO passes (SPMD partitioning,
    # the all-reduce combiner) that decide the collectives are the same.
    report["hlo"] = {}
    for global_share in (True, False):
      for name, tx in cases(osp, optax, global_share).items():
        state = abstract_state(tx)
        compiled = jax.jit(tx.update).lower(abstract_params, state, abstract_params).compile(
            {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})
        every_step, in_branches = split_conditional_branches(compiled.as_text())
        report["hlo"][f"{name}, global_share={global_share}"] = {
            "all_reduces": all_reduce_shapes(every_step),
            "all_reduces_in_branches": all_reduce_shapes(in_branches),
            "state_bytes_per_device": bytes_per_device(state),
            "params_bytes_per_device": bytes_per_device(abstract_params),
        }

  lap("hlo")
  report["seconds"] = seconds
  with open(args.out, "w") as f:
    json.dump(report, f)
  if distributed:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
