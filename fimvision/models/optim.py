"""The one optimizer and learning-rate schedule set-up of every fimvision model family.

A model lists its parameter groups (each may carry its own ``lr``); weight decay is taken off biases,
norm weights and position/class tokens by timm's rule; the optimizer and the per-step schedule are
chosen by name in the model's config (``optimizer``, ``lr``, ``weight_decay``, ``momentum``,
``scheduler``, ``warmup_epochs``), the same keys for every family.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch
from lightly.utils.lars import LARS
from timm.optim import param_groups_weight_decay
from torch import nn

OptimizerName = Literal["adamw", "adam", "sgd", "lars"]
SchedulerName = Literal["cosine", "shot", "none"]
# Parameters without weight decay besides biases and norms (ndim <= 1): ViT tokens and position embeddings.
NO_DECAY_PATTERNS = ("*pos_embed", "*cls_token", "*reg_token", "*dist_token")


def decay_groups(module: nn.Module, weight_decay: float, **extra) -> list[dict]:
    """``module``'s trainable parameters in a decayed and an undecayed group (timm's rule), each with ``extra``
    keys (e.g. ``lr``, ``role``). Frozen parameters are left out."""
    groups = param_groups_weight_decay(module, weight_decay, no_weight_decay_list=NO_DECAY_PATTERNS)
    return [{**group, **extra} for group in groups]


def build_optimizer(groups: list[dict], name: OptimizerName, lr: float, weight_decay: float,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """The optimizer ``name`` over parameter ``groups`` (a group's own ``lr``/``weight_decay`` win)."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=momentum > 0)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}'; use adamw, adam, sgd or lars")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR factor: linear warm-up from 0 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def shot_decay(step: int, total_steps: int) -> float:
    """LR factor of SHOT and its successors: ``(1 + 10 p) ** -0.75`` at training progress ``p``."""
    return (1 + 10 * step / max(1, total_steps)) ** -0.75


def build_schedule(optimizer: torch.optim.Optimizer, name: SchedulerName, total_steps: int,
                   warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR | None:
    """A per-step schedule over ``total_steps`` optimizer steps (None for ``none``)."""
    total_steps = max(1, total_steps)
    if name == "none":
        return None
    if name == "cosine":
        warmup = max(0, min(total_steps - 1, warmup_steps))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(warmup_cosine, warmup_steps=warmup,
                                                                    total_steps=total_steps))
    if name == "shot":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(shot_decay, total_steps=total_steps))
    raise ValueError(f"unknown scheduler '{name}'; use cosine, shot or none")
