#!/usr/bin/env bash
# The GPU benchmark in one command: step-time ratios of every split chain against the
# nearest optax chain, and the bandwidth each step achieves against the device's memory
# bandwidth, at 100M and 300M float32 parameters. Extra flags go to step_time.py, e.g.
#   benchmarks/gpu.sh --sizes 1000000000 --repeats 10 --json gpu.json
# Without a GPU it runs on the CPU and says so (the tests run it with --sizes 10000).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON:-python}" "${root}/benchmarks/step_time.py" --gpu "$@"
