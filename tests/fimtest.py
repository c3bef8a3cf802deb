"""Helpers the tests import: paths, fast CLI overrides and the real CLI run in-process.

(A module of its own: several folders have a conftest.py, so `from conftest import` is ambiguous.)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

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


def rewrite_manifest(root: Path, change) -> pd.DataFrame:
    """Rewrite ``root/manifest.csv`` as ``change(frame)`` (text as read, empty cells kept); returns the new frame."""
    frame = change(pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False))
    frame.to_csv(root / "manifest.csv", index=False)
    return frame
