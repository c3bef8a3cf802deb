"""The runner's parts that need no training: the validation metrics of the tested checkpoint, run states, dry
runs and sweep files."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from fimtest import CONFIGS, assert_user_error, run, study_cmd, study_main

from fimvision.study.checkpoint import checkpoint_metrics
from fimvision.study.config import load_study
from fimvision.study.runner import RunState, StudyRunner


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
def test_a_dry_run_prints_the_plan_and_writes_nothing(tmp_path, monkeypatch, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "dry", "synthetic": {"gen/data": {"antibodies": 2, "per_class": 5}},
                                     "stages": {"main": {
                                         "args": ["--config", str(CONFIGS / "supervised" / "resnet18_color.yaml"),
                                                  "--data.init_args.root=gen/data"],
                                         "axes": {"seed": {"values": [0, 1], "args": ["--seed_everything={}"]}}}}}))
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)  # the command in this process, run from there
    code, stdout, stderr = study_main(["run", "--config", study, "--out", tmp_path / "out", "--dry-run"], capsys)
    assert code == 0, stderr
    assert "2 runs, 0 done, 2 to run" in stdout and "todo  main__seed=1: --config" in stdout
    assert "would generate the SYNTHETIC dataset gen/data" in stdout and "nothing was written" in stdout
    assert sorted(tmp_path.rglob("*")) == before  # no dataset, no study folder, no copy of the study file
    study.write_text(study.read_text().replace("--seed_everything={}", "--seed_everythin={}"))
    code, _, stderr = study_main(["run", "--config", study, "--out", tmp_path / "out", "--dry-run"], capsys)
    assert_user_error(code, stderr, "seed_everythin")  # still checks every run's settings
    assert sorted(tmp_path.rglob("*")) == before


# ------------------------------------------------------------------------------------------------ sweep files
TINY = ["--model.init_args.backbone=test_resnet", "--data.init_args.image_size=32", "--data.init_args.batch_size=8",
        "--data.init_args.num_workers=0", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=2"]


@pytest.mark.slow  # `fimvision-study run-one` as a process, as an agent starts it
def test_a_sweep_file_names_paths_relative_to_the_checkout_and_runs_from_a_moved_one(synthetic_root, tmp_path,
                                                                                      monkeypatch, capsys):
    repo = tmp_path / "repo"
    (repo / "studies").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    shutil.copytree(synthetic_root, repo / "data")
    (repo / "studies" / "s.yaml").write_text(yaml.safe_dump({"name": "sw", "stages": {"main": {
        "args": ["--config", str(CONFIGS / "supervised" / "resnet18_color.yaml"), "--data.init_args.root=data", *TINY],
        "axes": {"seed": {"values": [0], "args": ["--seed_everything={}"]}}}}}))
    monkeypatch.chdir(repo)  # `fimvision-study sweep` in this process, run from the checkout
    code, _, stderr = study_main(["sweep", "--config", repo / "studies" / "s.yaml", "--out", "runs/sw"], capsys)
    assert code == 0, stderr
    monkeypatch.chdir(tmp_path)
    text = (repo / "runs" / "sw" / "sweep.yaml").read_text()
    command = yaml.safe_load(text)["command"]
    assert command == ["${env}", "fimvision-study", "run-one", "--config", "studies/s.yaml", "--out", "runs/sw", "${args}"]
    assert str(tmp_path) not in text  # nothing absolute: any clone of the checkout resolves it

    moved = tmp_path / "elsewhere" / "clone"
    moved.parent.mkdir()
    repo.rename(moved)
    result = run([*study_cmd(*command[2:-1]), "--run=main__seed=0"], moved)  # what an agent started there runs
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert json.loads((moved / "runs" / "sw" / "runs" / "main__seed=0" / "result.json").read_text())["test_acc"] >= 0


def test_run_one_works_in_the_installed_checkout_when_started_elsewhere(tmp_path, monkeypatch):
    from fimvision.errors import ConfigError
    from fimvision.study.cli import work_in_checkout

    monkeypatch.chdir(tmp_path)
    work_in_checkout("configs/study/fusion.yaml")  # not found here: found in the checkout fimvision runs from
    assert Path.cwd() == CONFIGS.parent
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="study file configs/study/nowhere.yaml not found from .*repository root"):
        work_in_checkout("configs/study/nowhere.yaml")
