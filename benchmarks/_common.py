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
