"""Throughput and peak memory for each configuration: backend x precision x compile x batch size x mode.

Every configuration gets its own copy of the LightningModule (same weights), warm-up calls (which also absorb
``torch.compile``'s compilation), then ``repeats`` timed runs of ``iters`` calls each: a forward pass
(``inference``) or the module's own training step (``train``, :class:`~fimvision.efficiency.steps.TrainStep`).
CUDA is timed with CUDA events after a synchronisation, the CPU with ``torch.utils.benchmark.Timer`` (whose
``timeit`` warms up with two more calls before each repeat). Reported: the median images/s over the repeats
and the spread (min and max, and the relative interquartile range).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (weights, optimizer state and activations);
on the CPU the peak of the memory PyTorch allocates during one call on top of what was already held
(activations, gradients, temporaries), from the profiler's allocation records.

Model FLOPs are counted once per (mode, batch size) with ``torch.utils.flop_counter`` on the unfused
model in fp32 (matmuls, convolutions; a training step counts everything its ``training_step`` and backward
run, e.g. both views and the teacher of a self-supervised method), so achieved TFLOP/s and MFU (against a
measured dense bf16 matmul rate) compare all backends on the same work.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from fimvision.console import tqdm_disable
from fimvision.efficiency.attention import AttentionBackendError, attention_modules, check_backend
from fimvision.efficiency.precision import get_precision, prepare_model
from fimvision.efficiency.steps import TrainStep, make_forward, require_automatic_optimization, synchronize
from fimvision.efficiency.summary import show
from fimvision.efficiency.target import EfficiencyTarget, images_of


def time_calls(fn: Callable, device, *, warmup: int = 2, repeats: int = 5, iters: int = 1) -> list[float]:
    """Seconds per call of ``fn`` in each of ``repeats`` runs of ``iters`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if torch.device(device).type != "cuda":
        from torch.utils.benchmark import Timer  # here: importing it probes for a CUDA toolkit and says so

        timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        return [timer.timeit(iters).mean for _ in range(repeats)]
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000 / iters)
    return times


def cpu_peak_memory(fn: Callable) -> int:
    """Peak bytes PyTorch allocates during one call of ``fn`` beyond what was held before it."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    held = peak = 0
    for event in events:
        held += event.self_cpu_memory_usage
        peak = max(peak, held)
    return peak


def matmul_rate(dtype: torch.dtype, device, n: int | None = None, repeats: int = 5) -> float:
    """Measured dense matmul FLOP/s for ``dtype`` on ``device`` (median of ``repeats`` n x n x n products)."""
    n = n or (8192 if torch.device(device).type == "cuda" else 512)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    times = time_calls(lambda: a @ b, device, warmup=2, repeats=repeats, iters=4 if torch.device(device).type == "cuda" else 1)
    return 2 * n**3 / statistics.median(times)


def count_flops(target: EfficiencyTarget, mode: str, batch_size: int, device="cpu") -> float:
    """Model FLOPs of one call (forward, or training step with backward for ``train``) at ``batch_size``."""
    model = prepare_model(target.module, "32-true", device, backend="unfused")
    batch = target.batch(batch_size)
    counter = FlopCounterMode(display=False)
    if mode == "train":
        step = TrainStep(model, batch, "32-true", device)
        with counter:
            step()
    else:  # no_grad, not inference_mode: FlopCounterMode fails on parametrized weight norm in inference mode
        with counter, torch.no_grad():
            model.eval()(images_of(batch).to(device))
    return float(counter.get_total_flops())


def run_config(target: EfficiencyTarget, *, mode: str, backend: str, precision: str, compile: bool, batch_size: int,
               device, channels_last: bool = False, warmup: int = 2, repeats: int = 5, iters: int = 1) -> dict:
    """Time one configuration; returns its row (``error`` set, numbers empty, when it cannot run). A training
    row also holds the loss of its last step (``loss``)."""
    prec = get_precision(precision)
    row = {"model": target.name, "mode": mode, "backend": backend, "precision": prec.name, "compile": compile,
           "channels_last": channels_last, "batch_size": batch_size, "error": ""}
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    model = prepare_model(target.module, prec, device, backend=backend, channels_last=channels_last, compile=compile)
    batch = target.batch(batch_size)
    fn = (TrainStep(model, batch, prec, device, channels_last=channels_last) if mode == "train"
          else make_forward(model, images_of(batch), prec, device, channels_last=channels_last))
    try:
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = time_calls(fn, device, warmup=warmup, repeats=repeats, iters=iters)
        peak = torch.cuda.max_memory_allocated(device) if torch.device(device).type == "cuda" else cpu_peak_memory(fn)
    except (AttentionBackendError, RuntimeError) as err:
        row["error"] = str(err).splitlines()[0][:200]
        return row
    rates = sorted(batch_size / t for t in times)
    q1, q3 = (statistics.quantiles(rates, n=4)[0], statistics.quantiles(rates, n=4)[2]) if len(rates) > 1 else (rates[0],) * 2
    median = statistics.median(rates)
    row.update({"images_per_s": median, "images_per_s_min": rates[0], "images_per_s_max": rates[-1],
                "spread_iqr_rel": (q3 - q1) / median, "ms_per_call": 1000 * statistics.median(times),
                "peak_mem_mib": peak / 2**20, "repeats": repeats, "iters": iters})
    if mode == "train":
        row["loss"] = float(fn.loss)
    return row


def benchmark(target: EfficiencyTarget, *, modes=("inference",), backends=("math", "flash"), precisions=("32-true",),
              compiles=(False,), batch_sizes=(8,), device="cpu", channels_last: bool = False, warmup: int = 2,
              repeats: int = 5, iters: int = 1, mfu: bool = True, progress: bool = True) -> dict:
    """Run every configuration; returns ``{"rows": [...], "matmul_tflops": ..., "memory_basis": ...}``."""
    if "train" in modes:
        require_automatic_optimization(target.module)
    has_attention = bool(attention_modules(target.module))
    backends = list(backends) if has_attention else ["n/a"]
    for b in backends:
        if b != "n/a":
            check_backend(b, device)
    rates = {str(dt).replace("torch.", ""): matmul_rate(dt, device) for dt in (torch.bfloat16, torch.float32)} if mfu else {}
    flops = {(m, bs): count_flops(target, m, bs, device) for m in modes for bs in batch_sizes} if mfu else {}
    configs = list(itertools.product(modes, backends, precisions, compiles, batch_sizes))
    rows = []
    for mode, backend, precision, comp, bs in tqdm(configs, desc="benchmark", disable=tqdm_disable(progress)):
        row = run_config(target, mode=mode, backend=backend, precision=precision, compile=comp, batch_size=bs,
                         device=device, channels_last=channels_last, warmup=warmup, repeats=repeats, iters=iters)
        if mfu and not row["error"]:
            achieved = flops[(mode, bs)] / (row["ms_per_call"] / 1000)
            row.update({"gflop_per_call": flops[(mode, bs)] / 1e9, "achieved_tflops": achieved / 1e12,
                        "mfu_vs_bf16_matmul": achieved / rates["bfloat16"],
                        "mfu_vs_fp32_matmul": achieved / rates["float32"]})
        rows.append(row)
    device_name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
    return {"device": device_name, "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows,
            "matmul_tflops": {k: v / 1e12 for k, v in rates.items()},
            "memory_basis": "torch.cuda.max_memory_allocated" if device_name != "cpu"
            else "peak bytes PyTorch allocates during one call beyond what was held before (profiler)"}


@dataclass
class BenchmarkSettings:
    """Options of `benchmark`.

    Args:
        modes: ``inference`` (forward) and/or ``train`` (the module's training step: forward, loss, backward,
            optimizer step).
        backends: attention backends (ignored for CNNs).
        precisions: precision modes (Lightning names).
        compile: torch.compile off and/or on.
        batch_sizes: batch sizes.
        channels_last: channels-last memory format.
        warmup: untimed calls first (absorbs compilation).
        repeats: timed runs; the median and spread are over these.
        iters: calls per timed run.
        mfu: count model FLOPs and measure matmul rates for achieved TFLOP/s and MFU.
    """

    modes: list[Literal["inference", "train"]] = field(default_factory=lambda: ["inference", "train"])
    backends: list[str] = field(default_factory=lambda: ["math", "flash"])
    precisions: list[str] = field(default_factory=lambda: ["32-true", "bf16-mixed"])
    compile: list[bool] = field(default_factory=lambda: [False])
    batch_sizes: list[int] = field(default_factory=lambda: [8])
    channels_last: bool = False
    warmup: int = 2
    repeats: int = 5
    iters: int = 1
    mfu: bool = True


def run_benchmark(target: EfficiencyTarget, s: BenchmarkSettings, device: str, out: Path) -> dict:
    """`fimvision-efficiency benchmark`: every configuration of ``s``; ``benchmark.csv`` and a table."""
    result = benchmark(target, modes=s.modes, backends=s.backends, precisions=s.precisions, compiles=s.compile,
                       batch_sizes=s.batch_sizes, device=device, channels_last=s.channels_last, warmup=s.warmup,
                       repeats=s.repeats, iters=s.iters, mfu=s.mfu)
    result["model"] = target.name
    show(f"benchmark of {target.name} on {result['device']} ({result['threads']} threads); matmul TFLOP/s: "
         f"{', '.join(f'{k} {v:.3g}' for k, v in result['matmul_tflops'].items())}", result["rows"],
         ["mode", "backend", "precision", "compile", "batch_size", "images_per_s", "images_per_s_min", "images_per_s_max",
          "spread_iqr_rel", "peak_mem_mib", "achieved_tflops", "mfu_vs_bf16_matmul", "error"], csv=out / "benchmark.csv")
    print(f"memory: {result['memory_basis']}")
    return result
