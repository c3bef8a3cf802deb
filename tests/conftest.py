"""Shared fixtures: tiny generated datasets. Helpers to import live in fimtest.py."""

from __future__ import annotations

import os
import shutil
import sys

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from fimtest import BIN, REPO, fit_cmd, run  # noqa: E402

# Two pytest-xdist workers share the two cores: one thread each, no oversubscription.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


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


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    """A working folder with a tiny dataset written by the real tools/make_synthetic.py."""
    work = tmp_path_factory.mktemp("entry")
    result = run([sys.executable, REPO / "tools" / "make_synthetic.py", "--out", "data", "--antibodies", "2",
                  "--per-class", "16", "--particles-per-vial", "8", "--no-progress"], work)
    assert result.returncode == 0 and "total: 64 particles" in result.stdout, result.stderr
    return work


@pytest.fixture(scope="session")
def fitted(work) -> Path:
    """The run folder of one real `fimvision fit` (2 epochs), run through its `main` in this process (the installed
    script's own runs: test_runs.py)."""
    from fimtest import run_main

    here = Path.cwd()
    os.chdir(work)
    try:
        assert run_main(fit_cmd("--trainer.max_epochs=2", save_dir="fitted")[1:]) == 0
    finally:
        os.chdir(here)
    return work / "fitted" / "lightning_logs" / "version_0"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """W&B in offline mode: runs are written to folders (``offline-run-*``), nothing goes to a server."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def agent_env(offline, monkeypatch, tmp_path):
    """The environment a W&B sweep agent gives its runs; restored afterwards (the agent writes into os.environ)."""
    monkeypatch.chdir(REPO)  # sweep files name configs relative to the repository, as `wandb agent` runs there
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")  # an agent runs in the activated venv
    monkeypatch.setenv("WANDB_SWEEP_ID", "localtest")
    monkeypatch.setenv("WANDB_RUN_ID", "placeholder")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", "placeholder")
