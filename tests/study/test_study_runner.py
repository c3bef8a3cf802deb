"""The runner's parts that need no training: the validation metrics of the tested checkpoint."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from fimvision.study.runner import checkpoint_metrics


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
