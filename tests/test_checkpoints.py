"""The checkpoint reader's errors and RunCheckpoint's two promises: last.ckpt is the last epoch's state, and
no checkpoint (best or last) is written from a non-finite state; the divergence guard that stops such runs."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel

from fimvision.checkpoints import RunCheckpoint, read_checkpoint, run_folder_of
from fimvision.errors import CheckpointError


class ScriptedValLoss(BoringModel):
    """BoringModel whose val_loss at epoch e is ``values[e]``."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(self.values[self.current_epoch]))


def fit(tmp_path, values, **checkpoint_args) -> RunCheckpoint:
    ckpt = RunCheckpoint(dirpath=tmp_path, monitor="val_loss", mode="min", save_last=True,
                         filename="best-{epoch}-{val_loss:.3f}", **checkpoint_args)
    trainer = pl.Trainer(max_epochs=len(values), callbacks=[ckpt], logger=False, limit_train_batches=2,
                         limit_val_batches=1, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(ScriptedValLoss(values))
    return ckpt


def test_last_is_the_final_epoch_even_when_the_best_is_early(tmp_path):
    ckpt = fit(tmp_path, [0.1, 0.5, 0.9, 1.3])  # the best epoch is the first
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] == 3
    assert "epoch=0" in ckpt.best_model_path


def test_a_non_finite_score_is_never_best(tmp_path):
    ckpt = fit(tmp_path, [math.nan, 0.7, math.inf, 0.9])
    assert "epoch=1" in ckpt.best_model_path and ckpt.best_model_score == pytest.approx(0.7)
    assert not [p for p in tmp_path.iterdir() if "nan" in p.name or "inf" in p.name]
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] == 3
    # last.ckpt is the last finite state too: never one whose monitored value is NaN.
    nan_last = fit(tmp_path / "nan-last", [0.5, math.nan])
    assert "epoch=0" in nan_last.best_model_path
    assert torch.load(tmp_path / "nan-last" / "last.ckpt", weights_only=False)["epoch"] == 0
    nan_only = fit(tmp_path / "all-nan", [math.nan, math.nan])
    assert nan_only.best_model_path == "" and not (tmp_path / "all-nan").exists()


def test_reader_names_what_is_wrong_with_the_file(tmp_path):
    good = tmp_path / "good.ckpt"
    trainer = pl.Trainer(logger=False, enable_checkpointing=False)
    trainer.strategy.connect(BoringModel())
    trainer.save_checkpoint(good)
    assert "state_dict" in read_checkpoint(good)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "cut.ckpt").write_bytes(good.read_bytes()[:500])
    torch.save({"weights": torch.ones(1)}, tmp_path / "plain.pt")
    for name, message in [("missing.ckpt", "does not exist"), ("empty.ckpt", "is empty (0 bytes)"),
                          ("cut.ckpt", "is truncated or corrupt"), ("plain.pt", "is not a Lightning checkpoint"),
                          (".", "It is a folder")]:
        with pytest.raises(CheckpointError, match=re.escape(message)) as err:
            read_checkpoint(tmp_path / name, what="source_checkpoint")
        assert str(err.value).startswith(f"source_checkpoint {tmp_path / name if name != '.' else tmp_path}")
    assert read_checkpoint(tmp_path / "plain.pt", lightning=False)["weights"].item() == 1.0


def test_run_folder_of_a_checkpoint(tmp_path):
    run = tmp_path / "lightning_logs" / "version_3"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert run_folder_of(run / "checkpoints" / "last.ckpt") is None  # not a run until it has a config or metrics
    (run / "config.yaml").write_text("seed_everything: 0\n")
    assert run_folder_of(run / "checkpoints" / "last.ckpt") == run.resolve()
    assert run_folder_of(tmp_path / "elsewhere.ckpt") is None


class BreaksAtStep(BoringModel):
    """BoringModel whose optimizer step at global step ``step`` leaves an infinite weight (the loss before that
    step is finite: only a check of the weights sees it), logging a val_loss of the current weights."""

    def __init__(self, step: int):
        super().__init__()
        self.break_at = step

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.global_step == self.break_at:
            with torch.no_grad():
                self.layer.weight[0, 0] = math.inf

    def validation_step(self, batch, batch_idx):
        loss = super().validation_step(batch, batch_idx)["x"]
        self.log("val_loss", loss)


