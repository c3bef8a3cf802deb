"""W&B tracking without a server: offline run folders read back, every sweep file driven through wandb's own
agent code into real `fimvision` runs, and two agents on one machine."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from fimtest import (
    CONFIGS,
    REPO,
    fast_args,
    read_wandb_run,
    run_as_wandb_agent,
    run_cli,
    sample_sweep_parameters,
    wandb_runs,
)

WANDB = CONFIGS / "loggers" / "wandb.yaml"
SWEEPS = sorted((CONFIGS / "sweeps").glob("*.yaml"))
# The metrics each family logs during fit (docs/tracking.md): what a sweep may optimise.
FAMILY_METRICS = {
    "supervised": {"val_loss", "val_acc", "val_balanced_acc", "val_f1_macro"},
    "ssl": {"val_knn_acc", "val_knn_balanced_acc", "val_knn_f1_macro", "val_feature_std"},
    "fewshot": {"val_loss", "val_acc", "val_balanced_acc", "val_f1_macro"},
}


def test_offline_run_holds_the_metrics_config_and_images(offline, synthetic_root, tmp_path):
    config = CONFIGS / "supervised" / "resnet18_color.yaml"
    cli = run_cli(["fit", "--config", config, "--config", WANDB, *fast_args(synthetic_root, tmp_path),
                   "--model.init_args.backbone=test_resnet", "--trainer.max_epochs=2", "--trainer.log_every_n_steps=1"])
    run_dir = cli.trainer.log_dir
    (wandb_run,) = wandb_runs(tmp_path)
    assert str(wandb_run).startswith(str(run_dir))  # inside the run's own folder
    logged = read_wandb_run(wandb_run)
    metrics = pd.read_csv(f"{run_dir}/metrics.csv")
    for name in ("train_loss", "val_loss", "val_f1_macro"):
        csv = metrics[name].dropna().tolist()
        wb = [row[name] for row in logged["history"] if name in row]
        assert wb == pytest.approx(csv, rel=1e-6), name  # the same values, step by step
    assert logged["config"]["model.init_args.backbone"] == "test_resnet"
    assert logged["config"]["data.init_args.root"] == str(synthetic_root)
    assert "config.yaml" in logged["files"]
    images = [row for row in logged["history"] if "train_images/_type" in row]
    assert len(images) == 1 and images[0]["train_images/count"] == 16  # 8 per class, 2 classes
    assert sorted(set(images[0]["train_images/captions"])) == ["heat", "mechanical"]

    # test and predict on the run's checkpoint: their own W&B runs, in the same folder.
    ckpt = f"{run_dir}/checkpoints/last.ckpt"
    same = ["--config", config, "--config", WANDB, *fast_args(synthetic_root, tmp_path),
            "--model.init_args.backbone=test_resnet"]  # as trained: a checkpoint refuses another backbone
    run_cli(["test", *same, f"--ckpt_path={ckpt}"])
    run_cli(["predict", *same, f"--ckpt_path={ckpt}"])
    test_run, predict_run = (read_wandb_run(d) for d in wandb_runs(tmp_path)[1:])
    keys = {k for row in test_run["history"] for k in row}
    assert {"test_acc", "test_recall_heat", "test_confusion_matrix/_type", "test_recall_per_class_table/_type"} <= keys
    assert "config_test.yaml" in test_run["files"]
    table = next(row for row in predict_run["history"] if "predictions/_type" in row)
    assert table["predictions/nrows"] == 96 and table["predictions/ncols"] == 6


def test_disabled_mode_writes_nothing(monkeypatch, synthetic_root, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_cli(["fit", "--config", CONFIGS / "supervised" / "resnet18_color.yaml", "--config", WANDB,
             *fast_args(synthetic_root, tmp_path), "--model.init_args.backbone=test_resnet", "--trainer.max_epochs=1"])
    assert not wandb_runs(tmp_path) and next(tmp_path.rglob("metrics.csv")).is_file()


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_is_well_formed(path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["program"] == "fimvision" and sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["name"] in FAMILY_METRICS[path.stem] and sweep["metric"]["goal"] in ("minimize", "maximize")
    assert sweep["command"][:5] == ["${env}", "fimvision", "fit", "--config", sweep["command"][4]]
    assert (REPO / sweep["command"][4]).is_file() and sweep["command"][-1] == "${args}"
    assert all(name.startswith(("model.init_args.", "data.init_args.", "trainer.")) for name in sweep["parameters"])


def tiny(root, out, family: str) -> dict:
    """Arguments that keep any run of a sweep to a few seconds (what fast_dev_run would do, but logging)."""
    args = {"data.init_args.root": str(root), "data.init_args.num_workers": 0, "data.init_args.batch_size": 8,
            "trainer.max_epochs": 2, "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1,
            "trainer.log_every_n_steps": 1, "trainer.logger.init_args.save_dir": str(out),
            "trainer.default_root_dir": str(out), "trainer.enable_progress_bar": False}
    if family == "ssl":
        args.update({"model.init_args.backbone": "test_resnet", "data.init_args.image_size": 32,
                     "trainer.check_val_every_n_epoch": 1})
    if family == "fewshot":
        args.update({"data.init_args.source": "group!=ab3", "data.init_args.target": "group=ab3",
                     "data.init_args.image_size": 32, "model.init_args.steps": 4, "data.init_args.fewshot_batches": 2})
    return args


@pytest.mark.slow  # each run a `fimvision` process started by the agent: its imports, then a few steps
@pytest.mark.parametrize("path", [p for p in SWEEPS if p.stem != "supervised"], ids=lambda p: p.stem)
def test_a_wandb_agent_runs_each_sweep_file(path, agent_env, synthetic_root, tmp_path, monkeypatch):
    # (The supervised sweep file: test_two_agents_on_one_machine_share_nothing.)
    sweep = yaml.safe_load(path.read_text())
    if path.stem == "fewshot":  # the sweep starts from a source model named in the agents' environment
        source = run_cli(["fit", "--config", CONFIGS / "sfda" / "fim_antibody.yaml", "--model",
                          CONFIGS / "sfda" / "models" / "source_small_cnn.yaml", *fast_args(synthetic_root, tmp_path / "src"),
                          "--data.init_args.source=group!=ab3", "--data.init_args.target=group=ab3",
                          "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
                          "--wandb.enabled=false"])  # not a sweep run itself
        monkeypatch.setenv("SOURCE_CHECKPOINT", source.trainer.checkpoint_callback.last_model_path)
    drawn = sample_sweep_parameters(sweep["parameters"], np.random.default_rng(0))
    if path.stem == "fewshot":
        drawn["model.init_args.steps"] = 4  # the drawn 200 or 1000 steps, cut for the test
    assert run_as_wandb_agent(sweep, {**drawn, **tiny(synthetic_root, tmp_path / "runs", path.stem)}, "run1") == 0
    (wandb_run,) = wandb_runs(tmp_path / "runs")
    logged = read_wandb_run(wandb_run)
    assert any(sweep["metric"]["name"] in row for row in logged["history"]), "the sweep metric was not logged"
    for name, value in drawn.items():  # the run used the drawn values
        assert logged["config"][name] == pytest.approx(value) if isinstance(value, float) else logged["config"][name] == value


@pytest.mark.slow  # a `fimvision` process
def test_an_impossible_value_fails_the_run_with_exit_2(agent_env, synthetic_root, tmp_path, capfd):
    sweep = yaml.safe_load((CONFIGS / "sweeps" / "supervised.yaml").read_text())
    args = {**tiny(synthetic_root, tmp_path / "runs", "supervised"), "model.init_args.backbone": "resnet181"}
    assert run_as_wandb_agent(sweep, args, "bad") == 2
    assert "error: unknown timm model 'resnet181'" in capfd.readouterr().err


@pytest.mark.slow  # two `fimvision` processes
def test_two_agents_on_one_machine_share_nothing(agent_env, synthetic_root, tmp_path):
    # Two draws of the supervised sweep file at once, each run as the agent renders it.
    sweep = yaml.safe_load((CONFIGS / "sweeps" / "supervised.yaml").read_text())
    rng = np.random.default_rng(0)
    draws = [sample_sweep_parameters(sweep["parameters"], rng) for _ in range(2)]
    draws[1]["model.init_args.lr"] = draws[0]["model.init_args.lr"] * 2  # told apart by their folders' configs
    tiny_args = tiny(synthetic_root, tmp_path / "runs", "supervised")
    runs = [run_as_wandb_agent(sweep, {**drawn, **tiny_args, "model.init_args.backbone": "test_resnet"}, f"agent{i}",
                               wait=False) for i, drawn in enumerate(draws)]
    assert [r.wait() for r in runs] == [0, 0]
    folders = sorted((tmp_path / "runs" / "lightning_logs").iterdir())
    assert [f.name for f in folders] == ["version_0", "version_1"]
    lrs = []
    for folder in folders:
        (wandb_run,) = wandb_runs(folder)  # one W&B run per folder
        assert (folder / "checkpoints" / "last.ckpt").is_file()
        config = yaml.safe_load((folder / "config.yaml").read_text())
        lrs.append(config["model"]["init_args"]["lr"])
        logged = read_wandb_run(wandb_run)
        assert any(sweep["metric"]["name"] in row for row in logged["history"]), "the sweep metric was not logged"
        drawn = next(d for d in draws if d["model.init_args.lr"] == pytest.approx(lrs[-1]))
        for name, value in drawn.items():  # the run used its drawn values (the backbone: the test's tiny one)
            if name != "model.init_args.backbone":
                assert logged["config"][name] == (pytest.approx(value) if isinstance(value, float) else value), name
    assert sorted(lrs) == pytest.approx(sorted(d["model.init_args.lr"] for d in draws))  # each its own run's config


def test_efficiency_drift_runs_are_tracked(offline, tmp_path):
    from fimvision.efficiency.cli import main

    assert main(["drift", f"--config={CONFIGS / 'supervised' / 'resnet18_color.yaml'}",
                 "--model.init_args.backbone=test_resnet", "--data.init_args.image_size=32",
                 "--data.init_args.root=/nonexistent", "--steps=4", "--every_n_steps=2", "--batch_size=4",
                 "--pairs=[seed]", f"--out={tmp_path / 'drift'}", "--device=cpu", "--wandb.enabled=true"]) == 0
    runs = [read_wandb_run(d) for d in wandb_runs(tmp_path / "drift")]
    assert len(runs) == 2 and {r["config"]["drift_run.name"] for r in runs} == {"base", "seed"}
    assert all(any("train_loss" in row for row in r["history"]) for r in runs)
