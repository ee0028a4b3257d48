"""Sharded params on 8 simulated CPU devices, and the examples of docs/integration.md.

``--xla_force_host_platform_device_count=8`` only works if set before JAX starts, so these
checks run in a fresh Python process (once per session: ``tests/sharded_update.py``, and the
documentation's doctests). Setting the flag for the whole test session instead (in a
``conftest.py``) would run every other test on a host split into 8 devices, and would
silently do nothing whenever JAX had started before the conftest ran.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent
# As in tests/sharded_update.py: every decomposition in the bare chain, the presets' defaults.
CASES = [
    *(f"bare_chain-{d}" for d in ("mean_component", "trend_component", "norm_excess",
                                   "spike_excess", "unit_excess")),
    "split_sgd-default",
    "split_adam-default",
]


def run_on_8_devices(*args: str) -> subprocess.CompletedProcess:
  """Runs ``python ARGS`` from the repository root in a process that sees 8 CPU devices."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(
      [env.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
  ).strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  return subprocess.run(
      [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )


@pytest.fixture(scope="module")
def report():
  result = run_on_8_devices("tests/sharded_update.py")
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout)


def test_runs_on_8_devices(report):
  assert report["device_count"] == 8
  assert set(report["cases"]) == set(CASES)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("part", ["init_state", "updates", "state"])
def test_keeps_the_params_shardings(report, case, part):
  """Params-shaped leaves keep their param's sharding; scalars are replicated."""
  leaves = report["cases"][case][part]
  assert leaves
  assert [leaf for leaf in leaves if not leaf["ok"]] == []


@pytest.mark.parametrize("case", CASES)
def test_global_norms_span_all_shards(report, case):
  """Two steps on the 2 x 4 mesh match the same steps on one device."""
  assert report["cases"][case]["max_relative_difference"] < 1e-5


def test_the_all_gather_check_sees_all_gathers(report):
  assert [8, 16] in report["control_all_gathers"]


@pytest.mark.parametrize("case", CASES)
def test_no_parameter_is_all_gathered(report, case):
  full_params = [shape for shape in report["cases"][case]["all_gathers"]
                 if shape in report["param_shapes"]]
  assert full_params == []


def test_integration_doc_examples_run():
  result = run_on_8_devices(
      "-m", "doctest", "-o", "ELLIPSIS", "-o", "NORMALIZE_WHITESPACE", "docs/integration.md"
  )
  assert result.returncode == 0, result.stdout + result.stderr
