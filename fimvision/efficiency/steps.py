"""The two workloads every efficiency measurement times: a forward pass and a training step."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn

from fimvision.efficiency.precision import Precision, get_precision, precision_context, prepare_input
from fimvision.models.optim import build_optimizer


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work (CUDA); a no-op on the CPU, whose ops are synchronous."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def make_forward(model: nn.Module, x: torch.Tensor, precision: Precision | str, device, *,
                 channels_last: bool = False) -> Callable[[], torch.Tensor]:
    """A closure running one inference forward pass of ``model`` (already prepared) on ``x``."""
    precision = get_precision(precision) if isinstance(precision, str) else precision
    x = prepare_input(x, precision, device, channels_last=channels_last)
    model.eval()

    def forward() -> torch.Tensor:
        with torch.inference_mode(), precision_context(precision, device):
            return model(x)

    return forward


def make_train_step(module: pl.LightningModule, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    precision: Precision | str, device, *, channels_last: bool = False) -> Callable[[], torch.Tensor]:
    """A closure running one training step: forward, the module's own loss, backward, optimizer step.

    ``module`` is the LightningModule (for its loss and optimizer settings); ``model`` the prepared
    (cast, possibly compiled) network it wraps. The optimizer is the module's (``build_optimizer`` with
    its ``optimizer``, ``lr``, ``weight_decay``), without schedule; fp16 autocast gets a gradient scaler.
    """
    precision = get_precision(precision) if isinstance(precision, str) else precision
    hp = getattr(module, "hparams", {})
    optimizer = build_optimizer(model.parameters(), hp.get("optimizer", "adamw"), hp.get("lr", 1e-3),
                                hp.get("weight_decay", 0.0), hp.get("momentum", 0.9))
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=precision.needs_grad_scaler)
    x = prepare_input(x, precision, device, channels_last=channels_last)
    y = y.to(device)
    loss_fn = getattr(module, "loss", None)
    if loss_fn is not None and hasattr(module, "loss_weight"):
        module.loss_weight = module.loss_weight.to(device)
    model.train()

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with precision_context(precision, device):
            logits = model(x)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loss = loss_fn(logits, y) if loss_fn else torch.nn.functional.cross_entropy(logits.float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    return step
