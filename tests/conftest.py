"""Shared fixtures: tiny generated datasets and the real CLI, run in-process (imports are the slow part)."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHARED_DATA = REPO.parent / "shared" / "data"


def fast_args(root: Path, out: Path, image_size: int = 32) -> list[str]:
    """CLI overrides that make any config run in seconds on tiny data."""
    return [f"--data.init_args.root={root}", f"--data.init_args.image_size={image_size}",
            "--data.init_args.batch_size=8", "--data.init_args.num_workers=0",
            f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def run_cli(args: list[str]):
    """`fimvision ARGS` in this process: the real CLI, without paying its imports again. Returns the CLI."""
    from fimvision.cli import main

    return main([str(a) for a in args])


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny synthetic colour-FIM dataset: 3 antibodies x 2 classes x 16 particles in vials of 8."""
    from fimvision.data.synthetic import SyntheticConfig, write_dataset

    root = tmp_path_factory.mktemp("synthetic") / "data"
    write_dataset(root, SyntheticConfig(antibodies=3, per_class=16, particles_per_vial=8, seed=0), progress=False)
    return root
