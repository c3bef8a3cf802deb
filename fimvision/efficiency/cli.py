"""`fimvision-efficiency SUBCOMMAND --config MODEL.yaml [--settings RUN.yaml] [--out DIR] [options]`.

Subcommands: deviation, benchmark, profile, drift, chai. ``--config`` is a `fimvision fit` config (the
model and data sections are used; ``--model.init_args.*`` / ``--data.init_args.*`` overrides work as with
`fimvision fit`); ``--settings`` a YAML of the subcommand's options (configs/efficiency/). Each writes
JSON (and CSV/PNG where useful) to ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch

from fimvision.console import EXIT_OK, EXIT_USER_ERROR, one_line, quiet_third_party, run_main
from fimvision.errors import FimvisionError

log = logging.getLogger("fimvision.efficiency")
MODEL_PREFIXES = ("--model", "--data", "--trainer", "--seed_everything")


# ----------------------------------------------------------------------------------------- settings
@dataclass
class DeviationSettings:
    """Options of `deviation`.

    Args:
        parts: which checks: ``layers`` (in-model, per attention layer), ``model`` (logits vs fp64 copy),
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


@dataclass
class BenchmarkSettings:
    """Options of `benchmark`.

    Args:
        modes: ``inference`` (forward) and/or ``train`` (forward, backward, optimizer step).
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


@dataclass
class DriftSettings:
    """Options of `drift`.

    Args:
        pairs: context pairs against the base run: ``seed`` (seed vs seed+1, same initial weights),
            ``precision`` (other_precision vs precision), ``backend`` (other_backend vs backend).
        steps: optimizer steps per run.
        every_n_steps: snapshot interval.
        batch_size: batch size.
        seed: seed of the base run.
        precision: precision of the base run.
        backend: attention backend of the base run.
        other_precision: precision of the precision pair's other run.
        other_backend: backend of the backend pair's other run.
        per_tensor: also write per-tensor rows.
        keep_snapshots: keep the weight snapshots (they take model size x snapshots x runs on disk).
    """

    pairs: list[Literal["seed", "precision", "backend"]] = field(default_factory=lambda: ["seed", "precision", "backend"])
    steps: int = 30
    every_n_steps: int = 5
    batch_size: int = 8
    seed: int = 0
    precision: str = "32-true"
    backend: str = "math"
    other_precision: str = "bf16-mixed"
    other_backend: str = "flash"
    per_tensor: bool = True
    keep_snapshots: bool = False


@dataclass
class ChaiSettings:
    """Options of `chai`.

    Args:
        batch_size: batch size of calibration and evaluation.
        calibration_batches: batches whose attention maps are clustered (training images, or synthetic).
        eval_batches: at most this many validation batches are evaluated.
        clusters: fixed clusters per layer (default: the elbow of each layer's k-means inertia).
        seed: k-means seed.
    """

    batch_size: int = 16
    calibration_batches: int = 1
    eval_batches: int = 20
    clusters: int | None = None
    seed: int = 0


SETTINGS = {"deviation": DeviationSettings, "benchmark": BenchmarkSettings, "profile": ProfileSettings,
            "drift": DriftSettings, "chai": ChaiSettings}


# ------------------------------------------------------------------------------------------- output
def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain-text table of ``rows`` (floats in 4 significant digits)."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def cell(v) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def write_json(obj: dict, path: Path) -> Path:
    path.write_text(json.dumps(obj, indent=2, default=str))
    return path


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FimvisionError("--device=cuda, but PyTorch sees no CUDA device here; use --device=cpu.")
    return device


# -------------------------------------------------------------------------------------- subcommands
def run_deviation(target, s: DeviationSettings, device: str, out: Path) -> dict:
    from fimvision.efficiency.attention import AttentionBackendError, attention_modules
    from fimvision.efficiency.deviation import in_model_deviation, model_deviation, reference_description
    from fimvision.efficiency.emulation import microbenchmark
    from fimvision.efficiency.precision import get_precision

    x, _ = target.synthetic_batch(s.batch_size)
    result: dict = {"model": target.name, "device": device, "floor": s.floor}
    has_attention = bool(attention_modules(target.net))
    if "layers" in s.parts and has_attention:
        layers = []
        errors = {}
        for backend in s.backends:
            for precision in s.precisions:
                try:
                    layers += in_model_deviation(target.net, x, backend=backend, precision=precision, device=device,
                                                 floor=s.floor)
                except AttentionBackendError as err:  # e.g. flash with fp32 on CUDA: reported, not skipped silently
                    errors[(backend, precision)] = str(err)
        write_csv(layers, out / "layers.csv")
        summary = []
        for backend in s.backends:
            for precision in s.precisions:
                if (backend, precision) in errors:
                    summary.append({"backend": backend, "precision": precision, "error": errors[(backend, precision)]})
                    continue
                rs = [r for r in layers if r["backend"] == backend and r["precision"] == get_precision(precision).name]
                summary.append({"backend": backend, "precision": rs[0]["precision"], "dtype": rs[0]["dtype"],
                                 "max_abs": max(r["max_abs"] for r in rs), "ref_max_abs": max(r["ref_max_abs"] for r in rs),
                                 "mean_abs": sum(r["mean_abs"] for r in rs) / len(rs),
                                 "max_ratio": max(r["ratio"] for r in rs),
                                 "layers_pass": f"{sum(r['pass'] for r in rs)}/{len(rs)}",
                                 "reference": reference_description(getattr(torch, rs[0]["dtype"]))})
        result["layers"], result["layers_summary"] = layers, summary
        print(f"\nin-model attention deviation vs fp64 golden ({target.name}, {device}); rule: "
              f"max_abs <= 2 x ref_max_abs + {s.floor:g}")
        print(format_table(summary, ["backend", "precision", "dtype", "max_abs", "ref_max_abs", "mean_abs",
                                     "max_ratio", "layers_pass", "error"]))
        for dtype in dict.fromkeys(r["dtype"] for r in summary if "dtype" in r):
            print(f"reference ({dtype}): {reference_description(getattr(torch, dtype))}")
    elif "layers" in s.parts:
        print(f"\n{target.name} has no attention layers: in-model attention deviation skipped")
    if "model" in s.parts:
        model_rows = []
        for backend in s.backends if has_attention else ["n/a"]:
            for precision in s.precisions:
                try:
                    model_rows += model_deviation(target.net, x, backend=backend if has_attention else "math",
                                                  precision=precision, device=device)
                except AttentionBackendError as err:
                    model_rows.append({"backend": backend, "precision": precision, "error": str(err)})
        model_rows = [dict(t) for t in {tuple(r.items()) for r in model_rows}]
        model_rows.sort(key=lambda r: (r["precision"], r["backend"]))
        result["model_level"] = model_rows
        write_csv(model_rows, out / "model.csv")
        print(f"\nlogits vs fp64 copy (math backend), {len(x)} synthetic images")
        print(format_table(model_rows, ["backend", "precision", "max_abs", "mean_abs", "rel", "top1_agreement", "error"]))
    if "micro" in s.parts:
        micro = microbenchmark(s.micro_seq_lens, s.micro_tiles, s.micro_bits, s.micro_variants, s.micro_head_dim,
                               s.micro_batch, s.micro_seeds)
        result["micro"] = micro
        write_csv(micro, out / "micro.csv")
        micro_png(micro, out / "micro.png")
        print("\nemulated attention vs fp64 baseline (mean over seeds), mean-abs deviation")
        print(format_table(micro, ["variant", "seq_len", "tile", "bits", "max_abs", "mean_abs"]))
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


def run_benchmark(target, s: BenchmarkSettings, device: str, out: Path) -> dict:
    from fimvision.efficiency.benchmark import benchmark

    result = benchmark(target, modes=s.modes, backends=s.backends, precisions=s.precisions, compiles=s.compile,
                       batch_sizes=s.batch_sizes, device=device, channels_last=s.channels_last, warmup=s.warmup,
                       repeats=s.repeats, iters=s.iters, mfu=s.mfu)
    result["model"] = target.name
    write_csv(result["rows"], out / "benchmark.csv")
    print(f"\nbenchmark of {target.name} on {result['device']} ({result['threads']} threads); "
          f"matmul TFLOP/s: {', '.join(f'{k} {v:.3g}' for k, v in result['matmul_tflops'].items())}")
    print(format_table(result["rows"], ["mode", "backend", "precision", "compile", "batch_size", "images_per_s",
                                        "images_per_s_min", "images_per_s_max", "spread_iqr_rel", "peak_mem_mib",
                                        "achieved_tflops", "mfu_vs_bf16_matmul", "error"]))
    print(f"memory: {result['memory_basis']}")
    return result


def run_profile(target, s: ProfileSettings, device: str, out: Path) -> dict:
    from fimvision.efficiency.attention import attention_modules, set_attention_backend
    from fimvision.efficiency.precision import prepare_model
    from fimvision.efficiency.profile import CATEGORIES, profile_png, profile_workload
    from fimvision.efficiency.steps import make_forward, make_train_step

    x, y = target.synthetic_batch(s.batch_size)
    backends = s.backends if attention_modules(target.net) else ["n/a"]
    results = {}
    for backend in backends:
        for mode in s.modes:
            model = prepare_model(target.net, s.precision, device)
            if backend != "n/a":
                set_attention_backend(model, backend, device)
            fn = (make_train_step(target.module, model, x, y, s.precision, device) if mode == "train"
                  else make_forward(model, x, s.precision, device))
            results[f"{mode} {backend}" if backend != "n/a" else mode] = profile_workload(
                fn, device, warmup=s.warmup, steps=s.steps)
    profile_png(results, out / "profile.png", title=f"{target.name}, {s.precision}, batch {s.batch_size}, {device}")
    rows = []
    for name, r in results.items():
        row = {"workload": name, "total_ms": r["total_us"] / 1000}
        row.update({c: r["shares"][c] for c in CATEGORIES})
        row["gpu_idle"] = r["gpu_idle_share"]
        rows.append(row)
    write_csv(rows, out / "profile.csv")
    print(f"\noperator time by category (share of {results[name]['time_basis']}), {target.name}, {s.precision}, "
          f"batch {s.batch_size}, {device}")
    print(format_table(rows))
    return {"model": target.name, "device": device, "precision": s.precision, "batch_size": s.batch_size,
            "workloads": results, "table": rows}


def run_drift(target, s: DriftSettings, device: str, out: Path) -> dict:
    import shutil

    from fimvision.efficiency.attention import attention_modules
    from fimvision.efficiency.drift import (
        MODEL,
        _SyntheticImages,
        compare_runs,
        drift_png,
        pair_runs,
        slopes,
        train_run,
    )

    dm = target.datamodule
    if dm is not None:
        dm.setup("fit")
        dataset = dm.datasets["train"]
    else:
        xs, ys = target.synthetic_batch(s.steps * s.batch_size, seed=12345)
        dataset = _SyntheticImages(xs, ys)

    def loader(seed: int):
        return torch.utils.data.DataLoader(dataset, batch_size=s.batch_size, shuffle=True, drop_last=True,
                                           generator=torch.Generator().manual_seed(seed))

    base, others = pair_runs(list(s.pairs), s.seed, s.precision, s.backend, s.other_precision, s.other_backend,
                             has_attention=bool(attention_modules(target.net)))
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    kw = {"steps": s.steps, "every_n_steps": s.every_n_steps, "accelerator": accelerator}
    base_dir = train_run(target.module, base, loader, out, **kw)
    rows = []
    for pair, spec in others.items():
        other_dir = train_run(target.module, spec, loader, out, **kw)
        rows += [{"pair": pair, **r} for r in compare_runs(other_dir, base_dir, per_tensor=s.per_tensor)]
        if not s.keep_snapshots:
            shutil.rmtree(other_dir)
    if not s.keep_snapshots:
        shutil.rmtree(base_dir)
    write_csv(rows, out / "drift.csv")
    drift_png(rows, out / "drift.png", title=f"weight drift, {target.name}: base = {base.precision}, {base.backend}, seed {base.seed}")
    slope = slopes(rows)
    final = []
    for pair in others:
        last = [r for r in rows if r["pair"] == pair and r["tensor"] == MODEL][-1]
        final.append({"pair": pair, "step": last["step"], "max_abs": last["max_abs"], "wasserstein": last["wasserstein"],
                      "slope_max_abs": slope[pair]["max_abs"], "slope_wasserstein": slope[pair]["wasserstein"]})
    print(f"\nwhole-model weight drift after {s.steps} steps ({target.name}, {device}); slopes per step")
    print(format_table(final))
    return {"model": target.name, "base": asdict(base), "runs": {k: asdict(v) for k, v in others.items()},
            "final": final, "slopes": slope}


def run_chai(target, s: ChaiSettings, device: str, out: Path) -> dict:
    import itertools

    from fimvision.efficiency.attention import attention_modules
    from fimvision.efficiency.chai import attention_macs, build_plan, evaluate

    net = target.net.to(device).float().eval()
    dm = target.datamodule
    if dm is not None:
        dm.batch_size = s.batch_size
        dm.setup("fit")
        calib = torch.cat([b["image"] for b in itertools.islice(dm.train_dataloader(), s.calibration_batches)])
        batches = [(b["image"].to(device), b["target"].to(device))
                   for b in itertools.islice(dm.val_dataloader(), s.eval_batches)]
        note = "validation split of the dataset"
    else:
        calib = torch.cat([target.synthetic_batch(s.batch_size, seed=1000 + i)[0] for i in range(s.calibration_batches)])
        batches = [(target.synthetic_batch(s.batch_size, seed=2000 + i)[0].to(device), None)
                   for i in range(min(s.eval_batches, 4))]
        note = "synthetic input (no dataset): accuracy needs --data.init_args.root of a dataset"
    plan, maps = build_plan(net, calib.to(device), s.clusters, s.seed)
    head_dim = {name: m.head_dim for name, m in attention_modules(net)}
    macs = attention_macs(plan, maps, head_dim)
    scores = evaluate(net, plan, batches)
    layers = [{"layer": name, "heads": len(p.labels), "clusters": p.k, "representatives": p.representatives,
               "labels": p.labels} for name, p in plan.items()]
    write_csv(layers, out / "chai_layers.csv")
    summary = {**macs, **scores, "evaluated_on": note}
    print(f"\nCHAI on {target.name} ({device}), evaluated on {note}")
    print(format_table(layers, ["layer", "heads", "clusters", "representatives"]))
    print(format_table([{k: v for k, v in summary.items() if k != "evaluated_on"}]))
    return {"model": target.name, "summary": summary, "layers": layers}


RUNNERS = {"deviation": run_deviation, "benchmark": run_benchmark, "profile": run_profile, "drift": run_drift,
           "chai": run_chai}


# ------------------------------------------------------------------------------------------- parser
def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="fimvision-efficiency", description=__doc__.splitlines()[0], exit_on_error=False)
    subcommands = parser.add_subcommands(dest="subcommand")
    for name, settings in SETTINGS.items():
        sub = ArgumentParser(exit_on_error=False, description=settings.__doc__.splitlines()[0])
        sub.add_argument("--config", type=str, required=True,
                         help="a `fimvision fit` config (model and data sections are used)")
        sub.add_argument("--settings", action=ActionConfigFile, help="YAML with this subcommand's options")
        sub.add_argument("--out", type=str, default=f"runs/efficiency/{name}", help="output folder")
        sub.add_argument("--device", type=str, default="auto", help="auto, cpu or cuda[:N]")
        sub.add_argument("--synthetic", type=bool, default=False,
                         help="use synthetic input even when the dataset folder exists")
        sub.add_argument("--num_classes", type=int, default=2,
                         help="classes of the model when there is no dataset and the config names none")
        sub.add_class_arguments(settings)
        subcommands.add_subcommand(name, sub, help=settings.__doc__.splitlines()[0])
    return parser


def split_model_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """(own args, `fimvision fit` overrides such as --model.init_args.x=1)."""
    own, overrides, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith(MODEL_PREFIXES):
            overrides.append(arg)
            if "=" not in arg and i + 1 < len(args):
                overrides.append(args[i + 1])
                i += 1
        else:
            own.append(arg)
        i += 1
    return own, overrides


def run(args: list[str]) -> int:
    """Parse ``args``, run the subcommand, write its JSON; returns the exit status."""
    own, overrides = split_model_overrides(args)
    parser = build_parser()
    try:
        cfg = parser.parse_args(own)
    except argparse.ArgumentError as err:  # a usage error, not a crash: one line, like every fimvision tool
        print(f"error: {one_line(err)}. `fimvision-efficiency --help` lists the subcommands and options.",
              file=sys.stderr)
        return EXIT_USER_ERROR
    name = cfg.subcommand
    sub = cfg[name]
    from fimvision.efficiency.models import load_target

    device = resolve_device(sub.device)
    settings = SETTINGS[name](**{f.name: sub[f.name] for f in fields(SETTINGS[name])})
    out = Path(sub.out)
    out.mkdir(parents=True, exist_ok=True)
    target = load_target(sub.config, overrides, num_classes=sub.num_classes,
                         use_data=name in ("chai", "drift") and not sub.synthetic)
    target.module.to(device)
    result = RUNNERS[name](target, settings, device, out)
    result.update({"subcommand": name, "config": sub.config, "overrides": overrides, "settings": asdict(settings),
                   "torch": torch.__version__, "threads": torch.get_num_threads()})
    path = write_json(result, out / f"{name}.json")
    print(f"\nwrote {path}")
    return EXIT_OK


def main(args: list[str] | None = None) -> int:
    """The `fimvision-efficiency` console script; returns its exit status (0, 2 bad input, 130, 1)."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger("fimvision").setLevel(logging.INFO)
    quiet_third_party()
    return run_main(run, list(sys.argv[1:] if args is None else args))


if __name__ == "__main__":
    sys.exit(main())
