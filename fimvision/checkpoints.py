"""Checkpoints: the one reader (with its errors) and the checkpoint callback every fimvision run uses.

:func:`read_checkpoint` refuses a missing, empty, truncated or foreign file with a
:class:`~fimvision.errors.CheckpointError` naming it, before any work starts. :class:`RunCheckpoint`
is Lightning's ``ModelCheckpoint`` with two guarantees fimvision's resume and test commands rely on:
``last.ckpt`` is the state after the last completed epoch (Lightning 2.6 refreshes it only when a
top-k checkpoint is saved), and no checkpoint is written from a non-finite state (weights or monitored value).
:func:`refuse_model_changes` and :func:`check_checkpoint_fits` hold a command given ``--ckpt_path`` to what the
checkpoint was trained as.
"""

from __future__ import annotations

import json
import logging
import math
import zipfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from jsonargparse import Namespace
from pytorch_lightning.callbacks import ModelCheckpoint

from fimvision.errors import CheckpointError, ConfigError

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

    # The two private savers: ModelCheckpoint has no public hook that can veto one save.
    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        if self.save_top_k == 0 or self._finite_state(trainer, monitor_candidates, "best" if self.monitor else "new"):
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        if not self.save_last or self._finite_state(trainer, monitor_candidates, "last"):
            super()._save_last_checkpoint(trainer, monitor_candidates)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.fast_dev_run:  # Lightning 2.6 would save last.ckpt even under fast_dev_run
            super().on_train_end(trainer, pl_module)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A run started with a relative save_dir stores its folder relative; evaluated or resumed with the folder
        # given absolute, Lightning would warn that the folder changed although it is the same one.
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and Path(saved).resolve() == Path(self.dirpath).resolve():
            state_dict = {**state_dict, "dirpath": self.dirpath}
        super().load_state_dict(state_dict)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Runs after the epoch's validation: the state saved here is the whole epoch's, validation included.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


# --- a checkpoint against the command that evaluates or resumes it (`fimvision ... --ckpt_path`)
# Model arguments that come from the data module (links): after instantiation they must match the checkpoint's
# (the error names the data setting that fits it).
CHECKPOINT_CONTRACT = ("num_classes", "in_chans", "class_names", "img_size", "feature_names", "num_features")
# Model arguments that only say where starting weights come from: a full checkpoint supersedes them, so they are
# not loaded again (no hub download, no need to keep the files).
STARTING_WEIGHTS = {"pretrained": False, "weights": None, "backbone_checkpoint": None}
# Starting-weight arguments a checkpoint makes moot without clearing them (the adaptation models read the
# source model's settings from it); neither applied nor refused with --ckpt_path.
MOOT_WITH_CHECKPOINT = (*STARTING_WEIGHTS, "source_checkpoint")


def _plain(value: Any) -> Any:
    """``value`` as plain data for comparing a given option with a checkpoint's (namespaces and tuples unwrapped)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _show(value: Any) -> str:
    """A value as a user would type it on the command line."""
    return value if isinstance(value, str) else json.dumps(_plain(value))


def refuse_model_changes(path: str, saved: dict, class_path: str, given: dict[str, Any],
                         evaluation: tuple[str, ...], accepted: Any) -> None:
    """Raise a ConfigError naming each model option a command gives (``given``) that would change what checkpoint
    ``path`` (hyper-parameters ``saved``) holds: its class, or any argument but the evaluation-time ones
    (``evaluation``, of those the class ``accepted``)."""
    run = run_folder_of(path)
    config = f"{run / 'config.yaml'}" if run is not None else "the config it was trained with"
    saved_class = saved.get("_class_path")
    if saved_class and class_path and saved_class != class_path:
        raise ConfigError(
            f"--model: checkpoint {path} holds a {saved_class.rsplit('.', 1)[-1]}, but this command gives a "
            f"{class_path.rsplit('.', 1)[-1]}. Give {config} as --config, or another checkpoint.")
    fixed = set(evaluation) | set(MOOT_WITH_CHECKPOINT) | set(CHECKPOINT_CONTRACT)
    wrong = {k: v for k, v in given.items() if k not in fixed and k in saved and _plain(v) != _plain(saved[k])}
    if wrong:
        details = "; ".join(f"--model.init_args.{k}={_show(v)} given, the checkpoint has {_show(saved[k])}"
                            for k, v in wrong.items())
        options = [f"--model.init_args.{k}" for k in evaluation if k in accepted]
        raise ConfigError(
            f"checkpoint {path} fixes the trained model, and this command changes it: {details}. Leave "
            f"{'it' if len(wrong) == 1 else 'them'} out (of the command line and the config files: the "
            f"checkpoint's values are used) or give {config} as --config. With a checkpoint only evaluation "
            f"options apply: {', '.join(options) + ' and ' if options else ''}the data, trainer and output options.")


def check_checkpoint_fits(path: str, saved: dict, now: dict, data_args: dict) -> None:
    """Raise a CheckpointError when the data-linked model arguments ``now`` differ from checkpoint ``path``'s
    (``saved``), naming the data settings (of a data module with arguments ``data_args``) that fit it."""
    wrong = [k for k in CHECKPOINT_CONTRACT if k in saved and k in now and saved[k] != now[k]]
    if wrong:
        details = "; ".join(f"{k}: checkpoint {saved[k]!r}, now {now[k]!r}" for k in wrong)
        hints = [h for h in dict.fromkeys(_fitting_setting(k, saved, data_args) for k in wrong) if h]
        raise CheckpointError(
            f"checkpoint {path} does not fit this data: {details}. "
            + (f"Settings that fit it: {' '.join(hints)}; or use another checkpoint."
               if hints else "Use the data settings it was trained with, or another checkpoint."))


def _fitting_setting(key: str, saved: dict, args: dict) -> str:
    """The data setting that gives the model argument ``key`` the checkpoint's value."""
    value = saved[key]
    if key == "img_size":
        return f"--data.init_args.image_size={value}"
    if key == "feature_names":
        return f"--data.init_args.features=[{','.join(value or [])}]" if value else "--data.init_args.features=null"
    if key in ("class_names", "num_classes"):
        names = saved.get("class_names")
        return f"--data.init_args.classes=[{','.join(names)}]" if names else ""
    if key == "in_chans":
        if "modality" in args and "mono_channels" in args:
            return ("--data.init_args.modality=color" if value == 3 and args.get("modality") == "mono"
                    and args.get("mono_channels") != 3 else
                    "--data.init_args.modality=mono --data.init_args.mono_channels=1" if value == 1 else
                    "--data.init_args.mono_channels=3")
        if "channels" in args:
            return f"--data.init_args.channels={value}"
    return ""
