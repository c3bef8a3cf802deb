#!/usr/bin/env python
"""Label efficiency: 10 %, 25 % and 100 % of the training labels, from scratch or fine-tuned from SimCLR
pretrained on all training-split particles, SYNTHETIC data, 3 seeds (configs/study/ssl_label_efficiency.yaml
through `fimvision-study`, resumable). Prints mean +- sd per label share and the ratio SimCLR / scratch.

    python benchmarks/ssl_label_efficiency.py
"""

from __future__ import annotations

from _common import run_study, summary_table

if __name__ == "__main__":
    results = run_study("configs/study/ssl_label_efficiency.yaml", "runs/bench/ssl_label_efficiency")
    results = results[results["stage"] == "main"]
    for share in sorted(results["labels"].unique()):
        print(f"\n{share:.0%} of the training labels (ratio: paired to scratch, same seed)")
        print(summary_table(results[results["labels"] == share], "init", ["scratch", "simclr"], "scratch",
                            ["test_acc", "test_f1_macro"], ["seed"]))
