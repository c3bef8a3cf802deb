"""Arguments shared by the curation ``tools/`` scripts (their parser and exit codes: :mod:`fimvision.console`)."""

from __future__ import annotations

import argparse


def add_output_arguments(parser: argparse.ArgumentParser, *, what: str = "dataset folder to write") -> None:
    """``--out`` (required), ``--overwrite`` and ``--quiet``."""
    parser.add_argument("--out", required=True, help=f"{what} (new, or empty; written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
