#!/usr/bin/env bash
# The width sweep on an accelerator, as one prepared script of at most 10 minutes:
# `optax-split scale` at the full sweep's widest width (256) and one step wider (512), with
# every row of the sweep, 1,000 steps and 2 seeds. The sweep writes each optimizer as soon as
# it is trained, so the time limit keeps whatever finished: run the script again to continue.
#   benchmarks/gpu_scale.sh OUT_DIR          # stops after $LIMIT_S seconds (default 540)
#   benchmarks/gpu_scale.sh OUT_DIR --tiny   # a tiny sweep that checks the pipeline
# It needs a JAX that sees the accelerator (e.g. jax[cuda12]); without one it runs on the CPU
# and says so.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: benchmarks/gpu_scale.sh OUT_DIR [--tiny]}"
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
python="${PYTHON:-python}"
if [[ "${2:-}" == "--tiny" ]]; then
  flags=(--quick --widths 8 --steps 2 --optimizers sgd)
else
  flags=(--widths 256 512)
fi
"$python" -c 'import jax; d = jax.devices()[0]
print(f"device: {d.platform} {d.device_kind}" + ("" if d.platform != "cpu" else " (no accelerator here)"))'
status=0
# SIGINT first, so that the sweep stops between optimizers' writes; KILL 30 s later.
timeout --signal=INT --kill-after=30 "${LIMIT_S:-540}" \
  "$python" -m optax_split.experiments scale "${flags[@]}" --out "$out" --no-progress || status=$?
if [[ $status -eq 124 || $status -eq 137 || $status -eq 130 ]]; then
  echo "Stopped at the time limit; what finished is in $out/scale.md. Run again to continue."
elif [[ $status -ne 0 ]]; then
  exit "$status"
fi
