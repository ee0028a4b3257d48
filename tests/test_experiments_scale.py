"""The ``optax-split scale`` width sweep end to end at tiny sizes, and what it reports."""

import json

import pytest

from optax_split.experiments import cli, runner, scale
from optax_split.experiments.results import SuiteStats, Summary

TINY = ["scale", "--quick", "--widths", "8", "--steps", "2", "--no-progress"]


def test_quick_sweep_writes_each_width_and_the_figure_and_resumes(tmp_path, capsys,
                                                                   monkeypatch):
  argv = [*TINY, "--optimizers", "sgd", "sgd@qk_z", "--out", str(tmp_path)]
  cli.main(argv)
  printed = capsys.readouterr().out
  assert printed.startswith("# Width sweep") and "| sgd@qk_z | " in printed
  report = json.loads((tmp_path / "scale.json").read_text())
  assert report["commands"] == ["optax-split " + " ".join(argv)]
  assert report["widths"] == [8] and set(report["rows"]) == {"sgd", "sgd@qk_z"}
  for name in ("sgd", "sgd@qk_z"):
    point = report["rows"][name]["8"]
    assert point["runs"] == 1 and point["rates"] == [0.1] and point["global_share"] is None
  # The fixed model is another task: qk-LayerNorm and z-loss in its settings.
  plain, fixed = (json.loads((tmp_path / d / "results.json").read_text())["task_settings"]
                  for d in ("width_8", "width_8@qk_z"))
  assert (plain["qk_layernorm"], plain["z_loss"]) == (False, 0.0)
  assert (fixed["qk_layernorm"], fixed["z_loss"]) == (True, 1e-4)
  assert plain["width"] == fixed["width"] == 8 and plain["init"] == "gpt"
  assert (tmp_path / "scale.png").read_bytes()[:4] == b"\x89PNG"
  # Run again: everything is there with these settings, so nothing trains.
  monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("trained again"))
  cli.main(argv)
  assert json.loads((tmp_path / "scale.json").read_text())["rows"] == report["rows"]


def test_a_stopped_sweep_keeps_the_optimizers_it_finished(tmp_path, monkeypatch):
  trained = runner.train

  def stop_at_adam(task, spec, *args):
    if spec.name == "adam":
      raise KeyboardInterrupt
    return trained(task, spec, *args)

  monkeypatch.setattr(runner, "train", stop_at_adam)
  argv = [*TINY, "--optimizers", "sgd", "adam", "--jobs", "1", "--out", str(tmp_path)]
  with pytest.raises(KeyboardInterrupt):
    cli.main(argv)
  written = json.loads((tmp_path / "width_8" / "results.json").read_text())
  assert [s["optimizer"] for s in written["optimizers"]] == ["sgd"]


@pytest.mark.parametrize("flags, message", [
    (["--optimizers", "sgd@qk"], "@qk_z"),
    (["--optimizers", "no_such_optimizer"], "no_such_optimizer"),
    (["--widths", "0"], "--widths must be positive"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--seeds", "0"], "--seeds must be at least 1"),
])
def test_bad_input_is_refused_before_anything_trains(flags, message, tmp_path, monkeypatch):
  monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("trained"))
  with pytest.raises(SystemExit, match=message):
    cli.main([*TINY, *flags, "--out", str(tmp_path)])


def _point(final_val_by_rate, rates=(0.01, 0.1, 1.0)):
  stats = SuiteStats(rates=list(rates), final_val_by_rate=final_val_by_rate, init_val=8.0,
                     spikes_at_best=0, spikes_grid=0)
  return scale.Point.of(Summary(optimizer="x", suite=stats, curves={"global_share": [[0.5]]}))


def test_a_best_rate_near_the_top_of_the_grid_is_flagged():
  assert not _point([3.0, 2.0, 5.0]).short_of_headroom  # 1.0 / 0.1: 10x above the best.
  assert _point([3.0, 5.0, 2.0]).short_of_headroom  # Best at the top.
  assert _point([None, None, None]).best_rate is None  # Every rate diverged.
  assert _point([3.0, 2.0, None]).global_share == 0.5
