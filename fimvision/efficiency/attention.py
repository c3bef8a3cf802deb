"""Attention backends for every timm attention module of a built model.

A timm attention module (any module with timm's ``fused_attn`` flag: ViT, DeiT, EVA, Swin, ...) either
calls ``F.scaled_dot_product_attention`` (fused) or computes ``softmax(q k^T * scale) v`` with separate
operators (unfused). :func:`set_attention_backend` switches between them at any time after creation and,
for the fused call, forces one SDPA kernel with ``torch.nn.attention.sdpa_kernel``:

========== ===================================================================================
backend    what runs
========== ===================================================================================
auto       fused SDPA, PyTorch picks the kernel (the default of a freshly built model)
math       fused call, forced to PyTorch's reference kernel (``_scaled_dot_product_attention_math``)
flash      fused call, forced to FlashAttention (CUDA: FlashAttention-2; CPU: the tiled
           ``_scaled_dot_product_flash_attention_for_cpu``)
efficient  fused call, forced to memory-efficient attention (xFormers kernel, CUDA only)
cudnn      fused call, forced to cuDNN attention (CUDA only)
unfused    timm's own operator-by-operator path (matmul, softmax, matmul)
========== ===================================================================================

A forced kernel never falls back: a backend the device lacks is refused when it is set, and a kernel
that cannot take a given input (e.g. FlashAttention with fp32 on CUDA) raises
:class:`AttentionBackendError` naming backend, dtype and shape. On the CPU, torch 2.14 has exactly two
SDPA kernels, ``math`` and ``flash`` (both for fp64, fp32, bf16 and fp16); ``efficient`` and ``cudnn``
exist only on CUDA. :func:`available_backends` finds this out by running each kernel, not from a list.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Callable, Iterator
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from fimvision.errors import FimvisionError

Backend = Literal["auto", "math", "flash", "efficient", "cudnn", "unfused"]
BACKENDS: tuple[str, ...] = get_args(Backend)
SDPA_BACKENDS: dict[str, SDPBackend] = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


class AttentionBackendError(FimvisionError):
    """An attention backend that the device (or the input's dtype) cannot run."""


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The timm attention modules of ``model`` (those with timm's ``fused_attn`` switch), by name."""
    return [(name, m) for name, m in model.named_modules() if hasattr(m, "fused_attn")]


@functools.cache
def _kernel_runs(backend: str, device_type: str, dtype: torch.dtype) -> bool:
    q = torch.randn(1, 2, 16, 64 if device_type == "cuda" else 8, device=device_type).to(dtype)
    try:
        with sdpa_kernel([SDPA_BACKENDS[backend]]):
            F.scaled_dot_product_attention(q, q, q)
    except RuntimeError:
        return False
    return True


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that run on ``device`` for at least one of fp32, bf16, fp16 (probed, not listed)."""
    device_type = torch.device(device).type
    fused = [b for b in SDPA_BACKENDS
             if any(_kernel_runs(b, device_type, dt) for dt in (torch.float32, torch.bfloat16, torch.float16))]
    return ["auto", *fused, "unfused"]


def check_backend(backend: str, device: torch.device | str) -> None:
    """Raise :class:`AttentionBackendError` unless ``backend`` runs on ``device``."""
    if backend not in BACKENDS:
        raise AttentionBackendError(f"unknown attention backend '{backend}'; choose one of {', '.join(BACKENDS)}.")
    have = available_backends(device)
    if backend not in have:
        raise AttentionBackendError(
            f"attention backend '{backend}' is not available on {torch.device(device).type} "
            f"(torch {torch.__version__}); this device offers: {', '.join(have)}.")


@contextlib.contextmanager
def forced_kernel(backend: str, where: str = "") -> Iterator[None]:
    """Run SDPA calls inside with only ``backend``'s kernel allowed ('auto': PyTorch's choice)."""
    if backend not in SDPA_BACKENDS:
        yield
        return
    with sdpa_kernel([SDPA_BACKENDS[backend]]):
        try:
            yield
        except RuntimeError as err:
            if "No viable backend" not in str(err) and "No available kernel" not in str(err):
                raise
            raise AttentionBackendError(
                f"attention backend '{backend}' cannot run {where or 'this input'}: {str(err).splitlines()[0]} "
                "Choose another backend or precision (e.g. flash needs fp16/bf16 on CUDA).") from err


def _forward_with_backend(self: nn.Module, *args, **kwargs):
    with forced_kernel(self._fimvision_backend, where=f"{type(self).__name__}"):
        return type(self).forward(self, *args, **kwargs)


def set_attention_backend(model: nn.Module, backend: Backend, device: torch.device | str | None = None) -> int:
    """Switch every timm attention module of ``model`` to ``backend``; return how many were switched.

    Checks first that the device (default: the model's) has the backend. A model without attention
    (a CNN) is left as it is and 0 is returned.
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else "cpu"
    check_backend(backend, device)
    modules = attention_modules(model)
    for _, module in modules:
        module.fused_attn = backend != "unfused"
        module._fimvision_backend = backend
        if backend in SDPA_BACKENDS:
            # An instance-level forward keeps the class untouched (other models stay as they are) and
            # follows the module through deepcopy.
            module.forward = types.MethodType(_forward_with_backend, module)
        elif "forward" in module.__dict__:
            del module.forward
    return len(modules)


def get_attention_backend(model: nn.Module) -> str | None:
    """The backend the attention modules of ``model`` use (None without attention modules)."""
    modules = attention_modules(model)
    if not modules:
        return None
    names = {getattr(m, "_fimvision_backend", "auto" if m.fused_attn else "unfused") for _, m in modules}
    return names.pop() if len(names) == 1 else "mixed"


def unfused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                      scale: float | None = None) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` with separate operators, in the inputs' dtype (timm's unfused order:
    q is scaled first)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return scores.softmax(dim=-1) @ v


SdpaHandler = Callable[[str, nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]


class SdpaInterceptor(TorchFunctionMode):
    """Route every ``F.scaled_dot_product_attention`` call made inside a timm attention module of ``model``
    to ``handler(name, module, q, k, v, kwargs)``, which returns the attention output.

    Used by the in-model deviation check (same q, k, v through several kernels) and by CHAI (shared
    attention scores). Attention modules are switched to the fused path while active, so every layer
    calls SDPA; their previous backend is restored on exit.
    """

    def __init__(self, model: nn.Module, handler: SdpaHandler) -> None:
        super().__init__()
        self.handler = handler
        self.modules = attention_modules(model)
        self._stack: list[tuple[str, nn.Module]] = []
        self._hooks: list = []
        self._saved: list[bool] = []

    def __enter__(self):
        for name, module in self.modules:
            self._saved.append(module.fused_attn)
            module.fused_attn = True
            self._hooks.append(module.register_forward_pre_hook(
                lambda m, a, name=name: self._stack.append((name, m))))
            self._hooks.append(module.register_forward_hook(self._pop))
        return super().__enter__()

    def _pop(self, module, args, output) -> None:
        self._stack.pop()

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        for (_, module), fused in zip(self.modules, self._saved, strict=True):
            module.fused_attn = fused
        self._hooks, self._saved, self._stack = [], [], []
        return super().__exit__(*exc)

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.scaled_dot_product_attention and self._stack:
            q, k, v, *rest = args
            for key, value in zip(("attn_mask", "dropout_p", "is_causal"), rest, strict=False):
                kwargs[key] = value
            name, module = self._stack[-1]
            return self.handler(name, module, q, k, v, kwargs)
        return func(*args, **kwargs)
