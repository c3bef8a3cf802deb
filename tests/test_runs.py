"""Runs that scripts, CI and sweep agents can leave alone, through the installed `fimvision` as subprocesses:
one folder a run, a saved config that reproduces it, a divergence guard, Ctrl-C, exact resume in place,
and predictions that never overwrite earlier ones."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch
import yaml
from fimtest import CONFIGS, ENV, exe, fit_cmd, run, run_in_process, user_error

SUPERVISED = CONFIGS / "supervised" / "resnet18_color.yaml"
pytestmark = pytest.mark.slow  # every test starts `fimvision` processes: their imports, then a tiny run each


def test_fit_exits_0_into_its_own_folder_and_its_config_reproduces_it(fitted, work, monkeypatch, capsys):
    files = {p.relative_to(fitted).as_posix() for p in fitted.rglob("*")}
    assert {"config.yaml", "metrics.csv", "hparams.yaml", "checkpoints/last.ckpt"} <= files
    assert any(f.startswith("checkpoints/best-epoch=") for f in files)
    assert torch.load(fitted / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    # The saved config is the whole run: fitting it again (through the same `main`, in this process) gives the same
    # validation scores.
    monkeypatch.chdir(work)
    again = run_in_process([exe("fimvision"), "fit", "--config", fitted / "config.yaml"], capsys)
    assert again.returncode == 0, again.stderr[-2000:]
    rerun = fitted.parent / "version_1"
    first, second = (pd.read_csv(r / "metrics.csv").dropna(subset=["val_loss"]) for r in (fitted, rerun))
    assert first[["epoch", "val_loss", "val_acc"]].to_numpy().tolist() == \
        second[["epoch", "val_loss", "val_acc"]].to_numpy().tolist()


def test_non_finite_loss_stops_with_exit_2_and_no_nan_checkpoint(work, monkeypatch, capsys):
    # Through the same `main`, in this process (the next test runs the installed script).
    monkeypatch.chdir(work)
    result = run_in_process(fit_cmd("--model.init_args.lr=1e6", "--model.init_args.warmup_epochs=0",
                                    "--trainer.max_epochs=3", save_dir="diverged"), capsys)
    user_error(result, "training diverged at epoch 0, global step ")
    for part in ("last finite loss", "learning rate ", "--trainer.gradient_clip_val"):
        assert part in result.stderr, part
    assert re.search(r"the training loss is (nan|-?inf)", result.stderr)
    assert re.search(r"learning rate [0-9.]+e\+0[56]", result.stderr)  # the schedule's value at that step
    assert not [p for p in (work / "diverged").rglob("*.ckpt") if "nan" in p.name]


def test_non_finite_validation_loss_stops_with_exit_2_and_no_checkpoint_of_it(work):
    # One training step at lr 1e6 leaves finite weights and a finite training loss, but BatchNorm statistics and
    # logits so large that the validation loss is NaN: before the guard covered validation this run exited 0.
    result = run(fit_cmd("--model.init_args.lr=1e6", "--model.init_args.warmup_epochs=0", "--trainer.max_epochs=1",
                         "--trainer.limit_train_batches=1", save_dir="val_diverged"), work)
    user_error(result, "training diverged at epoch 0, global step 1: val_loss is nan (no finite val_loss before it; "
                       "learning rate 1e+06).")
    assert "--trainer.gradient_clip_val" in result.stderr and "--model.init_args.warmup_epochs" in result.stderr
    for path in (work / "val_diverged").rglob("*.ckpt"):  # none is written; any there must be finite
        state = torch.load(path, weights_only=False)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), path
    assert not list((work / "val_diverged").rglob("best-*.ckpt"))


def test_two_runs_started_together_get_separate_complete_folders(work):
    procs = [subprocess.Popen([str(c) for c in fit_cmd("--trainer.max_epochs=1", save_dir="together")], cwd=work,
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read()[-1500:] for p in procs]
    runs = sorted((work / "together" / "lightning_logs").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    for r in runs:
        assert (r / "checkpoints" / "last.ckpt").is_file() and len(pd.read_csv(r / "metrics.csv")) > 0
        config = yaml.safe_load((r / "config.yaml").read_text())
        assert config["trainer"]["max_epochs"] == 1 and config["data"]["init_args"]["root"] == "data"
        assert sorted(p.name for p in r.glob("config*.yaml")) == ["config.yaml"]


def test_ctrl_c_exits_130_and_leaves_a_usable_last_checkpoint(work):
    proc = subprocess.Popen([str(c) for c in fit_cmd("--trainer.max_epochs=200", save_dir="interrupted")], cwd=work,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = work / "interrupted" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    err = proc.stderr.read()
    assert f"--ckpt_path={last.relative_to(work)}" in err
    from fimvision.checkpoints import read_checkpoint

    assert read_checkpoint(last)["epoch"] >= 0


KILLER = '''\
import os, signal
from pytorch_lightning import Callback

class KillAt(Callback):
    """SIGKILL this process after two steps of epoch `epoch`: a crash or OOM kill, mid-epoch."""
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGKILL)
'''


def test_killed_run_resumed_in_place_ends_like_an_uninterrupted_one(work, monkeypatch, capsys):
    args = ["--trainer.max_epochs=4", "--data.init_args.batch_size=4", "--data.init_args.augment=true"]
    (work / "killer.py").write_text(KILLER)
    # Killed without warning (no handler runs) in its third epoch, after the second's state is saved.
    killed = subprocess.run([str(c) for c in fit_cmd(*args, "--trainer.callbacks+=killer.KillAt",
                                                     "--trainer.callbacks.init_args.epoch=2", save_dir="killed")],
                            cwd=work, env={**ENV, "PYTHONPATH": str(work)}, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = work / "killed" / "lightning_logs" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 1
    # The uninterrupted run and the resumed one through the same `main`, in this process.
    monkeypatch.chdir(work)
    assert run_in_process(fit_cmd(*args, save_dir="whole"), capsys).returncode == 0
    resumed = run_in_process(fit_cmd(*args, f"--ckpt_path={last}", save_dir="killed"), capsys)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [p.name for p in run_dir.parent.iterdir()] == ["version_0"]  # continued in place
    assert sorted(p.name for p in run_dir.glob("config*.yaml")) == ["config.yaml", "config_resume.yaml"]
    whole, killed = (pd.read_csv(work / r / "lightning_logs" / "version_0" / "metrics.csv") for r in ("whole", "killed"))
    assert not killed.dropna(subset=["train_loss"])["step"].duplicated().any()  # the killed epoch's rows were dropped
    columns = ["epoch", "step", "val_loss", "val_acc", "val_f1_macro"]
    assert whole.dropna(subset=["val_loss"])[columns].to_numpy().tolist() == \
        killed.dropna(subset=["val_loss"])[columns].to_numpy().tolist()


def test_predict_writes_into_the_run_and_never_over_earlier_results(fitted, work, monkeypatch, capsys):
    ckpt = fitted / "checkpoints" / "last.ckpt"
    cmd = [exe("fimvision"), "predict", "--config", SUPERVISED, "--model.init_args.backbone=test_resnet",
           "--data.init_args.root=data", "--data.init_args.image_size=32", "--data.init_args.num_workers=0",
           "--trainer.enable_progress_bar=false", f"--ckpt_path={ckpt}"]
    first = run(cmd, work)
    assert first.returncode == 0, first.stderr[-2000:]
    assert len(pd.read_csv(fitted / "predictions.csv")) == 64 and (fitted / "samples.csv").is_file()
    before = (fitted / "predictions.csv").read_bytes()
    monkeypatch.chdir(work)  # the second and third time through the same `main`, in this process
    refused, replaced = (run_in_process(c, capsys) for c in (cmd, [*cmd, "--prediction_writer.overwrite=true"]))
    user_error(refused, "predictions.csv")
    assert "--prediction_writer.overwrite=true" in refused.stderr and "cached" not in refused.stderr
    assert replaced.returncode == 0 and (fitted / "predictions.csv").read_bytes() == before  # same model, same rows
    assert sorted(p.name for p in fitted.glob("config_predict*.yaml")) == ["config_predict.yaml",
                                                                           "config_predict_2.yaml"]



def test_predict_on_two_processes_gathers_every_particle_once(fitted, work, tmp_path):
    # A copy outside the run folder: this command writes a run folder of its own, not into the shared fixture's
    # (whose config_predict*.yaml the test above counts).
    ckpt = tmp_path / "trained.ckpt"
    ckpt.write_bytes((fitted / "checkpoints" / "last.ckpt").read_bytes())
    result = run([exe("fimvision"), "predict", "--config", SUPERVISED, "--model.init_args.backbone=test_resnet",
                  "--data.init_args.root=data",
                  "--data.init_args.image_size=32", "--data.init_args.num_workers=0",
                  "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", "--trainer.strategy=ddp",
                  "--trainer.devices=2", f"--ckpt_path={ckpt}", f"--trainer.logger.init_args.save_dir={tmp_path}",
                  f"--prediction_writer.output_dir={tmp_path}"], work)
    assert result.returncode == 0, result.stderr[-3000:]
    particles = pd.read_csv(tmp_path / "predictions.csv")
    assert len(particles) == 64 and particles["particle_id"].is_unique
    assert pd.read_csv(tmp_path / "samples.csv")["n_particles"].sum() == 64


def eval_cmd(subcommand: str, ckpt, save_dir: str, *extra: str) -> list:
    """`fimvision SUBCOMMAND` of the supervised config on a checkpoint of ``fit_cmd`` (whose test_resnet overrides
    the config's resnet18)."""
    return [exe("fimvision"), subcommand, "--config", SUPERVISED, "--data.init_args.root=data",
            "--data.init_args.image_size=32", "--data.init_args.num_workers=0", "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={save_dir}", f"--ckpt_path={ckpt}", *extra]


def test_with_a_checkpoint_evaluation_options_apply_and_model_changes_are_refused(fitted, work, monkeypatch, capsys):
    # A copy outside the run folder: these commands write a run folder of their own, not into the fixture's.
    ckpt = work / "options" / "trained.ckpt"
    ckpt.parent.mkdir(exist_ok=True)
    ckpt.write_bytes((fitted / "checkpoints" / "last.ckpt").read_bytes())
    (work / "options" / "deeper.yaml").write_text("init_args:\n  feature_hidden: 32\n")
    subcommands = ("test", "predict", "validate")
    # The config file's backbone (resnet18, also the class default) and a model file's feature_hidden differ from
    # the checkpoint's; the evaluation option beside them would be fine.
    refused = [eval_cmd(sub, ckpt, f"options/refused_{sub}", "--model", "options/deeper.yaml",
                        "--model.init_args.tta=true") for sub in subcommands]
    applied = [eval_cmd(sub, ckpt, f"options/{sub}", "--model.init_args.backbone=test_resnet",
                        "--model.init_args.tta=true", "--model.init_args.calibrate=false",
                        "--data.init_args.batch_size=5", f"--prediction_writer.output_dir=options/{sub}_out")
               for sub in subcommands]
    # One refused command as a process; the others through the same `main`, in this process.
    test_refused = run(refused[0], work)
    monkeypatch.chdir(work)
    results = [test_refused, *[run_in_process(c, capsys) for c in [*refused[1:], *applied]]]
    for sub, result in zip(subcommands, results[:3], strict=True):
        user_error(result, f"checkpoint {ckpt} fixes the trained model, and this command changes it: ")
        for part in ("--model.init_args.backbone=resnet18 given, the checkpoint has test_resnet",
                     "--model.init_args.feature_hidden=32 given, the checkpoint has 64",
                     "only evaluation options apply: --model.init_args.tta, --model.init_args.calibrate and"):
            assert part in result.stderr, (sub, part, result.stderr[-1000:])
        assert "tta" not in result.stderr.split("changes it: ")[1].split(". Leave")[0], sub
        assert "decoding images" not in result.stderr, sub  # refused before any work
        assert not (work / "options" / f"refused_{sub}").exists(), sub
    for sub, result in zip(subcommands, results[3:], strict=True):
        assert result.returncode == 0, (sub, result.stderr[-2000:])
        (run_dir,) = (work / "options" / sub / "lightning_logs").iterdir()
        config = yaml.safe_load((run_dir / f"config_{sub}.yaml").read_text())
        model, data = config["model"]["init_args"], config["data"]["init_args"]
        assert (model["tta"], model["calibrate"], data["batch_size"]) == (True, False, 5), sub
        assert model["backbone"] == "test_resnet" and model["feature_hidden"] == 64, sub  # the checkpoint's network
    assert len(pd.read_csv(work / "options" / "predict_out" / "predictions.csv")) == 64


def test_a_checkpoint_of_another_model_class_is_refused(fitted, work, monkeypatch, capsys):
    monkeypatch.chdir(work)
    result = run_in_process(eval_cmd("test", fitted / "checkpoints" / "last.ckpt", "options/other_class",
                                     "--model=SimCLR"), capsys)
    user_error(result, "--model: checkpoint ")
    assert f"holds a ParticleClassifier, but this command gives a SimCLR. Give {fitted / 'config.yaml'}" \
        in result.stderr


def test_a_redirected_fit_logs_one_line_per_epoch_and_no_progress_bar(work):
    # stdout is a pipe here, as in a log file, a study worker or a sweep agent; the progress bar is left on.
    cmd = [c for c in fit_cmd("--trainer.max_epochs=2", "--trainer.limit_train_batches=2", save_dir="quiet")
           if c != "--trainer.enable_progress_bar=false"]
    result = run(cmd, work)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(" (")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"], result.stdout
    assert "val_loss " in lines[-1] and "(step 4, " in lines[-1]
    for stream in (result.stdout, result.stderr):  # no bar redrawn with carriage returns, no Lightning bar text
        assert "it/s]" not in stream and "Epoch 0:" not in stream and "Sanity Checking" not in stream
    assert "\r" not in result.stdout and "█" not in result.stdout
    assert "FimvisionCLI object" not in result.stdout + result.stderr  # nothing printed after the command's output
