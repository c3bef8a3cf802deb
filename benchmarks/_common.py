"""Shared set-up for the benchmark scripts: a synthetic dataset in a cache folder."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path  # noqa: E402

from fimvision.data.synthetic import SyntheticConfig, write_dataset  # noqa: E402

CACHE = Path(os.environ.get("FIMVISION_BENCH_DATA", "datasets/bench"))


def synthetic_dataset(antibodies: int = 4, per_class: int = 250, seed: int = 0) -> Path:
    """A synthetic dataset for benchmarks, generated once and reused."""
    root = CACHE / f"synthetic-{antibodies}x{per_class}-s{seed}"
    if not (root / "manifest.csv").is_file():
        write_dataset(root, SyntheticConfig(antibodies=antibodies, per_class=per_class, seed=seed), progress=True)
    return root


def run_study(config: str | Path, out: str | Path, *, workers: int = 2, only: list[str] | None = None):
    """`fimvision-study run` (the installed command: resumable, so a rerun only does what is missing);
    returns its results.csv as a frame."""
    import subprocess
    import sys

    import pandas as pd

    command = [str(Path(sys.executable).parent / "fimvision-study"), "run", "--config", str(config), "--out", str(out),
               "--workers", str(workers), *(["--only", *only] if only else [])]
    subprocess.run(command, check=True)
    return pd.read_csv(Path(out) / "results.csv")


def summary_table(results, factor: str, levels: list[str], reference: str, metrics: list[str],
                  pair_on: list[str]) -> str:
    """A markdown table: each level of ``factor`` as mean +- sd of each metric over the runs, and its ratio to
    ``reference`` paired on ``pair_on`` (the same seed and fold), mean over the pairs."""
    lines = ["| " + factor + " | n | " + " | ".join(metrics) + " | " + " | ".join(f"{m} / {reference}" for m in metrics)
             + " |", "|---" * (2 + 2 * len(metrics)) + "|"]
    ref = results[results[factor] == reference].set_index(pair_on)
    for level in levels:
        part = results[results[factor] == level]
        if part.empty:
            continue
        cells = [f"{part[m].mean():.3f} ± {part[m].std():.3f}" for m in metrics]
        mine = part.set_index(pair_on)
        ratios = [f"{(mine[m] / ref[m]).dropna().mean():.3f}" for m in metrics]
        lines.append(f"| {level} | {len(part)} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)
