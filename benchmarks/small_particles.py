#!/usr/bin/env python
"""Small particles: resize (default) vs keep_scale vs the crop-size feature on SYNTHETIC data, 3 seeds
(configs/study/small_particles.yaml through `fimvision-study`, resumable). Prints mean +- sd and the ratio
to resize in the same seed.

    python benchmarks/small_particles.py
"""

from __future__ import annotations

from _common import run_study, summary_table

if __name__ == "__main__":
    results = run_study("configs/study/small_particles.yaml", "runs/bench/small_particles")
    print(summary_table(results, "scale", ["resize", "keep_scale", "size_feature"], "resize",
                        ["test_acc", "test_balanced_acc", "test_f1_macro"], ["seed"]))
