"""The callback every `fimvision` run carries: a divergence guard, Ctrl-C handling and exact resume."""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from fimvision.errors import DivergenceError

log = logging.getLogger(__name__)


def random_state() -> dict[str, Any]:
    """The global random streams a training step may draw from (dropout, stochastic depth, ...): torch (CPU
    and CUDA), numpy and Python. Plain values and tensors only, so checkpoints load with weights_only.
    (Shuffling and augmentation draw from the data module's own generators; see data/base.py.)"""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {**np_state, "state": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                        for k, v in np_state["state"].items()}},
        "python": random.getstate(),
    }


def restore_random_state(state: dict[str, Any]) -> None:
    """Put back what :func:`random_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = dict(state["numpy"])
    np_state["state"] = {k: (np.asarray(v, dtype=np.uint32) if isinstance(v, list) else v)
                         for k, v in np_state["state"].items()}
    np.random.set_state(np_state)
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))


class RunGuard(pl.Callback):
    """Stops diverged runs, reports Ctrl-C, and makes a resumed run continue the interrupted one exactly.

    - A non-finite training loss stops the run before it is back-propagated, with an error that names the
      epoch, the step, the last finite loss and the learning rate (the CLI exits with status 2).
    - Ctrl-C is recorded (the CLI exits with status 130) and the resume command is printed.
    - Checkpoints carry the global random streams (torch, numpy, Python), restored when a resumed run
      starts training; with the data module's own generators (data/base.py) a resumed run draws the
      same batches, augmentations and dropout masks as an uninterrupted one.

    Args:
        check_finite: stop at the first non-finite training loss.
    """

    def __init__(self, check_finite: bool = True) -> None:
        self.check_finite = check_finite
        self.interrupted = False
        self._last_finite: tuple[float, int] | None = None
        self._pending_state: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "RunGuard"

    # -- divergence
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not self.check_finite:
            return
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:  # every rank must stop together, or the others wait forever
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            self._last_finite = (float(loss.detach().float().mean()), trainer.global_step)
            return
        raise DivergenceError(self._message(trainer, loss))

    def _message(self, trainer: pl.Trainer, loss: torch.Tensor) -> str:
        lrs = sorted({group["lr"] for opt in trainer.optimizers for group in opt.param_groups})
        lr = ", ".join(f"{v:.3g}" for v in lrs) or "unknown"
        last = (f"last finite loss {self._last_finite[0]:.4g} at step {self._last_finite[1]}"
                if self._last_finite else "no finite loss before it")
        value = float(loss.detach().float().mean()) if loss.numel() else float("nan")
        return (f"training diverged at epoch {trainer.current_epoch}, global step {trainer.global_step}: the training "
                f"loss is {value} ({last}; learning rate {lr}). Lower the learning rate (--model.init_args.lr), "
                "lengthen the warm-up (--model.init_args.warmup_epochs) or clip gradients "
                "(--trainer.gradient_clip_val=1.0). No checkpoint was written for the diverged state.")

    # -- Ctrl-C
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt):
            return
        self.interrupted = True
        ckpt = trainer.checkpoint_callback
        last = getattr(ckpt, "last_model_path", "") if ckpt is not None else ""
        if trainer.is_global_zero and trainer.state.fn == "fit":
            if last:
                log.warning("interrupted at epoch %d, step %d. %s holds the last completed epoch; continue with "
                            "the same command and --ckpt_path=%s", trainer.current_epoch, trainer.global_step,
                            last, last)
            else:
                log.warning("interrupted at epoch %d before the first epoch ended: no checkpoint to resume from",
                            trainer.current_epoch)

    # -- exact resume
    def state_dict(self) -> dict[str, Any]:
        return {"random_state": random_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = state_dict.get("random_state")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the sanity check, which draws random numbers of its own, and before the first batch.
        if self._pending_state is not None:
            restore_random_state(self._pending_state)
            self._pending_state = None
