"""A whole `fimvision fit` + `test` in fp32 against bf16-mixed, paired by seed: same config, data and split.

Under bf16-mixed on CUDA, timm's attention runs fused SDPA and PyTorch picks FlashAttention, so this is the
flash + mixed-precision claim checked through the user's CLI: test macro F1 per seed (paired difference and
its spread), fit wall time and whether every logged value stayed finite.

    python benchmarks/gpu_fit_precision.py --data datasets/synthetic-demo --seeds 0 1 2 --epochs 10
    python benchmarks/gpu_fit_precision.py --device cpu --epochs 1 --seeds 0   # a dry run of the script
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd

from fimvision.cli import fit_and_test

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "supervised" / "vit_color.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="datasets/synthetic-demo", help="dataset folder (manifest.csv)")
    parser.add_argument("--config", default=str(CONFIG), help="a `fimvision fit` config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="gpu", help="Lightning accelerator: gpu or cpu")
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_fit_precision"))
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        for precision in args.precisions:
            name = f"{precision}_seed{seed}"
            start = time.perf_counter()
            done = fit_and_test([
                "--config", args.config, f"--seed_everything={seed}", f"--data.init_args.root={args.data}",
                f"--trainer.accelerator={args.device}", "--trainer.devices=1", f"--trainer.precision={precision}",
                f"--trainer.max_epochs={args.epochs}", "--trainer.enable_progress_bar=false",
                f"--trainer.default_root_dir={args.out / name}", f"--trainer.logger.init_args.save_dir={args.out}",
                f"--trainer.logger.init_args.name={name}"])
            # As text: a blank cell is a metric not logged at that step, "nan" or "inf" a non-finite value.
            logged = pd.read_csv(done.folder / "metrics.csv", dtype=str, keep_default_na=False)
            finite = not logged.map(lambda v: v.strip().lower() in ("nan", "inf", "-inf")).to_numpy().any()
            rows.append({"precision": precision, "seed": seed, "fit_and_test_s": time.perf_counter() - start,
                         "steps": done.fit.trainer.global_step, "all_finite": finite, **done.test_metrics})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "results.csv", index=False)
    print(table[["precision", "seed", "fit_and_test_s", "all_finite", "test_acc", "test_f1_macro", "test_ece"]]
          .to_string(index=False, float_format="{:.4g}".format))
    if len(args.precisions) == 2:
        wide = table.pivot(index="seed", columns="precision", values="test_f1_macro")
        diff = wide[args.precisions[1]] - wide[args.precisions[0]]
        spread = statistics.stdev(diff) if len(diff) > 1 else float("nan")
        times = table.groupby("precision")["fit_and_test_s"].median()
        print(f"test macro F1, {args.precisions[1]} - {args.precisions[0]}, per seed: "
              f"{', '.join(f'{d:+.3f}' for d in diff)}; mean {diff.mean():+.3f} (sd {spread:.3f}); "
              f"median fit+test time {times[args.precisions[0]]:.0f} s vs {times[args.precisions[1]]:.0f} s")


if __name__ == "__main__":
    main()
