"""`fimvision-study run` as processes: a study killed mid-run resumes in a new process and reports, and two
processes (one with two workers) share one study folder, each run running once. (The other commands, in
this process: test_study_commands.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fimtest import ENV, executed, study_cmd, study_main, write_study

from fimvision.study.config import load_study
from fimvision.study.runner import StudyRunner

# Each test starts `fimvision-study` processes (their imports, then several tiny runs each).
pytestmark = pytest.mark.slow

# ------------------------------------------------------------------------------------------------ running
def test_a_study_runs_resumes_after_a_kill_and_reports(synthetic_root, tmp_path, monkeypatch, capsys):
    study = write_study(tmp_path / "study.yaml", synthetic_root, seeds=(0, 1))
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

    monkeypatch.chdir(tmp_path)  # resumed by a new runner (in this process: the killed one is gone)
    code, stdout, stderr = study_main(["run", "--config", study, "--out", out], capsys)
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    assert "4 runs, 2 done, 2 to run" in stdout
    assert sorted(executed(stdout)) == sorted(set(r.id for r in StudyRunner(load_study(study), out).runs.values())
                                              - set(finished))  # the killed run ran again, the others once
    assert {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json") if p.parent.name in finished} \
        == finished  # finished runs untouched
    assert not list(out.glob("locks/*.lock"))
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 and results["test_acc"].between(0, 1).all() and (results["wall_s"] > 0).all()
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
    assert "## modality: each level against color" in report and "too few pairs to conclude (2 < 5)" in report
    paired = pd.read_csv(out / "compare_modality.csv").query("metric == 'test_acc'")
    color, mono = (results[results["modality"] == m].set_index("seed")["test_acc"] for m in ("color", "mono"))
    assert paired["n_pairs"].tolist() == [2] and paired["mean_diff"].iloc[0] == pytest.approx((mono - color).mean())
    for png in ("compare_modality.png", "confusion_matrices.png", "vial_accuracy.png", "learning_curves.png"):
        assert (out / png).stat().st_size > 1000, png
    assert "data:image/png;base64," in (out / "report.html").read_text()

    code, stdout, _ = study_main(["run", "--config", study, "--out", out], capsys)  # all done: nothing runs
    assert code == 0 and "4 runs, 4 done, 0 to run" in stdout and executed(stdout) == []


def test_two_processes_and_workers_on_one_study_folder_run_each_run_once(synthetic_root, tmp_path):
    study = write_study(tmp_path / "study.yaml", synthetic_root, seeds=(0,), pretrain=True)
    out = tmp_path / "out"
    commands = [study_cmd("run", "--config", study, "--out", out, "--no-report"),
                study_cmd("run", "--config", study, "--out", out, "--no-report", "--workers", "2")]
    processes = [subprocess.Popen(c, env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for c in commands]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    ran = [run_id for o in outputs for run_id in executed(o)]
    all_runs = [p.name for p in (out / "runs").iterdir()]
    assert len(all_runs) == 2 + 4 and sorted(ran) == sorted(all_runs), (sorted(ran), outputs)  # each exactly once
    for run_id in all_runs:
        result = json.loads((out / "runs" / run_id / "result.json").read_text())
        if "ssl_cnn" in run_id:  # it started from its own modality's pretraining
            config = yaml.safe_load((out / "runs" / run_id / "config.yaml").read_text())
            modality = config["data"]["init_args"]["modality"]
            assert config["model"]["init_args"]["backbone_checkpoint"].startswith(
                str(out / "runs" / f"pretrain__modality={modality}"))
            assert result["finished"] > json.loads((out / "runs" / f"pretrain__modality={modality}" / "result.json")
                                                   .read_text())["finished"]