def fit_breaking(tmp_path, step, check_finite=True, every_n_train_steps=None, monitor="val_loss"):
    from fimvision.callbacks import RunGuard

    ckpt = RunCheckpoint(dirpath=tmp_path, monitor=monitor, mode="min", save_last=True, save_top_k=-1,
                         filename="best-{epoch}-{step}", every_n_train_steps=every_n_train_steps)
    trainer = pl.Trainer(max_epochs=3, callbacks=[ckpt, RunGuard(check_finite=check_finite)], logger=False,
                         limit_train_batches=2, limit_val_batches=1, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(BreaksAtStep(step))
    return trainer


def saved_states(folder):
    """{file name: (epoch, every weight finite)} of the checkpoints in ``folder``."""
    states = {}
    for path in sorted(folder.glob("*.ckpt")):
        blob = torch.load(path, weights_only=False)
        states[path.name] = (blob["epoch"], all(torch.isfinite(t).all() for t in blob["state_dict"].values()))
    return states


def test_the_guard_stops_at_non_finite_weights_before_any_checkpoint_of_them(tmp_path):
    from fimvision.errors import DivergenceError

    # Step 3 is the second step of epoch 1 (two batches an epoch): epoch 0 was finite, epoch 1 is not.
    with pytest.raises(DivergenceError) as err:
        fit_breaking(tmp_path, step=3)
    message = str(err.value)
    assert message.startswith("training diverged at epoch 1, global step 3: the weights are no longer finite "
                              "after the optimizer step (layer.weight)"), message
    assert "last finite loss" in message and "--trainer.gradient_clip_val" in message
    assert f"{tmp_path / 'last.ckpt'} holds the last finite state" in message
    states = saved_states(tmp_path)
    assert states == {"best-epoch=0-step=2.ckpt": (0, True), "last.ckpt": (0, True)}, states


def test_step_checkpoints_are_not_written_from_non_finite_weights(tmp_path):
    from fimvision.errors import DivergenceError

    with pytest.raises(DivergenceError, match="epoch 1, global step 2: the weights"):
        fit_breaking(tmp_path, step=2, every_n_train_steps=1, monitor=None)
    assert saved_states(tmp_path) == {"best-epoch=0-step=1.ckpt": (0, True), "best-epoch=0-step=2.ckpt": (0, True),
                                      "last.ckpt": (0, True)}


def test_without_the_guard_no_checkpoint_is_written_from_a_non_finite_state(tmp_path, caplog):
    # The guard off: training goes on through the infinite weights, but nothing of them is saved.
    fit_breaking(tmp_path, step=3, check_finite=False)
    states = saved_states(tmp_path)
    assert states == {"best-epoch=0-step=2.ckpt": (0, True), "last.ckpt": (0, True)}, states
    assert "no last checkpoint written from this state" in caplog.text


def test_the_weight_check_sees_nan_and_inf_and_not_large_finite_values():
    from fimvision.callbacks import non_finite_tensors, weights_finite

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        net[0].weight.fill_(3e38)  # a 2-norm (or a sum) of these would overflow to inf
    assert weights_finite(net) and non_finite_tensors(net) == []
    net[1].running_var[1] = math.nan  # a buffer, not a parameter
    assert not weights_finite(net) and non_finite_tensors(net) == ["1.running_var"]
    net[1].running_var[1] = 1.0
    with torch.no_grad():
        net[0].bias[0] = -math.inf
    assert not weights_finite(net) and non_finite_tensors(net) == ["0.bias"]


def test_the_guard_stops_at_a_non_finite_validation_loss_and_keeps_the_last_finite_checkpoint(tmp_path):
    from fimvision.callbacks import RunGuard
    from fimvision.errors import DivergenceError

    ckpt = RunCheckpoint(dirpath=tmp_path, monitor="val_loss", mode="min", save_last=True, filename="best-{epoch}")
    trainer = pl.Trainer(max_epochs=3, callbacks=[ckpt, RunGuard()], logger=False, limit_train_batches=2,
                         limit_val_batches=1, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    with pytest.raises(DivergenceError) as err:
        trainer.fit(ScriptedValLoss([0.5, math.nan, 0.3]))
    assert str(err.value).startswith("training diverged at epoch 1, global step 4: val_loss is nan (last finite "
                                     "val_loss 0.5 at epoch 0; learning rate 0.01)."), str(err.value)  # epoch 1's, after a StepLR
    assert saved_states(tmp_path) == {"best-epoch=0.ckpt": (0, True), "last.ckpt": (0, True)}


def test_the_same_folder_given_relative_then_absolute_restores_the_callback_state_without_a_warning(tmp_path,
                                                                                                     monkeypatch):
    # A run started with a relative save_dir stores its checkpoint folder relative; `fimvision test` names it
    # absolute. Lightning compared the two strings and warned "The dirpath has changed" for the same folder.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    saved = {"dirpath": "run/checkpoints", "best_model_score": torch.tensor(0.5), "best_model_path": "run/checkpoints/b.ckpt",
             "best_k_models": {"run/checkpoints/b.ckpt": torch.tensor(0.5)}, "last_model_path": "run/checkpoints/last.ckpt"}
    same = RunCheckpoint(dirpath=tmp_path / "run" / "checkpoints")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(saved)
    assert same.best_k_models == saved["best_k_models"] and same.last_model_path == "run/checkpoints/last.ckpt"
    (tmp_path / "other").mkdir()
    other = RunCheckpoint(dirpath=tmp_path / "other")
    with pytest.warns(UserWarning, match="dirpath has changed"):  # another folder: Lightning's rule stands
        other.load_state_dict(saved)
    assert other.best_k_models == {} and other.best_model_path == "run/checkpoints/b.ckpt"
