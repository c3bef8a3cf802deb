"""The one optimizer and learning-rate schedule set-up of every fimvision model family, from timm's factories.

A model lists its parameter groups (each may carry its own ``lr``); weight decay is taken off biases,
norm weights and position/class tokens by timm's rule; the optimizer is timm's ``create_optimizer_v2`` and
the cosine schedule timm's ``CosineLRScheduler`` (per step, after a linear warm-up), chosen by name in the
model's config (``optimizer``, ``lr``, ``weight_decay``, ``momentum``, ``scheduler``, ``warmup_epochs``), the
same keys for every family. SHOT's ``(1 + 10 p)^-0.75`` decay, which no library ships, is a ``LambdaLR``.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from timm.scheduler.scheduler import Scheduler
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
    """timm's optimizer ``name`` over parameter ``groups`` (a group's own ``lr``/``weight_decay`` win; timm's
    ``sgd`` is Nesterov SGD)."""
    return create_optimizer_v2(groups, opt=name, lr=lr, weight_decay=weight_decay, momentum=momentum)


def shot_decay(step: int, total_steps: int) -> float:
    """LR factor of SHOT and its successors: ``(1 + 10 p) ** -0.75`` at training progress ``p``."""
    return (1 + 10 * step / max(1, total_steps)) ** -0.75


def build_schedule(optimizer: torch.optim.Optimizer, name: SchedulerName, total_steps: int,
                   warmup_steps: int = 0) -> Scheduler | torch.optim.lr_scheduler.LambdaLR | None:
    """A per-step schedule over ``total_steps`` optimizer steps (None for ``none``); advance it with
    :func:`step_schedule`."""
    total_steps = max(1, total_steps)
    if name == "none":
        return None
    if name == "cosine":  # linear warm-up from 0, then cosine decay to 0 at the last step
        warmup = max(0, min(total_steps - 1, warmup_steps))
        return CosineLRScheduler(optimizer, t_initial=total_steps - warmup, warmup_t=warmup, warmup_prefix=True,
                                 t_in_epochs=False)
    if name == "shot":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(shot_decay, total_steps=total_steps))
    raise ValueError(f"unknown scheduler '{name}'; use cosine, shot or none")


def step_schedule(schedule: Scheduler | torch.optim.lr_scheduler.LRScheduler, steps_done: int) -> None:
    """Set the learning rate for the step after ``steps_done`` optimizer steps (timm's schedulers take the count)."""
    if isinstance(schedule, Scheduler):
        schedule.step_update(num_updates=steps_done)
    else:
        schedule.step()
