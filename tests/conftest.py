"""Shared fixtures: tiny generated datasets. Helpers to import live in fimtest.py."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny synthetic colour-FIM dataset: 3 antibodies x 2 classes x 16 particles in vials of 8."""
    from fimvision.data.synthetic import SyntheticConfig, write_dataset

    root = tmp_path_factory.mktemp("synthetic") / "data"
    write_dataset(root, SyntheticConfig(antibodies=3, per_class=16, particles_per_vial=8, seed=0), progress=False)
    return root


@pytest.fixture
def dataset_copy(synthetic_root, tmp_path) -> Path:
    """A private copy of the tiny synthetic dataset, for tests that break or rewrite it."""
    root = tmp_path / "ds"
    shutil.copytree(synthetic_root, root)
    return root
