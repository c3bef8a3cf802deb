"""`fimvision-study` commands in this process on tiny studies: every run checked before the first starts, a
finished run never mixed with changed arguments, results collected again from run folders and from a sweep,
and the sweep file driven through wandb's own agent code (its runs, as the agent starts them, are processes)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from fimtest import (
    assert_user_error,
    read_wandb_run,
    run_as_wandb_agent,
    study_main,
    wandb_runs,
    write_study,
)

from fimvision.study.config import load_study
from fimvision.study.runner import StudyRunner


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """The command runs in ``tmp_path``, as the installed command would from there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_run_is_checked_before_the_first_starts(synthetic_root, in_tmp, capsys):
    study = write_study(in_tmp / "study.yaml", synthetic_root)
    spec = yaml.safe_load(study.read_text())
    spec["stages"]["main"]["axes"]["seed"]["named"] = {"ok": [], "bad": ["--data.init_args.root=relative/nowhere"]}
    del spec["stages"]["main"]["axes"]["seed"]["values"], spec["stages"]["main"]["axes"]["seed"]["args"]
    study.write_text(yaml.safe_dump(spec))
    code, _, err = study_main(["run", "--config", study, "--out", in_tmp / "out"], capsys)
    assert_user_error(code, err, "run main__modality=color__seed=bad: dataset folder relative/nowhere does not exist")
    assert not (in_tmp / "out" / "runs").exists()  # nothing ran
    spec["stages"]["main"]["axes"]["seed"]["named"]["bad"] = ["--trainer.max_epoch=1"]
    study.write_text(yaml.safe_dump(spec))
    assert_user_error(*study_main(["run", "--config", study, "--out", in_tmp / "out"], capsys)[::2], "max_epoch")
    assert not (in_tmp / "out" / "runs").exists()


def test_a_finished_run_is_not_mixed_with_changed_arguments(synthetic_root, in_tmp, capsys):
    study = write_study(in_tmp / "study.yaml", synthetic_root, seeds=(0,))
    out = in_tmp / "out"
    assert study_main(["run", "--config", study, "--out", out, "--only", "main__modality=color*", "--no-report"],
                      capsys)[0] == 0
    write_study(study, synthetic_root, seeds=(0,), extra=["--model.init_args.lr=0.01"])
    code, _, err = study_main(["run", "--config", study, "--out", out], capsys)
    assert_user_error(code, err, "run main__modality=color__seed=0 in")
    assert "finished with other arguments" in err and (out / "runs" / "main__modality=color__seed=0").is_dir()


def test_collect_rebuilds_results_from_run_folders_and_from_a_sweeps_summaries(synthetic_root, in_tmp, capsys):
    study = write_study(in_tmp / "study.yaml", synthetic_root, seeds=(0,))
    out = in_tmp / "out"
    assert study_main(["run", "--config", study, "--out", out, "--no-report"], capsys)[0] == 0
    before = pd.read_csv(out / "results.csv")
    (out / "results.csv").unlink()
    code, stdout, _ = study_main(["collect", out], capsys)
    assert code == 0 and "2 of 2 runs finished" in stdout
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), before)
    assert study_main(["report", out], capsys)[0] == 0 and (out / "report.md").is_file()

    class Run:  # what wandb.Api().sweep(...).runs yields: the summary run-one logged, the run's state
        def __init__(self, row, state="finished"):
            self.summary, self.config, self.state = {**row, "_runtime": 3}, {"run": row["run"]}, state

    class Api:
        def sweep(self, path):
            assert path == "me/project/abc"
            rows = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/result.json"))]
            return type("Sweep", (), {"runs": [Run(rows[1]), Run(rows[0]), Run({"run": "elsewhere"}, "crashed")]})

    StudyRunner(load_study(study), in_tmp / "from-wandb").collect_from_wandb("me/project/abc", api=Api())
    pd.testing.assert_frame_equal(pd.read_csv(in_tmp / "from-wandb" / "results.csv"), before)


# ------------------------------------------------------------------------------------------------ W&B sweeps
@pytest.mark.slow  # the agent starts `fimvision-study run-one` processes
def test_the_sweep_file_runs_under_a_wandb_agent(agent_env, synthetic_root, tmp_path, capsys):
    study = write_study(tmp_path / "study.yaml", synthetic_root, seeds=(0,), pretrain=True)
    out = tmp_path / "shared"
    code, _, err = study_main(["sweep", "--config", study, "--out", out, "--project", "p"], capsys)
    assert code == 0, err
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
    # An unknown run id: the sweep command, through the same `main` in this process (an agent passes the process's
    # exit status on: tests/test_tracking.py::test_an_impossible_value_fails_the_run_with_exit_2).
    code, _, err = study_main([*sweep["command"][2:-1], "--run=nope"], capsys)
    assert code == 2 and "nope" in err.strip().splitlines()[-1], err
