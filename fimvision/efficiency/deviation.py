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

Model-level: the output of the model (logits; features for a self-supervised model) at the chosen precision
and backend (and, for context, with the math backend at the same precision) against an fp64 copy run with
the math backend.

The model is the LightningModule (``module(x)``); its attention modules are found anywhere inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from fimvision.efficiency.attention import (
    AttentionBackendError,
    SdpaInterceptor,
    attention_modules,
    check_backend,
    forced_kernel,
    unfused_attention,
)
from fimvision.efficiency.emulation import microbenchmark
from fimvision.efficiency.precision import get_precision, precision_context, prepare_input, prepare_model
from fimvision.efficiency.summary import show, write_csv
from fimvision.efficiency.target import images_of
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
        where = f"layer {name} ({q.dtype}, q {tuple(q.shape)})"
        cand, ref = _candidate(backend, q, k, v, kwargs, where), _candidate("unfused", q, k, v, kwargs, where)
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
    golden_model = prepare_model(net, "64-true", device, backend="math").eval()
    with torch.no_grad():
        golden = golden_model(x.to(device=device, dtype=torch.float64))
    del golden_model
    rows = []
    for name in dict.fromkeys([backend, "math"] if has_attention else ["n/a"]):
        model = prepare_model(net, prec, device, backend=name).eval()
        with torch.no_grad(), precision_context(prec, device):
            logits = model(prepare_input(x, prec, device))
        stats = error_stats(logits, golden)
        rows.append({"backend": name, "precision": prec.name, "max_abs": stats["max_abs"], "mean_abs": stats["mean_abs"],
                     "rel": stats["rel"],
                     "top1_agreement": (logits.argmax(1) == golden.argmax(1)).double().mean().item(),
                     "batch": len(x)})
    return rows


@dataclass
class DeviationSettings:
    """Options of `deviation`.

    Args:
        parts: which checks: ``layers`` (in-model, per attention layer), ``model`` (output vs fp64 copy),
            ``micro`` (emulated tiled attention sweep).
        backends: candidate attention backends.
        precisions: precisions the model runs in.
        batch_size: images per check.
        floor: rounding floor of the FlashAttention test rule.
        micro_seq_lens: sequence lengths of the microbenchmark.
        micro_tiles: key/value tile sizes.
        micro_bits: mantissa bits (7 bf16, 10 fp16/tf32, 23 fp32).
        micro_variants: baseline, fa1, fa2.
        micro_head_dim: head dimension.
        micro_batch: rows of attention (batch x heads) per sequence.
        micro_seeds: seeds averaged over.
    """

    parts: list[Literal["layers", "model", "micro"]] = field(default_factory=lambda: ["layers", "model", "micro"])
    backends: list[str] = field(default_factory=lambda: ["flash"])
    precisions: list[str] = field(default_factory=lambda: ["32-true", "bf16-mixed"])
    batch_size: int = 4
    floor: float = 1e-5
    micro_seq_lens: list[int] = field(default_factory=lambda: [128, 512])
    micro_tiles: list[int] = field(default_factory=lambda: [16, 64, 256])
    micro_bits: list[int] = field(default_factory=lambda: [7, 10, 16, 23])
    micro_variants: list[str] = field(default_factory=lambda: ["baseline", "fa1", "fa2"])
    micro_head_dim: int = 64
    micro_batch: int = 2
    micro_seeds: list[int] = field(default_factory=lambda: [0, 1])


def _layers_summary(layers: list[dict], errors: dict) -> list[dict]:
    """Per backend and precision: the worst layer's errors, the mean mean-abs error and the layers that pass."""
    summary = pd.DataFrame(layers).groupby(["backend", "precision", "dtype"], sort=False).agg(
        max_abs=("max_abs", "max"), ref_max_abs=("ref_max_abs", "max"), mean_abs=("mean_abs", "mean"),
        max_ratio=("ratio", "max"), passed=("pass", "sum"), n=("pass", "size")).reset_index().to_dict("records") if layers else []
    for row in summary:
        row.update(layers_pass=f"{row.pop('passed')}/{row.pop('n')}", reference=reference_description(getattr(torch, row["dtype"])))
    return summary + [{"backend": b, "precision": p, "error": e} for (b, p), e in errors.items()]


