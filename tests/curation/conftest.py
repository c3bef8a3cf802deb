"""Fixtures for the curation tests: the real exports in ../shared/data and small synthetic particles."""

from __future__ import annotations

import hashlib
import runpy
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fimtest import REPO, SHARED_DATA

VS4 = SHARED_DATA / "flowcam-color-vs4"
MONO = SHARED_DATA / "flowcam-mono-collages"
TOOLS = REPO / "tools"


def _need(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"real instrument data not found at {path.resolve()} (only on the project's machines)")
    return path


@pytest.fixture(scope="session")
def vs4_runs() -> list[Path]:
    """The two real VisualSpreadsheet 4.19.3 colour runs."""
    runs = sorted(p for p in _need(VS4).iterdir() if p.is_dir())
    assert len(runs) == 2, runs
    return runs


@pytest.fixture(scope="session")
def mono_collages() -> Path:
    """The folder of three real monochrome collages."""
    return _need(MONO)


@pytest.fixture(scope="session")
def curated_vs4(vs4_runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both real runs curated once (shared by several tests; do not modify)."""
    from fimvision.curation.flowcam import FlowCamOptions, curate_flowcam

    out = tmp_path_factory.mktemp("vs4") / "dataset"
    curate_flowcam(vs4_runs, out, FlowCamOptions(group="protist-study", progress=False))
    return out


@pytest.fixture
def copy_run(vs4_runs: list[Path], tmp_path: Path) -> Callable[[int], Path]:
    """A writable copy of real run ``index`` (for tests that damage an export)."""

    def make(index: int = 0) -> Path:
        source = vs4_runs[index]
        target = tmp_path / "runs" / source.name
        shutil.copytree(source, target)
        for path in target.iterdir():
            path.chmod(0o644)
        return target

    return make


@pytest.fixture
def small_run(copy_run: Callable[[int], Path]) -> Callable[[int, int], Path]:
    """A writable copy of real run ``index`` whose .lst keeps only its first ``n`` particles (fast to curate)."""

    def make(index: int = 0, n: int = 40) -> Path:
        folder = copy_run(index)
        lst = next(folder.glob("*.lst"))
        lines = lst.read_text(encoding="utf-8").splitlines()
        header = 2 + int(lines[1].split("|")[1])
        lst.write_text("\n".join(lines[: header + n]) + "\n", encoding="utf-8")
        return folder

    return make


@pytest.fixture(scope="session")
def synthetic_particles() -> list:
    """A few dozen synthetic colour particles (2 antibodies x 2 classes x 2 vials)."""
    from fimvision.data.synthetic import SyntheticConfig, iter_particles

    return list(iter_particles(SyntheticConfig(antibodies=2, per_class=12, particles_per_vial=6, seed=3)))


def tree_state(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root``: (size, mtime in ns, sha1), to show that nothing changed."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            state[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns,
                                                  hashlib.sha1(path.read_bytes()).hexdigest())
    return state


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, tuple[int, int, str]]]:
    return tree_state


@pytest.fixture(scope="session")
def tool() -> Callable[[str], Callable]:
    """A tool script's ``main(argv)``, loaded in process (fast; the scripts only parse and call)."""
    cache: dict[str, Callable] = {}

    def load(name: str) -> Callable:
        if name not in cache:
            cache[name] = runpy.run_path(str(TOOLS / f"{name}.py"), run_name="tool_under_test")["main"]
        return cache[name]

    return load
