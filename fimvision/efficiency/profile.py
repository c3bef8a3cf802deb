"""Operator-level profile: where a forward pass and a training step spend their time, by category.

Each profiled operator's *self* time (its own time, children excluded; on CUDA the GPU time of the
kernels it launched) is assigned to one category by its name, so the categories partition the total:
they sum to the profiled operator time. On CUDA the GPU idle share is ``1 - busy / window`` where
``busy`` is the union of all kernel and memcpy intervals and ``window`` the span from the first to the
last of them (gaps between kernels: launch overhead, host work, synchronisation).

The workloads are a forward pass and the LightningModule's own training step
(:class:`~fimvision.efficiency.steps.TrainStep`: its loss, its optimizer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from fimvision.efficiency.attention import attention_modules
from fimvision.efficiency.precision import prepare_model
from fimvision.efficiency.steps import TrainStep, make_forward, require_automatic_optimization, synchronize
from fimvision.efficiency.summary import show
from fimvision.efficiency.target import images_of

CATEGORIES = ("convolution", "linear/matmul", "attention", "normalisation", "activation", "memory/copy", "other")
# First match wins. Softmax counts as attention: in these models only attention uses it in forward.
_RULES: list[tuple[str, re.Pattern]] = [
    ("attention", re.compile(r"scaled_dot_product|flash_attention|efficient_attention|cudnn_attention|"
                             r"attention|(?<!log_)softmax", re.I)),
    ("convolution", re.compile(r"conv|cudnn_convolution|mkldnn_convolution", re.I)),
    ("linear/matmul", re.compile(r"addmm|\bmm\b|aten::mm|bmm|matmul|linear|gemm|baddbmm|addbmm|cublas|cutlass", re.I)),
    ("normalisation", re.compile(r"norm", re.I)),
    ("activation", re.compile(r"gelu|relu|silu|sigmoid|tanh|hardswish|hardsigmoid|threshold|elu|mish|swish", re.I)),
    ("memory/copy", re.compile(r"copy|clone|contiguous|_to_copy|aten::to\b|cat\b|stack|empty|zero|fill|memcpy|memset|"
                               r"index|gather|scatter|pad|as_strided|expand|repeat|cudaMemcpy|cudaMalloc", re.I)),
]


def categorize(op_name: str) -> str:
    """The category of a profiler op or kernel name."""
    for category, pattern in _RULES:
        if pattern.search(op_name):
            return category
    return "other"


def _self_time(event, on_device: bool) -> float:
    return float(event.self_device_time_total if on_device else event.self_cpu_time_total)


def breakdown(prof, on_device: bool = False) -> dict:
    """Categories of a finished ``torch.profiler.profile``: microseconds and shares, with the top ops."""
    totals = dict.fromkeys(CATEGORIES, 0.0)
    ops: list[tuple[str, str, float]] = []
    for event in prof.key_averages():
        us = _self_time(event, on_device)
        if us <= 0:
            continue
        category = categorize(event.key)
        totals[category] += us
        ops.append((event.key, category, us))
    total = sum(totals.values())
    ops.sort(key=lambda o: -o[2])
    return {"total_us": total, "categories_us": totals,
            "shares": {c: (v / total if total else 0.0) for c, v in totals.items()},
            "top_ops": [{"op": n, "category": c, "self_us": us} for n, c, us in ops[:15]],
            "op_names": sorted({e.key for e in prof.key_averages()})}


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by possibly overlapping ``(start, end)`` intervals."""
    covered, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                covered += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        covered += cur_end - cur_start
    return covered


def gpu_idle_share(prof) -> float | None:
    """Share of the GPU window (first to last kernel) with no kernel or copy running; None without CUDA events."""
    intervals = [(e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA]
    if not intervals:
        return None
    window = max(e for _, e in intervals) - min(s for s, _ in intervals)
    return 1.0 - union_length(intervals) / window if window > 0 else 0.0


def profile_workload(fn, device: torch.device | str, *, warmup: int = 2, steps: int = 3) -> dict:
    """Run ``fn`` ``warmup`` times, then profile ``steps`` calls; the category breakdown (per call) and,
    on CUDA, the GPU idle share."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    on_device = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        synchronize(device)
    result = breakdown(prof, on_device)
    result["total_us"] /= steps
    result["categories_us"] = {c: v / steps for c, v in result["categories_us"].items()}
    for op in result["top_ops"]:
        op["self_us"] /= steps
    result["gpu_idle_share"] = gpu_idle_share(prof) if on_device else None
    result["time_basis"] = "GPU kernel self time" if on_device else "CPU operator self time"
    return result


def profile_png(results: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """Stacked bars: time per category (ms per call) for each profiled workload."""
    import numpy as np

    from fimvision.plots import plt, save_figure

    names = list(results)
    fig, ax = plt.subplots(figsize=(2.0 + 1.3 * len(names), 4.0))
    bottom = np.zeros(len(names))
    for category in CATEGORIES:
        ms = np.array([results[n]["categories_us"][category] / 1000 for n in names])
        ax.bar(names, ms, bottom=bottom, label=category)
        bottom += ms
    ax.set_ylabel("time per call (ms)")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    return save_figure(fig, path)


@dataclass
class ProfileSettings:
    """Options of `profile`.

    Args:
        modes: ``forward`` and/or ``train`` (one training step).
        backends: attention backends to profile (ignored for CNNs).
        precision: precision mode.
        batch_size: batch size.
        warmup: unprofiled calls first.
        steps: profiled calls (results are per call).
    """

    modes: list[Literal["forward", "train"]] = field(default_factory=lambda: ["forward", "train"])
    backends: list[str] = field(default_factory=lambda: ["flash"])
    precision: str = "32-true"
    batch_size: int = 8
    warmup: int = 2
    steps: int = 3


def run_profile(target, s: ProfileSettings, device: str, out: Path) -> dict:
    """`fimvision-efficiency profile`: each mode x backend of ``s`` profiled; ``profile.csv``, ``.png`` and a table."""
    if "train" in s.modes:
        require_automatic_optimization(target.module)
    batch = target.batch(s.batch_size)
    backends = s.backends if attention_modules(target.module) else ["n/a"]
    results = {}
    for backend in backends:
        for mode in s.modes:
            model = prepare_model(target.module, s.precision, device, backend=backend)
            fn = (TrainStep(model, batch, s.precision, device) if mode == "train"
                  else make_forward(model, images_of(batch), s.precision, device))
            results[f"{mode} {backend}" if backend != "n/a" else mode] = profile_workload(
                fn, device, warmup=s.warmup, steps=s.steps)
    profile_png(results, out / "profile.png", title=f"{target.name}, {s.precision}, batch {s.batch_size}, {device}")
    rows = [{"workload": name, "total_ms": r["total_us"] / 1000, **{c: r["shares"][c] for c in CATEGORIES},
             "gpu_idle": r["gpu_idle_share"]} for name, r in results.items()]
    basis = next(iter(results.values()))["time_basis"]
    show(f"operator time by category (share of {basis}), {target.name}, {s.precision}, batch {s.batch_size}, {device}",
         rows, csv=out / "profile.csv")
    return {"model": target.name, "device": device, "precision": s.precision, "batch_size": s.batch_size,
            "workloads": results, "table": rows}
