#!/usr/bin/env python
"""Colour that carries to a new antibody: colour with and without `color_norm: background` (and with the
tint augmentation) against mono, on every leave-one-antibody-out fold of SYNTHETIC data, 3 seeds.

Runs configs/study/color_transfer.yaml through `fimvision-study` (resumable) and prints mean +- sd, the
ratio to plain colour in the same fold and seed, and paired tests (bg-normalised colour vs colour, vs mono).

    python benchmarks/color_transfer.py [--out runs/bench/color_transfer] [--workers 2]
"""

from __future__ import annotations

import argparse

from _common import run_study, summary_table

from fimvision.study.report import paired_comparison

LEVELS = ["color", "color_bgnorm", "color_bgnorm_tint", "mono"]
SHOWN = ["n_pairs", "mean_diff", "sd_diff", "d_z", "p_ttest", "p_wilcoxon", "verdict"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench/color_transfer")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    results = run_study("configs/study/color_transfer.yaml", args.out, workers=args.workers)
    results = results[results["stage"] == "main"]
    print(summary_table(results, "input", LEVELS, "color", ["test_acc", "test_f1_macro"], ["fold", "seed"]))
    for a, b in (("color_bgnorm", "color"), ("color_bgnorm", "mono"), ("color_bgnorm_tint", "mono")):
        table = paired_comparison(results, factor="input", a=a, b=b, pair_on=("fold", "seed"), within=())
        print(f"\n{a} vs {b} (test_acc, paired on fold and seed):")
        print(table[SHOWN].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    per_fold = results.pivot_table(index="fold", columns="input", values="test_acc", aggfunc="mean")
    print("\nmean test accuracy per held-out antibody (fold):")
    print(per_fold[[c for c in LEVELS if c in per_fold]].to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
