"""Checkpoints: the one reader (with its errors) and the checkpoint callback every fimvision run uses.

:func:`read_checkpoint` refuses a missing, empty, truncated or foreign file with a
:class:`~fimvision.errors.CheckpointError` naming it, before any work starts. :class:`RunCheckpoint`
is Lightning's ``ModelCheckpoint`` with two guarantees fimvision's resume and test commands rely on:
``last.ckpt`` is the state after the last completed epoch (Lightning 2.6 refreshes it only when a
top-k checkpoint is saved), and no checkpoint is written from a non-finite state (weights or monitored value).
"""

from __future__ import annotations

import logging
import math
import zipfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from fimvision.errors import CheckpointError

log = logging.getLogger(__name__)

LIGHTNING_KEYS = ("state_dict", "pytorch-lightning_version")


def read_checkpoint(path: str | Path, *, what: str = "checkpoint", lightning: bool = True) -> dict[str, Any]:
    """The contents of a checkpoint file, on the CPU.

    Raises :class:`CheckpointError` naming the file when it is missing, empty, truncated or not a
    PyTorch file, or (``lightning=True``) when it is not a Lightning checkpoint. ``what`` names the
    file's role in messages (``source_checkpoint``, ``weights file``, ...).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        hint = " It is a folder: give the .ckpt file inside it." if path.is_dir() else ""
        raise CheckpointError(f"{what} {path} does not exist.{hint}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes): the run that wrote it was probably killed "
                              "while saving. Use another checkpoint, e.g. the previous last.ckpt or a best-*.ckpt.")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        truncated = isinstance(err, EOFError) or "central directory" in str(err) or "zip archive" in str(err)
        kind = "is truncated or corrupt" if truncated else "cannot be read as a PyTorch checkpoint"
        raise CheckpointError(f"{what} {path} {kind} ({type(err).__name__}: {str(err).splitlines()[0][:160]}). "
                              "Use another checkpoint.") from err
    except Exception as err:  # unpickling foreign objects fails in many ways; all mean the same to the user
        raise CheckpointError(f"{what} {path} cannot be read as a PyTorch checkpoint ({type(err).__name__}: "
                              f"{str(err)[:160]}). Use another checkpoint.") from err
    if lightning and not (isinstance(blob, dict) and all(k in blob for k in LIGHTNING_KEYS)):
        keys = sorted(blob)[:6] if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(f"{what} {path} is not a Lightning checkpoint (it holds {keys}). Give a .ckpt that "
                              "`fimvision fit` wrote (under a run's checkpoints/ folder); for plain weight files use "
                              "the model's `weights:` argument.")
    return blob


def run_folder_of(checkpoint: str | Path) -> Path | None:
    """The run folder a checkpoint was written into (``<run>/checkpoints/x.ckpt``), if it is one.

    A run folder holds the run's saved ``config.yaml`` or ``metrics.csv``; a checkpoint copied elsewhere
    has none.
    """
    path = Path(checkpoint).expanduser().resolve()
    run = path.parent.parent
    if path.parent.name == "checkpoints" and ((run / "config.yaml").is_file() or (run / "metrics.csv").is_file()):
        return run
    return None


def _finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    return value is None or math.isfinite(float(value))


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is the state after the last completed epoch, and which never
    writes a non-finite state: no checkpoint (best or last) is saved while a weight or buffer is NaN or
    infinite or the monitored value is, so ``last.ckpt`` stays the last finite state even with the
    divergence guard off (``--run_guard.check_finite=false``).

    Arguments are those of ``pytorch_lightning.callbacks.ModelCheckpoint`` (``monitor``, ``mode``,
    ``save_last``, ``filename``, ``save_top_k``, ...).
    """

    def _finite_state(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor], kind: str) -> bool:
        from fimvision.callbacks import weights_finite

        current = monitor_candidates.get(self.monitor) if self.monitor else None
        monitor_ok = current is None or _finite(current)
        weights_ok = weights_finite(trainer.lightning_module)
        ok = monitor_ok and weights_ok
        if trainer.world_size > 1:  # every rank takes the same branch: saving is a collective
            ok = bool(trainer.strategy.reduce_boolean_decision(ok, all=True))
        if not ok:
            what = (f"{self.monitor} is {float(current)}" if not monitor_ok
                    else "the weights are not finite" if not weights_ok else "another process diverged")
            log.warning("%s at epoch %d, step %d: no %s checkpoint written from this state", what,
                        trainer.current_epoch, trainer.global_step, kind)
        return ok

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        if self.save_top_k == 0 or self._finite_state(trainer, monitor_candidates, "best" if self.monitor else "new"):
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        if not self.save_last or self._finite_state(trainer, monitor_candidates, "last"):
            super()._save_last_checkpoint(trainer, monitor_candidates)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.fast_dev_run:  # Lightning 2.6 would save last.ckpt even under fast_dev_run
            super().on_train_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Runs after the epoch's validation: the state saved here is the whole epoch's, validation included.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
