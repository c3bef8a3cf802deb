"""`fimvision-study` through the installed command: real runs resumed after a kill, shared by two processes and
workers, checked before the first run, collected again, and the sweep file driven through wandb's own agent code."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fimtest import (
    CONFIGS,
    ENV,
    read_wandb_run,
    run,
    run_as_wandb_agent,
    study_cmd,
    user_error,
    wandb_runs,
)

from fimvision.study.config import load_study
from fimvision.study.runner import StudyRunner

# Every run of the tiny studies below: a tiny CNN on the tiny dataset, a few steps.
TINY = ["--model.init_args.backbone=test_resnet", "--data.init_args.image_size=32", "--data.init_args.batch_size=8",
        "--data.init_args.num_workers=0", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=2"]


def write_study(path: Path, root: Path, *, seeds=(0, 1), pretrain: bool = False, extra: list[str] | None = None) -> Path:
    """A tiny study: (an SSL pretraining per modality and) a CNN (and its SSL-pretrained twin) x modality x seed."""
    main = {"args": ["--config", str(CONFIGS / "supervised" / "resnet18_color.yaml"), f"--data.init_args.root={root}",
                     *TINY, *(extra or [])],
            "axes": {"modality": {"values": ["color", "mono"], "args": ["--data.init_args.modality={}"]},
                     "seed": {"values": list(seeds), "args": ["--seed_everything={}", "--data.init_args.seed={}"]}}}
    stages = {"main": main}
    if pretrain:
        stages = {"pretrain": {"args": ["--config", str(CONFIGS / "ssl" / "pretrain.yaml"), "--model",
                                        str(CONFIGS / "ssl" / "models" / "simclr_resnet18.yaml"),
                                        f"--data.init_args.root={root}", *TINY, "--trainer.check_val_every_n_epoch=1"],
                               "test": False,
                               "axes": {"modality": main["axes"]["modality"]}}, "main": main}
        main["needs"] = {"ssl": "pretrain"}
        main["axes"] = {"model": {"named": {"cnn": [], "ssl_cnn": ["--model.init_args.backbone_checkpoint={ssl}"]}},
                        **main["axes"]}
    path.write_text(yaml.safe_dump({"name": "tiny", "stages": stages}, sort_keys=False))
    return path


def executed(output: str) -> list[str]:
    """The runs a `fimvision-study` process ran (one line each: '<run id>: test_acc ...')."""
    return re.findall(r"((?:main|pretrain)__[^\s:]+): (?:test_acc|val_knn_acc)", output)  # amid progress bars


# ------------------------------------------------------------------------------------------------ running
def test_a_study_runs_resumes_after_a_kill_and_reports(synthetic_root, tmp_path):
    study = write_study(tmp_path / "study.yaml", synthetic_root, seeds=(0, 1, 2))
    out = tmp_path / "out"
    process = subprocess.Popen(study_cmd("run", "--config", study, "--out", out), env=ENV, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while len(list(out.glob("runs/*/result.json"))) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    while not list(out.glob("locks/*.lock")) and process.poll() is None:  # the third run has started
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no clean-up at all: its lock stays behind
    process.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    (lock,) = out.glob("locks/*.lock")
    crashed = lock.stem
    assert len(finished) == 2 and crashed not in finished

    result = run(study_cmd("run", "--config", study, "--out", out), tmp_path, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "6 runs, 2 done, 4 to run" in result.stdout
    assert sorted(executed(result.stdout)) == sorted(set(r.id for r in StudyRunner(load_study(study), out).runs.values())
                                                     - set(finished))  # the killed run ran again, the others once
    assert {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json") if p.parent.name in finished} \
        == finished  # finished runs untouched
    assert not list(out.glob("locks/*.lock"))
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 6 and results["test_acc"].between(0, 1).all() and (results["wall_s"] > 0).all()
    assert set(results.columns) >= {"run", "stage", "modality", "seed", "test_acc", "test_f1_macro", "run_dir", "wall_s",
                                    "best_epoch", "val_loss"}
    assert (results["best_epoch"] == 0).all()  # one epoch
    for row in results.itertuples():  # val_* are those of the tested checkpoint's epoch
        logged = pd.read_csv(Path(row.run_dir) / "metrics.csv").dropna(subset=["val_loss"])
        assert row.val_loss == pytest.approx(logged.loc[logged["epoch"] == row.best_epoch, "val_loss"].iloc[-1])
    for row in results.itertuples():  # each run an ordinary run folder, repeatable from its config
        folder = Path(row.run_dir)
        assert (folder / "config.yaml").is_file() and (folder / "test_predictions.csv").is_file()
        assert yaml.safe_load((folder / "config.yaml").read_text())["data"]["init_args"]["modality"] == row.modality
    report = (out / "report.md").read_text()
    assert "## modality: each level against color" in report and "too few pairs to conclude (3 < 5)" in report
    paired = pd.read_csv(out / "compare_modality.csv").query("metric == 'test_acc'")
    color, mono = (results[results["modality"] == m].set_index("seed")["test_acc"] for m in ("color", "mono"))
    assert paired["n_pairs"].tolist() == [3] and paired["mean_diff"].iloc[0] == pytest.approx((mono - color).mean())
    for png in ("compare_modality.png", "confusion_matrices.png", "vial_accuracy.png", "learning_curves.png"):
        assert (out / png).stat().st_size > 1000, png
    assert "data:image/png;base64," in (out / "report.html").read_text()

    again = run(study_cmd("run", "--config", study, "--out", out), tmp_path)  # all done: nothing runs
    assert again.returncode == 0 and "6 runs, 6 done, 0 to run" in again.stdout and executed(again.stdout) == []


def test_two_processes_and_workers_on_one_study_folder_run_each_run_once(synthetic_root, tmp_path):
    study = write_study(tmp_path / "study.yaml", synthetic_root, pretrain=True)
    out = tmp_path / "out"
    commands = [study_cmd("run", "--config", study, "--out", out, "--no-report"),
                study_cmd("run", "--config", study, "--out", out, "--no-report", "--workers", "2")]
    processes = [subprocess.Popen(c, env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for c in commands]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    ran = [run_id for o in outputs for run_id in executed(o)]
    all_runs = [p.name for p in (out / "runs").iterdir()]
    assert len(all_runs) == 2 + 8 and sorted(ran) == sorted(all_runs), (sorted(ran), outputs)  # each exactly once
    for run_id in all_runs:
        result = json.loads((out / "runs" / run_id / "result.json").read_text())
        if "ssl_cnn" in run_id:  # it started from its own modality's pretraining
            config = yaml.safe_load((out / "runs" / run_id / "config.yaml").read_text())
            modality = config["data"]["init_args"]["modality"]
            assert config["model"]["init_args"]["backbone_checkpoint"].startswith(
                str(out / "runs" / f"pretrain__modality={modality}"))
            assert result["finished"] > json.loads((out / "runs" / f"pretrain__modality={modality}" / "result.json")
                                                   .read_text())["finished"]


def test_every_run_is_checked_before_the_first_starts(synthetic_root, tmp_path):
    study = write_study(tmp_path / "study.yaml", synthetic_root)
    spec = yaml.safe_load(study.read_text())
    spec["stages"]["main"]["axes"]["seed"]["named"] = {"ok": [], "bad": ["--data.init_args.root=relative/nowhere"]}
    del spec["stages"]["main"]["axes"]["seed"]["values"], spec["stages"]["main"]["axes"]["seed"]["args"]
    study.write_text(yaml.safe_dump(spec))
    result = run(study_cmd("run", "--config", study, "--out", tmp_path / "out"), tmp_path)
    user_error(result, "run main__modality=color__seed=bad: dataset folder relative/nowhere does not exist")
    assert not (tmp_path / "out" / "runs").exists()  # nothing ran
    spec["stages"]["main"]["axes"]["seed"]["named"]["bad"] = ["--trainer.max_epoch=1"]
    study.write_text(yaml.safe_dump(spec))
    user_error(run(study_cmd("run", "--config", study, "--out", tmp_path / "out"), tmp_path), "max_epoch")


def test_a_finished_run_is_not_mixed_with_changed_arguments(synthetic_root, tmp_path):
    study = write_study(tmp_path / "study.yaml", synthetic_root, seeds=(0,))
    out = tmp_path / "out"
    assert run(study_cmd("run", "--config", study, "--out", out, "--only", "main__modality=color*"),
               tmp_path).returncode == 0
    write_study(study, synthetic_root, seeds=(0,), extra=["--model.init_args.lr=0.01"])
    result = run(study_cmd("run", "--config", study, "--out", out), tmp_path)
    user_error(result, "run main__modality=color__seed=0 in")
    assert "finished with other arguments" in result.stderr and (out / "runs" / "main__modality=color__seed=0").is_dir()


def test_collect_rebuilds_results_from_run_folders_and_from_a_sweeps_summaries(synthetic_root, tmp_path):
    study = write_study(tmp_path / "study.yaml", synthetic_root, seeds=(0,))
    out = tmp_path / "out"
    assert run(study_cmd("run", "--config", study, "--out", out, "--no-report"), tmp_path).returncode == 0
    before = pd.read_csv(out / "results.csv")
    (out / "results.csv").unlink()
    result = run(study_cmd("collect", out), tmp_path)
    assert result.returncode == 0 and "2 of 2 runs finished" in result.stdout
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), before)
    assert run(study_cmd("report", out), tmp_path).returncode == 0 and (out / "report.md").is_file()

    class Run:  # what wandb.Api().sweep(...).runs yields: the summary run-one logged, the run's state
        def __init__(self, row, state="finished"):
            self.summary, self.config, self.state = {**row, "_runtime": 3}, {"run": row["run"]}, state

    class Api:
        def sweep(self, path):
            assert path == "me/project/abc"
            rows = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/result.json"))]
            return type("Sweep", (), {"runs": [Run(rows[1]), Run(rows[0]), Run({"run": "elsewhere"}, "crashed")]})

    StudyRunner(load_study(study), tmp_path / "from-wandb").collect_from_wandb("me/project/abc", api=Api())
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "from-wandb" / "results.csv"), before)


# ------------------------------------------------------------------------------------------------ W&B sweeps
def test_the_sweep_file_runs_under_a_wandb_agent(agent_env, synthetic_root, tmp_path):
    study = write_study(tmp_path / "study.yaml", synthetic_root, seeds=(0,), pretrain=True)
    out = tmp_path / "shared"
    result = run(study_cmd("sweep", "--config", study, "--out", out, "--project", "p"), tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = yaml.safe_load((out / "sweep.yaml").read_text())
    assert sweep["method"] == "grid" and sweep["metric"] == {"name": "test_acc", "goal": "maximize"}
    ids = sweep["parameters"]["run"]["values"]
    assert len(ids) == 2 + 4 and sweep["command"][-1] == "${args}"
    target = "main__model=ssl_cnn__modality=mono__seed=0"
    assert run_as_wandb_agent(sweep, {"run": target}, "agentrun") == 0
    assert (out / "runs" / "pretrain__modality=mono" / "result.json").is_file()  # what it needs ran first
    result = json.loads((out / "runs" / target / "result.json").read_text())
    (logged,) = [read_wandb_run(d) for d in wandb_runs(out / "runs" / target)]
    assert logged["config"]["run"] == target and logged["config"]["modality"] == "mono"
    assert any(row.get("test_acc") == pytest.approx(result["test_acc"]) for row in logged["history"])
    assert not wandb_runs(out / "runs" / "pretrain__modality=mono")  # inner runs do not log as the agent's run
    assert run_as_wandb_agent(sweep, {"run": "nope"}, "bad") == 2
