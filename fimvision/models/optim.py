"""Optimizers and learning-rate schedules shared by every fimvision LightningModule."""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import pytorch_lightning as pl
import torch

OptimizerName = Literal["adamw", "adam", "sgd"]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR factor: linear warm-up from 0 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(params, name: OptimizerName, lr: float, weight_decay: float, momentum: float = 0.9):
    """One of the optimizers every fimvision module offers."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True)
    raise ValueError(f"unknown optimizer '{name}'; use adamw, adam or sgd")


def warmup_cosine_scheduler(optimizer, trainer: pl.Trainer, warmup_epochs: float) -> dict:
    """A per-step warm-up + cosine schedule sized from the trainer's planned number of steps."""
    total = max(1, int(trainer.estimated_stepping_batches))
    epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
    warmup = max(0, min(total - 1, round(warmup_epochs * total / epochs)))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(warmup_cosine, warmup_steps=warmup, total_steps=total))
    return {"scheduler": schedule, "interval": "step"}
