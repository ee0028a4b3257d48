"""The benchmark scripts run end to end in their tiny mode (their timings are never asserted)."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEP_TIME = ROOT / "benchmarks" / "step_time.py"
GPU = ROOT / "benchmarks" / "gpu.sh"
GPU_SCALE = ROOT / "benchmarks" / "gpu_scale.sh"
MAIN_JOB = ROOT / "benchmarks" / "main_job.py"

# One row per comparison; a row that disappears from the script fails here.
EXPECTED_CASES = (
    "control: optax against itself",
    "norm_excess",
    "mean_component",
    "mean_component, global_share=True",
    "unit_excess",
    "trend_component",
    "trend_component, global_share=True",
    "spike_excess",
    "split_step(adamw)",
    "split_sgd (defaults)",
    "split_adam (defaults)",
)


def _run(tmp_path, *flags, command=(sys.executable, str(STEP_TIME))):
  out = tmp_path / "results.json"
  env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
             PYTHON=sys.executable)
  proc = subprocess.run(
      [*command, "--sizes", "10000", *flags, "--json", str(out)],
      capture_output=True, text=True, env=env, timeout=600, check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout, json.loads(out.read_text())


def _assert_every_row(stdout, results, fields):
  assert len(results) == 1
  rows = results[0]["rows"]
  assert tuple(row["case"] for row in rows) == EXPECTED_CASES
  for row in rows:
    assert f"| {row['case']} |" in stdout
    for field in fields:
      for side in ("split", "optax"):
        value = row[f"{side}_{field}"]
        assert math.isfinite(value) and value >= 0, (row["case"], side, field, value)


def test_step_time_tiny_mode_reports_every_row(tmp_path):
  stdout, results = _run(tmp_path, "--repeats", "3", "--warmup", "1")
  _assert_every_row(stdout, results, ("ms", "temp_bytes", "state_bytes", "floor_ms"))
  assert results[0]["bandwidth"] > 0


def test_gpu_script_runs_its_cpu_path(tmp_path):
  stdout, results = _run(tmp_path, "--repeats", "2", "--warmup", "1", "--cases", "trend",
                         command=("bash", str(GPU)))
  rows = results[0]["rows"]
  assert [row["case"] for row in rows] == [c for c in EXPECTED_CASES if "trend" in c]
  assert "no GPU here" in stdout and "achieved bandwidth" in stdout
  for row in rows:
    assert f"| {row['case']} | {row['split_gbps']:.1f} |" in stdout
    assert row["split_gbps"] > 0 and row["optax_gbps"] > 0


def test_gpu_scale_script_tiny_mode_writes_the_sweep(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable)
  proc = subprocess.run(["bash", str(GPU_SCALE), str(tmp_path), "--tiny"], capture_output=True,
                        text=True, env=env, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith("device: ") and "# Width sweep" in proc.stdout
  report = json.loads((tmp_path / "scale.json").read_text())
  assert report["widths"] == [8] and report["rows"]["sgd"]["8"]["runs"] == 1


def test_gpu_scale_script_stops_at_its_time_limit_and_says_how_to_continue(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable, LIMIT_S="1")
  proc = subprocess.run(["bash", str(GPU_SCALE), str(tmp_path), "--tiny"], capture_output=True,
                        text=True, env=env, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Stopped at the time limit" in proc.stdout and "Run again to continue" in proc.stdout


def test_step_time_sharded_mode_reports_every_row(tmp_path):
  stdout, results = _run(tmp_path, "--sharded")
  _assert_every_row(stdout, results, ("state_bytes", "temp_bytes", "total_bytes"))
  assert results[0]["devices"] == 8


@pytest.mark.parametrize("flags", [["--sizes", "0"], ["--repeats", "0"], ["--warmup", "-1"],
                                   ["--gpu", "--sharded"]])
def test_step_time_rejects_bad_flags(flags):
  proc = subprocess.run(
      [sys.executable, str(STEP_TIME), *flags], capture_output=True, text=True, check=False
  )
  assert proc.returncode == 2
  assert flags[0] in proc.stderr


def test_seeds_scaling_tiny_mode_reports_every_column(tmp_path):
  out = tmp_path / "seeds.json"
  env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  proc = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "seeds_scaling.py"), "--tiny", "--steps", "4",
       "--seeds", "2", "--repeats", "1", "--json", str(out)],
      capture_output=True, text=True, env=env, timeout=600, check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert "| adding, split_sgd, 4, N=2 |" in proc.stdout
  for key in ("one", "vmap", "map"):
    assert result["run_s"][key] > 0 and result["compile_s"][key] > 0
  assert math.isfinite(result["vmap_over_n_x_one"]) and result["separate_runs_s"] > 0


def test_main_job_times_a_first_and_a_second_run_of_compare(tmp_path):
  out = tmp_path / "main_job.json"
  proc = subprocess.run(
      [sys.executable, str(MAIN_JOB), "--json", str(out), "--", "--task", "adding", "--length",
       "4", "--hidden", "3", "--batch-size", "4", "--eval-size", "8", "--steps", "10",
       "--seeds", "2", "--lrs", "0.01", "--optimizers", "sgd", "split_sgd"],
      capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())
  assert results["same_output"] and "Verdict:" in results["output"]
  for run in ("first", "second"):
    assert results["runs"][run]["wall_s"] > 0 and results["runs"][run]["cpu_s"] > 0
    assert f"| {run} | {results['runs'][run]['wall_s']:.1f} |" in proc.stdout


def test_small_leaf_bound_tiny_mode_writes_both_variants_of_a_preset(tmp_path):
  # One preset: compiling its two programs is what costs time here.
  env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  proc = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "small_leaf_bound.py"), "--tiny", "--presets",
       "split_sgd", "--out", str(tmp_path)],
      capture_output=True, text=True, env=env, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / "adding.json").read_text())
  rows = {(r["preset"], r["small_leaves"]): r for r in result["rows"]}
  assert set(rows) == {("split_sgd", "unbounded"), ("split_sgd", "bounded")}
  for row in rows.values():
    assert row["runs"] == 1 and math.isfinite(row["best"])
  assert "| split_sgd | bounded |" in (tmp_path / "adding.md").read_text()


def _length_results(path, steps, seeds, grids):
  """A results.json of task ``t`` at ``steps`` with ``grids``: optimizer -> grid points."""
  path.write_text(json.dumps({
      "task": "t", "metric": "loss", "higher_is_better": False, "command": f"run {steps}",
      "settings": {"steps": steps, "seeds": seeds},
      "optimizers": [{"optimizer": name, "grid": grid, "suite": {"init_val": 5.0}}
                     for name, grid in grids.items()],
  }))
  return str(path)


def _point(rate, val, test, **options):
  return {"rate": rate, "final_val_metric": val, "test_metric_at_best_val": test, **options}


def test_run_length_compares_on_the_shared_rates_and_seeds(tmp_path):
  short = _length_results(tmp_path / "short.json", 1000, 3, {
      "split": [_point(0.01, [2.0, 2.1, 9.0], [1.9, 2.0, 9.0]),
                _point(0.1, [1.5, 1.6, 9.0], [1.4, 1.5, 9.0]),
                _point(1.0, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])],  # a rate the long run lacks
      "clip": [_point(r, [2.0, 2.0, 2.0], [2.0, 2.0, 2.0], max_norm=m)
               for r in (0.01, 0.1) for m in (1.0, 10.0)]})
  # The long run's optimizers were trained into three folders, split's rates into two:
  # their rows join, and so do split's grids.
  long_split = _length_results(tmp_path / "long_split.json", 4000, 2, {
      "split": [_point(0.01, [1.2, 1.3], [1.2, 1.3])]})
  long_split_more = _length_results(tmp_path / "long_split_more.json", 4000, 2, {
      "split": [_point(0.1, [None, 1.1], [None, 1.0])]})
  long_clip = _length_results(tmp_path / "long_clip.json", 4000, 2, {
      "clip:max_norm=1": [_point(0.01, [1.25, 1.2], [1.25, 1.2]),
                          _point(0.1, [4.0, 4.0], [4.0, 4.0])]})
  proc = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "run_length.py"), long_split, short, long_clip,
       long_split_more, "--optimizers", "split", "clip:max_norm=1"],
      capture_output=True, text=True, timeout=120, check=False,
      env=dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert "the first 2 seed(s)" in lines[0]
  rows = [line for line in lines if line.startswith("| 1000") or line.startswith("| 4000")]
  # Sorted by length; 1000 steps: split's best is 0.1 (seed 3 and rate 1.0 left out).
  assert rows[0].startswith("| 1000 | split | 0.1 | 1.45 |")
  assert "| 0.01: 2.05, 0.1: 1.55 |" in rows[0]
  assert "| -0.55 (-27.5%) | 2 of 2 |" in rows[1]
  # 4000 steps: a diverged seed counts as the worst, so split's 0.1 loses to its 0.01.
  assert rows[2].startswith("| 4000 | split | 0.01 | 1.25 |")
  assert "| 0.01: 1.25, 0.1: diverged |" in rows[2]
  assert rows[3].startswith("| 4000 | clip:max_norm=1 | 0.01 | 1.225 |")
  assert "| +0.025 (+2.0%) | 1 of 2 |" in rows[3]