def run_deviation(target, s: DeviationSettings, device: str, out: Path) -> dict:
    """`fimvision-efficiency deviation`: the checks of ``s.parts`` on ``target``'s module; tables and files."""
    module = target.module
    x = images_of(target.batch(s.batch_size))
    result: dict = {"model": target.name, "device": device, "floor": s.floor}
    has_attention = bool(attention_modules(module))
    if "layers" in s.parts and has_attention:
        layers, errors = [], {}
        for backend in s.backends:
            for precision in s.precisions:
                try:
                    layers += in_model_deviation(module, x, backend=backend, precision=precision, device=device,
                                                 floor=s.floor)
                except AttentionBackendError as err:  # e.g. flash with fp32 on CUDA: reported, not skipped silently
                    errors[(backend, precision)] = str(err)
        write_csv(layers, out / "layers.csv")
        summary = _layers_summary(layers, errors)
        result["layers"], result["layers_summary"] = layers, summary
        show(f"in-model attention deviation vs fp64 golden ({target.name}, {device}); rule: max_abs <= 2 x ref_max_abs + "
             f"{s.floor:g}", summary, ["backend", "precision", "dtype", "max_abs", "ref_max_abs", "mean_abs", "max_ratio",
                                       "layers_pass", "error"])
        for dtype in dict.fromkeys(r["dtype"] for r in summary if "dtype" in r):
            print(f"reference ({dtype}): {reference_description(getattr(torch, dtype))}")
    elif "layers" in s.parts:
        print(f"\n{target.name} has no attention layers: in-model attention deviation skipped")
    if "model" in s.parts:
        model_rows = []
        for backend in s.backends if has_attention else ["n/a"]:
            for precision in s.precisions:
                try:
                    model_rows += model_deviation(module, x, backend=backend if has_attention else "math",
                                                  precision=precision, device=device)
                except AttentionBackendError as err:
                    model_rows.append({"backend": backend, "precision": precision, "error": str(err)})
        model_rows = [dict(t) for t in {tuple(r.items()) for r in model_rows}]
        model_rows.sort(key=lambda r: (r["precision"], r["backend"]))
        result["model_level"] = model_rows
        show(f"model output vs fp64 copy (math backend), {len(x)} images", model_rows,
             ["backend", "precision", "max_abs", "mean_abs", "rel", "top1_agreement", "error"], csv=out / "model.csv")
    if "micro" in s.parts:
        micro = microbenchmark(s.micro_seq_lens, s.micro_tiles, s.micro_bits, s.micro_variants, s.micro_head_dim,
                               s.micro_batch, s.micro_seeds)
        result["micro"] = micro
        micro_png(micro, out / "micro.png")
        show("emulated attention vs fp64 baseline (mean over seeds), mean-abs deviation", micro,
             ["variant", "seq_len", "tile", "bits", "max_abs", "mean_abs"], csv=out / "micro.csv")
    return result


def micro_png(rows: list[dict], path: Path) -> Path:
    """Mean-abs deviation against mantissa bits, one line per variant and tile, one panel per length."""
    from fimvision.plots import plt, save_figure

    lengths = sorted({r["seq_len"] for r in rows})
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.6), squeeze=False)
    for ax, n in zip(axes[0], lengths, strict=True):
        for key in dict.fromkeys((r["variant"], r["tile"]) for r in rows if r["seq_len"] == n):
            rs = sorted((r for r in rows if r["seq_len"] == n and (r["variant"], r["tile"]) == key), key=lambda r: r["bits"])
            label = "baseline" if key[0] == "baseline" else f"{key[0]} tile {key[1]}"
            ax.semilogy([r["bits"] for r in rs], [r["mean_abs"] for r in rs], marker="o", label=label,
                        ls="-" if key[0] != "fa1" else "--")
        ax.set_xlabel("mantissa bits")
        ax.set_ylabel("mean |O - O_fp64|")
        ax.set_title(f"sequence length {n}", fontsize=9)
        ax.legend(fontsize=6)
    return save_figure(fig, path)
