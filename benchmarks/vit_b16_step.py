"""ViT-B/16 at 224 px, one training step: bf16-mixed + flash against fp32 + math.

Builds the model through the supervised ViT config (backbone overridden to vit_base_patch16_224), times
the training step of each configuration with fimvision.efficiency.benchmark (warm-up, median of
repeats), counts model FLOPs, measures dense bf16 and fp32 matmul rates on the same device and
reports images/s, the speed-up and MFU against the bf16 matmul rate.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/vit_b16_step.py --batch-size 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from fimvision.efficiency.benchmark import count_flops, matmul_rate, run_config  # noqa: E402
from fimvision.efficiency.summary import format_table  # noqa: E402
from fimvision.efficiency.target import load_target  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs/supervised/vit_color.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="runs/efficiency/vit_b16_step.json")
    a = p.parse_args()
    target = load_target(CONFIG, ["--model.init_args.backbone=vit_base_patch16_224",
                                  "--model.init_args.backbone_kwargs={patch_size: 16, drop_path_rate: 0.0}",
                                  "--data.init_args.image_size=224", "--data.init_args.root=/nonexistent"], use_data=False)
    t0 = time.perf_counter()
    rates = {"bf16": matmul_rate(torch.bfloat16, a.device), "fp32": matmul_rate(torch.float32, a.device)}
    flops = count_flops(target, "train", a.batch_size, a.device)
    rows = []
    for backend, precision in (("math", "32-true"), ("flash", "bf16-mixed")):
        row = run_config(target, mode="train", backend=backend, precision=precision, compile=False,
                         batch_size=a.batch_size, device=a.device, warmup=a.warmup, repeats=a.repeats)
        if row["error"]:
            raise SystemExit(f"{backend}/{precision}: {row['error']}")
        achieved = flops / (row["ms_per_call"] / 1000)
        row.update(achieved_tflops=achieved / 1e12, mfu_vs_bf16_matmul=achieved / rates["bf16"],
                   mfu_vs_fp32_matmul=achieved / rates["fp32"])
        rows.append(row)
        print(format_table([row], ["backend", "precision", "batch_size", "ms_per_call", "images_per_s"]), flush=True)
    speedup = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    device = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\nViT-B/16 224 px training step on {device}, batch {a.batch_size}; model GFLOP/step {flops / 1e9:.1f}; "
          f"matmul TFLOP/s bf16 {rates['bf16'] / 1e12:.4g}, fp32 {rates['fp32'] / 1e12:.4g}")
    print(format_table(rows, ["backend", "precision", "images_per_s", "images_per_s_min", "images_per_s_max",
                              "peak_mem_mib", "achieved_tflops", "mfu_vs_bf16_matmul", "mfu_vs_fp32_matmul"]))
    print(f"speed-up of bf16-mixed + flash over fp32 + math: {speedup:.3g}x  ({time.perf_counter() - t0:.0f} s)")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "batch_size": a.batch_size, "gflop_per_step": flops / 1e9,
                               "matmul_tflops": {k: v / 1e12 for k, v in rates.items()}, "rows": rows,
                               "speedup": speedup}, indent=2))


if __name__ == "__main__":
    main()
