"""Precision modes under Lightning's names, for the efficiency runs outside a Trainer.

========== ================= ============================= ==========================================
name       Lightning flag    weights / inputs              compute
========== ================= ============================= ==========================================
32-true    ``32-true``       fp32                          fp32, TF32 off (matmul and cuDNN)
tf32       ``32-true`` +     fp32                          fp32 with TF32 tensor cores for matmul and
           matmul precision                                convolution (CUDA; on CPU same as 32-true)
           ``high``
bf16-mixed ``bf16-mixed``    fp32                          autocast to bf16
16-mixed   ``16-mixed``      fp32                          autocast to fp16, loss scaling in training
bf16-true  ``bf16-true``     bf16                          bf16
16-true    ``16-true``       fp16                          fp16
64-true    ``64-true``       fp64                          fp64 (the golden reference)
========== ================= ============================= ==========================================

``fp32``, ``fp16-mixed``, ``fp16-true`` and ``fp64`` are accepted as aliases.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fimvision.checkpoints import STARTING_WEIGHTS
from fimvision.efficiency.attention import attention_modules, set_attention_backend
from fimvision.errors import FimvisionError


@dataclass(frozen=True)
class Precision:
    """One precision mode: its name, Lightning's flag, the weight dtype and the autocast dtype."""

    name: str
    lightning: str
    param_dtype: torch.dtype
    autocast_dtype: torch.dtype | None = None
    tf32: bool = False

    @property
    def needs_grad_scaler(self) -> bool:
        return self.autocast_dtype == torch.float16


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("32-true", "32-true", torch.float32),
    Precision("tf32", "32-true", torch.float32, tf32=True),
    Precision("bf16-mixed", "bf16-mixed", torch.float32, torch.bfloat16),
    Precision("16-mixed", "16-mixed", torch.float32, torch.float16),
    Precision("bf16-true", "bf16-true", torch.bfloat16),
    Precision("16-true", "16-true", torch.float16),
    Precision("64-true", "64-true", torch.float64),
)}
ALIASES = {"fp32": "32-true", "32": "32-true", "fp16-mixed": "16-mixed", "fp16-true": "16-true",
           "bf16": "bf16-mixed", "fp64": "64-true", "64": "64-true"}


def get_precision(name: str) -> Precision:
    """The :class:`Precision` called ``name`` (Lightning's flag or an alias)."""
    key = ALIASES.get(name, name)
    if key not in PRECISIONS:
        raise FimvisionError(f"unknown precision '{name}'; choose one of {', '.join(PRECISIONS)} "
                             f"(aliases: {', '.join(ALIASES)}).")
    return PRECISIONS[key]


@contextlib.contextmanager
def tf32_enabled(enabled: bool) -> Iterator[None]:
    """Allow (or forbid) TF32 for CUDA matmuls and cuDNN convolutions inside; restored on exit."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


@contextlib.contextmanager
def precision_context(precision: Precision | str, device: torch.device | str) -> Iterator[None]:
    """TF32 setting and autocast of ``precision`` for code run inside, on ``device``."""
    precision = get_precision(precision) if isinstance(precision, str) else precision
    device_type = torch.device(device).type
    with tf32_enabled(precision.tf32):
        if precision.autocast_dtype is None:
            yield
        else:
            with torch.autocast(device_type=device_type, dtype=precision.autocast_dtype):
                yield


def copy_module(model: nn.Module) -> nn.Module:
    """An independent copy of ``model`` with the same weights. A LightningModule that ``deepcopy`` cannot copy
    (lightly's DINO head uses torch's old ``weight_norm``) is rebuilt from its hyper-parameters, without
    loading starting weights again, and given the weights."""
    try:
        return copy.deepcopy(model)
    except RuntimeError:
        if not hasattr(model, "hparams"):
            raise
        clone = type(model)(**{k: STARTING_WEIGHTS.get(k, v) for k, v in model.hparams.items()})
        clone.load_state_dict(model.state_dict())
        return clone


def prepare_model(model: nn.Module, precision: Precision | str, device: torch.device | str, *,
                  backend: str | None = None, channels_last: bool = False, compile: bool = False,
                  copy_model: bool = True) -> nn.Module:
    """``model`` (a copy unless ``copy_model`` is False) with its attention modules on ``backend`` (None: as
    they are; ignored without attention modules), on ``device`` with the weight dtype of ``precision``, optionally in channels-last
    memory format and with each of its networks (the children holding parameters: what ``forward`` and
    ``training_step`` call) compiled in place by ``torch.compile``."""
    precision = get_precision(precision) if isinstance(precision, str) else precision
    if copy_model:
        model = copy_module(model)
    if backend is not None and attention_modules(model):
        set_attention_backend(model, backend, device)
    model = model.to(device=device, dtype=precision.param_dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        for child in model.children():
            if next(child.parameters(), None) is not None:
                child.compile()
    return model


def prepare_input(x: torch.Tensor, precision: Precision | str, device: torch.device | str, *,
                  channels_last: bool = False) -> torch.Tensor:
    """An input batch on ``device`` in the weight dtype of ``precision`` (autocast casts it further)."""
    precision = get_precision(precision) if isinstance(precision, str) else precision
    x = x.to(device=device, dtype=precision.param_dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
