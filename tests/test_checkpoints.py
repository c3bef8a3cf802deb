"""The checkpoint reader's errors and RunCheckpoint's two promises: last.ckpt is the last epoch's state, and
a non-finite monitored value is never kept as best."""

from __future__ import annotations

import math
import re

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
    nan_only = fit(tmp_path / "all-nan", [math.nan, math.nan])
    assert nan_only.best_model_path == "" and (tmp_path / "all-nan" / "last.ckpt").is_file()


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
