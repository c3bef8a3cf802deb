"""The runner's parts that need no training: the validation metrics of the tested checkpoint, run states, dry
runs and sweep files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from fimtest import CONFIGS, run, study_cmd, user_error

from fimvision.study.config import load_study
from fimvision.study.runner import RunState, StudyRunner, checkpoint_metrics


def metrics_log(path) -> None:
    """A run's metrics.csv as Lightning's CSV logger writes it: train rows, then validation rows per epoch, one
    epoch validated twice (val_check_interval), and a test row at the end."""
    nan = math.nan
    rows = [(0, 4, 1.2, nan, nan, nan), (0, 9, nan, 0.90, 0.50, nan),
            (1, 14, nan, 0.40, 0.80, nan), (1, 19, nan, 0.60, 0.70, nan),
            (2, 29, 0.3, nan, nan, nan), (2, 29, nan, 0.70, 0.75, nan), (nan, 30, nan, nan, nan, 0.77)]
    pd.DataFrame(rows, columns=["epoch", "step", "train_loss", "val_loss", "val_acc", "test_acc"]).to_csv(path, index=False)


@pytest.mark.parametrize("epoch, step, expected", [
    (1, 14, {"best_epoch": 1, "val_loss": 0.40, "val_acc": 0.80}),  # the validation it was saved after
    (1, 19, {"best_epoch": 1, "val_loss": 0.60, "val_acc": 0.70}),
    (2, 30, {"best_epoch": 2, "val_loss": 0.70, "val_acc": 0.75}),  # the last epoch's: the last validation
    (0, 9, {"best_epoch": 0, "val_loss": 0.90, "val_acc": 0.50}),
])
def test_the_val_metrics_are_those_of_the_tested_checkpoint(tmp_path, epoch, step, expected):
    metrics_log(tmp_path / "metrics.csv")
    checkpoint = tmp_path / "checkpoints" / "any-name-a-config-chose.ckpt"
    checkpoint.parent.mkdir()
    torch.save({"epoch": epoch, "global_step": step, "state_dict": {"w": torch.zeros(2)}}, checkpoint)
    assert checkpoint_metrics(tmp_path, checkpoint) == pytest.approx(expected)


def test_without_a_metrics_log_only_the_checkpoints_epoch_is_known(tmp_path):
    torch.save({"epoch": 3, "global_step": 40}, tmp_path / "last.ckpt")
    assert checkpoint_metrics(tmp_path, tmp_path / "last.ckpt") == {"best_epoch": 3}


# ------------------------------------------------------------------------------------------------ run states
def two_stage_study(path: Path) -> Path:
    """Stage b needs stage a's checkpoint; two seeds each."""
    path.write_text(yaml.safe_dump({"name": "two", "stages": {
        "a": {"axes": {"seed": {"values": [0, 1], "args": ["--seed_everything={}"]}}},
        "b": {"args": ["--ckpt={p}"], "needs": {"p": "a"},
              "axes": {"seed": {"values": [0, 1], "args": ["--seed_everything={}"]}}}}}))
    return path


def test_run_all_reports_each_run_as_a_state(tmp_path, monkeypatch):
    runner = StudyRunner(load_study(two_stage_study(tmp_path / "s.yaml")), tmp_path / "out")

    def execute(self, run):  # seed 1 of stage a fails; the rest succeed without training
        if run.id == "a__seed=1":
            raise RuntimeError("boom\nmore")
        result = {"run": run.id, "checkpoint": "x.ckpt"}
        self.folder(run).mkdir(parents=True, exist_ok=True)
        (self.folder(run) / "result.json").write_text(json.dumps(result))
        return {**result, "wall_s": 0.0}

    monkeypatch.setattr(StudyRunner, "execute", execute)
    status = runner.run_all(progress=False)
    assert {i: o.state for i, o in status.items()} == {"a__seed=0": RunState.DONE, "a__seed=1": RunState.FAILED,
                                                       "b__seed=0": RunState.DONE, "b__seed=1": RunState.NEED_FAILED}
    assert status["a__seed=1"].message == "RuntimeError: boom" and str(status["a__seed=1"]) == "failed: RuntimeError: boom"
    assert status["b__seed=1"].message == "a__seed=1" and status["b__seed=1"].failed and not status["b__seed=0"].failed
    again = StudyRunner(load_study(tmp_path / "s.yaml"), tmp_path / "out").run_all(["b__seed=1"], progress=False)
    assert again["a__seed=1"].state is RunState.FAILED  # run again from scratch in a new start (and failing again)


# ------------------------------------------------------------------------------------------------ dry run
def test_a_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "dry", "synthetic": {"gen/data": {"antibodies": 2, "per_class": 5}},
                                     "stages": {"main": {
                                         "args": ["--config", str(CONFIGS / "supervised" / "resnet18_color.yaml"),
                                                  "--data.init_args.root=gen/data"],
                                         "axes": {"seed": {"values": [0, 1], "args": ["--seed_everything={}"]}}}}}))
    before = sorted(tmp_path.rglob("*"))
    result = run(study_cmd("run", "--config", study, "--out", tmp_path / "out", "--dry-run"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 runs, 0 done, 2 to run" in result.stdout and "todo  main__seed=1: --config" in result.stdout
    assert "would generate the SYNTHETIC dataset gen/data" in result.stdout and "nothing was written" in result.stdout
    assert sorted(tmp_path.rglob("*")) == before  # no dataset, no study folder, no copy of the study file
    study.write_text(study.read_text().replace("--seed_everything={}", "--seed_everythin={}"))
    user_error(run(study_cmd("run", "--config", study, "--out", tmp_path / "out", "--dry-run"), tmp_path),
               "seed_everythin")  # still checks every run's settings
    assert sorted(tmp_path.rglob("*")) == before
