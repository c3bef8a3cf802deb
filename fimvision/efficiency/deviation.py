"""Numeric deviation against an fp64 golden reference, inside the model and at its output.

In-model: every attention call of the model (run at a chosen precision) is intercepted; on the very
same q, k, v three results are computed:

- candidate: the chosen backend (e.g. flash) in the dtype the model produced q, k, v in;
- reference: unfused attention (matmul, softmax, matmul) with every operator in that same dtype and
  autocast off, as ``attention_ref(upcast=False)`` in FlashAttention's tests;
- golden: the math kernel in fp64 on q, k, v upcast to fp64.

A layer passes the FlashAttention test rule when ``maxabs(candidate - golden) <= 2 * maxabs(reference -
golden) + floor`` (floor: a rounding floor, 1e-5 as in those tests). The ratio depends on the reference,
so the report names it. The candidate's output is what the model continues with.

Model-level: the logits of the model at the chosen precision and backend (and, for context, with the
math backend at the same precision) against an fp64 copy run with the math backend.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from fimvision.efficiency.attention import (
    SdpaInterceptor,
    attention_modules,
    check_backend,
    forced_kernel,
    set_attention_backend,
    unfused_attention,
)
from fimvision.efficiency.precision import get_precision, precision_context, prepare_input, prepare_model
from fimvision.errors import FimvisionError


def error_stats(x: torch.Tensor, golden: torch.Tensor) -> dict[str, float]:
    """max-abs, mean-abs, RMSE and relative (L2) error of ``x`` against ``golden``, in fp64."""
    d = x.double() - golden.double()
    norm = golden.double().norm().item()
    return {"max_abs": d.abs().max().item(), "mean_abs": d.abs().mean().item(),
            "rmse": d.pow(2).mean().sqrt().item(), "rel": d.norm().item() / norm if norm else float("nan")}


def reference_description(dtype: torch.dtype) -> str:
    """What the same-dtype reference computes (the verdict's ratio depends on it)."""
    return (f"unfused attention: (q*scale) @ k^T, softmax, @ v, every op in {str(dtype).replace('torch.', '')} "
            "with autocast off (FlashAttention tests' attention_ref(upcast=False)); golden: math SDPA in float64")


@dataclass
class _Call:
    q: torch.Tensor
    kwargs: dict


def _golden(q, k, v, kwargs) -> torch.Tensor:
    mask = kwargs.get("attn_mask")
    with torch.autocast(q.device.type, enabled=False), sdpa_kernel([SDPBackend.MATH]):
        return F.scaled_dot_product_attention(
            q.double(), k.double(), v.double(), attn_mask=mask.double() if mask is not None and mask.is_floating_point()
            else mask, is_causal=kwargs.get("is_causal", False), scale=kwargs.get("scale"))


def _candidate(backend: str, q, k, v, kwargs, where: str) -> torch.Tensor:
    mask, scale = kwargs.get("attn_mask"), kwargs.get("scale")
    with torch.autocast(q.device.type, enabled=False):
        if backend == "unfused":
            if kwargs.get("is_causal"):
                mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
            return unfused_attention(q, k, v, mask, scale)
        with forced_kernel(backend, where=where):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=kwargs.get("is_causal", False),
                                                  scale=scale)


def in_model_deviation(net: nn.Module, x: torch.Tensor, *, backend: str = "flash", precision: str = "32-true",
                       device: str | torch.device = "cpu", floor: float = 1e-5) -> list[dict]:
    """Per attention layer: candidate and reference errors against the fp64 golden, and the verdict."""
    if not attention_modules(net):
        raise FimvisionError(f"{type(net).__name__} has no timm attention modules: in-model deviation applies to ViTs.")
    check_backend(backend, device)
    prec = get_precision(precision)
    model = prepare_model(net, prec, device).eval()
    rows: list[dict] = []

    def handler(name, module, q, k, v, kwargs):
        cand = _candidate(backend, q, k, v, kwargs, where=f"layer {name} ({q.dtype}, q {tuple(q.shape)})")
        mask = kwargs.get("attn_mask")
        if kwargs.get("is_causal"):
            mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        with torch.autocast(q.device.type, enabled=False):
            ref = unfused_attention(q, k, v, mask, kwargs.get("scale"))
        gold = _golden(q, k, v, kwargs)
        c, r = error_stats(cand, gold), error_stats(ref, gold)
        rows.append({"layer": name, "backend": backend, "precision": prec.name, "dtype": str(q.dtype).replace("torch.", ""),
                     "seq_len": q.shape[-2], "heads": q.shape[1], "head_dim": q.shape[-1],
                     **c, **{f"ref_{key}": val for key, val in r.items()},
                     "ratio": c["max_abs"] / r["max_abs"] if r["max_abs"] > 0 else float("inf") if c["max_abs"] > 0 else 1.0,
                     "pass": bool(c["max_abs"] <= 2 * r["max_abs"] + floor)})
        return cand

    with torch.no_grad(), precision_context(prec, device), SdpaInterceptor(model, handler):
        model(prepare_input(x, prec, device))
    return rows


def model_deviation(net: nn.Module, x: torch.Tensor, *, backend: str = "flash", precision: str = "32-true",
                    device: str | torch.device = "cpu") -> list[dict]:
    """Logits at ``precision`` with ``backend`` (and with ``math``, as context) against an fp64 math copy."""
    prec = get_precision(precision)
    has_attention = bool(attention_modules(net))
    golden_model = copy.deepcopy(net).to(device=device, dtype=torch.float64).eval()
    if has_attention:
        set_attention_backend(golden_model, "math", device)
    with torch.no_grad():
        golden = golden_model(x.to(device=device, dtype=torch.float64))
    del golden_model
    rows = []
    for name in dict.fromkeys([backend, "math"] if has_attention else ["n/a"]):
        model = prepare_model(net, prec, device).eval()
        if has_attention:
            set_attention_backend(model, name, device)
        with torch.no_grad(), precision_context(prec, device):
            logits = model(prepare_input(x, prec, device))
        stats = error_stats(logits, golden)
        rows.append({"backend": name, "precision": prec.name, "max_abs": stats["max_abs"], "mean_abs": stats["mean_abs"],
                     "rel": stats["rel"],
                     "top1_agreement": (logits.argmax(1) == golden.argmax(1)).double().mean().item(),
                     "batch": len(x)})
    return rows
