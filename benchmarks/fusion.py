#!/usr/bin/env python
"""Image only vs image + instrument features (fused) vs features only, and the gradient-boosted features-only
baseline on the same splits, over 3 seeds: on SYNTHETIC data (configs/study/fusion.yaml) or, with --real, on
the labelled particles of real colour FlowCam runs (configs/study/fusion_real.yaml): a folder of
VisualSpreadsheet run exports with .cla classifications, curated first with each run its own group.

Also reports, for the same runs, test-time augmentation (8 dihedral views) and the calibration error before
and after temperature scaling: every run is tested again with TTA (the `tta_` columns).

    python benchmarks/fusion.py            # synthetic
    python benchmarks/fusion.py --real EXPORTS   # EXPORTS: a folder of VisualSpreadsheet run folders
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd
from _common import CACHE, run_study, summary_table

METRICS = ["test_acc", "test_balanced_acc", "test_f1_macro"]


def curate_real(exports: Path) -> Path:
    """The real runs curated once: labelled particles only, each run its own group (leave-one-run-out)."""
    out = CACHE / "flowcam-vs4"
    if not (out / "manifest.csv").is_file():
        runs = sorted(str(p) for p in exports.iterdir() if p.is_dir()) if exports.is_dir() else []
        if not runs:
            sys.exit(f"no VisualSpreadsheet run folders under {exports}")
        subprocess.run([sys.executable, "tools/curate_flowcam.py", *runs, "--out", str(out), "--group-from", "run",
                        "--drop-unclassified", "--quiet"], check=True)
    return out


def with_tta(results: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Each run's best checkpoint tested again with TTA (cached in the run folder as tta_metrics.csv)."""
    from fimvision.cli import build_cli

    rows = []
    for _, row in results.iterrows():
        run_dir = Path(row["run_dir"])
        cached = run_dir / "tta_metrics.csv"
        if not cached.is_file():
            cli = build_cli(["test", "--config", str(run_dir / "config.yaml"), f"--ckpt_path={row['checkpoint']}",
                             "--model.init_args.tta=true", "--trainer.enable_progress_bar=false"])
            pd.DataFrame([{k: float(v) for k, v in cli.trainer.callback_metrics.items()}]).to_csv(cached, index=False)
        rows.append(pd.read_csv(cached).add_prefix("tta_").iloc[0])
    return pd.concat([results.reset_index(drop=True), pd.DataFrame(rows).reset_index(drop=True)], axis=1)


def boosted_baseline(config: str, out: Path, pair_on: list[str]) -> pd.DataFrame:
    """The features-only gradient boosting on each fused run's exact data and split."""
    from fimvision.baselines import features_baseline
    from fimvision.cli import build_cli
    from fimvision.study.config import load_study
    from fimvision.study.runner import StudyRunner

    runner = StudyRunner(load_study(config), out)
    rows = []
    for run in runner.runs.values():
        values = run.axis_values
        if values.get("input") != "fused":
            continue
        cli = build_cli(list(run.args), run=False)
        result = features_baseline(cli.datamodule, seed=int(values["seed"]))
        rows.append({**{k: values[k] for k in pair_on}, "input": "boosted_features",
                     **{m: result[m] for m in METRICS}})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, metavar="EXPORTS",
                        help="a folder of real VisualSpreadsheet run folders (curated into datasets/bench/flowcam-vs4)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.real:
        curate_real(args.real)
    config = f"configs/study/fusion{'_real' if args.real else ''}.yaml"
    out = Path(f"runs/bench/fusion{'_real' if args.real else ''}")
    results = run_study(config, out, workers=args.workers)
    results = with_tta(results[results["stage"] == "main"], out)
    pair_on = ["split", "seed"] if args.real else ["seed"]
    for key in pair_on:
        results[key] = results[key].astype(str)
    boosted = boosted_baseline(config, out, pair_on)
    both = pd.concat([results, boosted], ignore_index=True)
    levels = ["image", "features_only", "boosted_features", "fused"]
    groups = sorted(both["split"].unique()) if args.real else [None]
    for group in groups:
        part = both if group is None else both[both["split"] == group]
        print(f"\n{'split: ' + group if group else 'SYNTHETIC, split by vial'} (ratio: paired to image only)")
        print(summary_table(part, "input", levels, "image", METRICS, pair_on))
    trained = results[results["input"].isin(["image", "fused"])]
    print("\ntest-time augmentation and calibration (image-only and fused runs):")
    table = trained.groupby("input")[["test_acc", "tta_test_acc", "test_f1_macro", "tta_test_f1_macro", "test_ece",
                                      "test_ece_calibrated"]].mean()
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
