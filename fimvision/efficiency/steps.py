"""The two workloads every efficiency measurement runs: a forward pass and a training step of a LightningModule.

The training step is the module's own: its ``on_train_batch_start`` hook, ``training_step`` (its loss),
backward, ``on_after_backward`` (e.g. DINO's frozen last layer) and a step of the optimizer its
``configure_optimizers`` returns; without a trainer the schedule spans one step, so it is not stepped.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytorch_lightning as pl
import torch

from fimvision.efficiency.precision import Precision, get_precision, precision_context, prepare_input
from fimvision.errors import ConfigError

# Lightning's warning when a module logs without a trainer: expected here, on every step.
NO_TRAINER_LOG = r".*self\.log\(\)` but the `self\.trainer` reference is not registered.*"


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work (CUDA); a no-op on the CPU, whose ops are synchronous."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def prepare_batch(batch: dict, precision: Precision | str, device, *, channels_last: bool = False) -> dict:
    """A training batch on ``device``, its images (a tensor or a list of views) in the weight dtype of ``precision``."""
    def cast(x: torch.Tensor) -> torch.Tensor:
        return prepare_input(x, precision, device, channels_last=channels_last)

    image = batch["image"]
    moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    return {**moved, "image": [cast(v) for v in image] if isinstance(image, (list, tuple)) else cast(image)}


def make_forward(module: torch.nn.Module, x: torch.Tensor, precision: Precision | str, device, *,
                 channels_last: bool = False) -> Callable[[], torch.Tensor]:
    """A closure running one inference forward pass, ``module(x)``, of a prepared (cast, compiled) module."""
    precision = get_precision(precision) if isinstance(precision, str) else precision
    x = prepare_input(x, precision, device, channels_last=channels_last)
    module.eval()

    def forward() -> torch.Tensor:
        with torch.inference_mode(), precision_context(precision, device):
            return module(x)

    return forward


def require_automatic_optimization(module: pl.LightningModule) -> None:
    """Refuse a module that steps its own optimizers: its training step cannot be measured from outside."""
    if not getattr(module, "automatic_optimization", True):
        raise ConfigError(f"{type(module).__name__} uses manual optimization (its training_step steps its own "
                          "optimizer), so its training step cannot be measured here; benchmark its source model "
                          "instead (the SourceModel config it was trained from), or measure inference only "
                          "(benchmark --modes=[inference], profile --modes=[forward], deviation, chai).")


class TrainStep:
    """A callable running one training step of a prepared (cast, compiled) LightningModule on one batch; the
    loss of the last call is kept in ``loss``. An fp16 autocast precision gets a gradient scaler."""

    def __init__(self, module: pl.LightningModule, batch: dict, precision: Precision | str, device, *,
                 channels_last: bool = False) -> None:
        require_automatic_optimization(module)
        self.module, self.device = module, device
        self.precision = get_precision(precision) if isinstance(precision, str) else precision
        configured = module.configure_optimizers()
        self.optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
        self.scaler = torch.amp.GradScaler(torch.device(device).type, enabled=self.precision.needs_grad_scaler)
        self.batch = prepare_batch(batch, self.precision, device, channels_last=channels_last)
        self.loss: torch.Tensor | None = None
        module.train()

    def __call__(self) -> torch.Tensor:
        module = self.module
        self.optimizer.zero_grad(set_to_none=True)
        with precision_context(self.precision, self.device), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=NO_TRAINER_LOG)
            module.on_train_batch_start(self.batch, 0)
            loss = module.training_step(self.batch, 0)
        self.scaler.scale(loss).backward()
        module.on_after_backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.loss = loss.detach()
        return self.loss
