"""The ``optax-split compare`` command end to end, at tiny sizes."""

import json
import re
import subprocess
import sys

import jax
import pytest

import optax_split
from optax_split.experiments import cache, cli, commands, jobs, optimizers

TINY = ["compare", "--task", "adding", "--length", "4", "--hidden", "3", "--batch-size", "4",
        "--eval-size", "8", "--steps", "20", "--seeds", "2", "--lrs", "0.01", "1000",
        "--adaptive-lrs", "0.01", "--no-progress"]


def test_compare_writes_table_json_markdown_and_plots(tmp_path, capsys):
  # One cheap optimizer: compiling the programs is what costs time here.
  argv = [*TINY, "--optimizers", "sgd", "--out", str(tmp_path)]
  cli.main(argv)
  printed = capsys.readouterr().out
  assert "diverged runs (grid)" in printed and "over seeds" in printed
  assert printed.splitlines()[0].rstrip().endswith("final train loss  lr sensitivity")
  assert "Verdict: sgd ranks first: test mse" in printed and "results.json" in printed
  assert "\n\nResolution: - (a paired t-test needs two rows" in printed  # One row only.
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["command"] == "optax-split " + " ".join(argv)
  # The versions the numbers depend on, this package's from its source.
  assert results["versions"]["optax_split"] == optax_split.__version__
  assert results["versions"]["jax"] == jax.__version__
  (sgd,) = results["optimizers"]
  assert sgd["best"]["rate"] == 0.01 and sgd["diverged_runs"] == 2  # Rate 1000 blows up.
  assert sgd["diverged_seeds_at_best"] == 0 and sgd["final_train_loss"] > 0
  assert len(sgd["curves"]["loss"]) == 2  # One curve per seed.
  assert len(sgd["by_seed"]["test_metric"]) == 2
  # Rate 1000 diverged: it counts as the metric at init against sgd's own best.
  assert sgd["lr_sensitivity"] > 0 and sgd["suite"]["final_val_by_rate"][1] is None
  assert f"| {sgd['lr_sensitivity']:.3g} |" in (tmp_path / "results.md").read_text()
  markdown = (tmp_path / "results.md").read_text()
  assert "| 1 | sgd | 0.01 |" in markdown and results["verdict"] in markdown
  for name in ("loss.png", "grad_norm.png", "global_share.png"):
    assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
  # The same command gives the same numbers.
  cli.main([*argv[:-1], str(tmp_path / "again")])
  again = json.loads((tmp_path / "again" / "results.json").read_text())
  assert again["optimizers"] == results["optimizers"]


def test_compare_ranks_sets_split_against_baseline_and_does_not_depend_on_jobs(tmp_path, capsys):
  argv = [*TINY, "--optimizers", "sgd", "split_sgd", "--seeds", "3"]
  cli.main([*argv, "--out", str(tmp_path / "one"), "--jobs", "1"])
  cli.main([*argv, "--out", str(tmp_path / "two"), "--jobs", "2"])
  printed = capsys.readouterr().out
  one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
  assert one["optimizers"] == two["optimizers"] and one["verdict"] == two["verdict"]
  assert [s["optimizer"] for s in one["optimizers"]] == ["sgd", "split_sgd"]  # Given order.
  assert "paired seeds" in one["verdict"] and one["verdict"] in printed
  resolution = one["resolution"]
  assert set(resolution["between"]) == {"sgd", "split_sgd"} and resolution["paired_seeds"] == 3
  assert resolution["difference"] >= 0 and resolution["t"] == 2.920
  assert f"resolve a difference of {resolution['difference']:.4g} or more at p < 0.05" in printed
  assert re.search(r"Presets at their defaults: split_sgd #[12] of 2\.$", one["verdict"])


@pytest.mark.parametrize("argv, message", [
    (["--optimizers", "sgd_nesterov"], "Unknown optimizer 'sgd_nesterov'. Choose from sgd"),
    (["--optimizers", "sgd_clip:threshold=1"], "sgd_clip has no option 'threshold'"),
    (["--optimizers", "split_sgd:beta=2"], "Unknown option.*use alpha"),
    (["--task", "cifar2", "--data-dir", "/nonexistent"], "cifar-10-python.tar.gz"),
    (["--rho", "1.5", "--task", "deep_mlp"], "deep_mlp does not take that option"),
    ([*TINY[1:], "--optimizers", "sgd", "--jobs", "0"], "--jobs must be at least 1"),
])
def test_bad_input_exits_with_a_message(argv, message, capsys):
  with pytest.raises(SystemExit, match=message):
    cli.main(["compare", *argv])


def test_compare_keeps_compiled_programs_in_the_cache_folder(tmp_path, monkeypatch):
  folder = tmp_path / "cache"
  monkeypatch.setenv(cache.CACHE_ENV, str(folder))
  assert cache.cache_dir() == folder
  before = jax.config.jax_compilation_cache_dir
  cli.main([*TINY, "--optimizers", "sgd", "--out", str(tmp_path / "run")])
  assert any(folder.iterdir())  # The training program, at least.
  assert jax.config.jax_compilation_cache_dir == before  # Restored for the caller.


def test_no_cache_leaves_the_cache_folder_alone(tmp_path, monkeypatch):
  folder = tmp_path / "cache"
  monkeypatch.setenv(cache.CACHE_ENV, str(folder))
  cli.main([*TINY, "--optimizers", "sgd", "--out", str(tmp_path / "run"), "--no-cache"])
  assert not folder.exists()


def test_default_compare_is_the_practitioners_comparison():
  names = optimizers.DEFAULT_NAMES
  assert {"msgd_clip", "adamw_clip", "zclip", "muon"} <= set(names)  # What people run.
  assert {"split_sgd", "split_adam", "split_muon"} <= set(names)  # Ours, at the defaults.
  assert 1 <= jobs.default_jobs() <= jobs.MAX_DEFAULT_JOBS


def test_cache_folder_defaults_to_the_user_cache(monkeypatch, tmp_path):
  monkeypatch.delenv(cache.CACHE_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert cache.cache_dir() == tmp_path / "optax-split" / "jax"


def test_without_the_examples_extra_the_command_says_how_to_install_it():
  # A fresh interpreter where Flax cannot be imported, as without the extra.
  script = ("import sys; sys.modules['flax'] = None\n"
            "from optax_split.experiments import cli\n"
            "cli.main(['compare'])")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode != 0
  assert 'pip install "optax-split[examples]"' in proc.stderr and "flax" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_missing_extra_names_the_distribution(monkeypatch):
  monkeypatch.setitem(sys.modules, "sklearn", None)
  assert cli.missing_extra() == ["scikit-learn"]
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["compare", "--help"])
  assert "scikit-learn cannot be imported" in str(exit_info.value)
  assert cli.INSTALL in str(exit_info.value)


def test_task_options_reach_the_task(monkeypatch):
  seen = {}

  def fake_compare(*, task, task_options, **_):
    seen.update(task=task, options=task_options)
    return ""

  monkeypatch.setattr(commands, "compare", fake_compare)
  cli.main(["compare", "--task", "lm", "--init", "gpt", "--no-bias", "--qk-layernorm",
            "--z-loss", "1e-4", "--adam-b2", "0.95", "--heads", "2"])
  assert seen["task"] == "lm"
  assert seen["options"] == {"init": "gpt", "bias": False, "qk_layernorm": True,
                             "z_loss": 1e-4, "adam_b2": 0.95, "heads": 2}
  cli.main(["compare", "--task", "adding", "--vector-readout"])
  assert seen["options"] == {"vector_readout": True}
