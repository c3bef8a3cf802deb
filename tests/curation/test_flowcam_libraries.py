"""VisualSpreadsheet class libraries (.flb): written by the FlowCam-format writer, curated like runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fimvision.curation.flowcam import FlowCamOptions, curate_flowcam, find_inputs, read_lst
from fimvision.curation.flowcam_writer import write_flowcam_library
from fimvision.errors import CurationError
from fimvision.imageio import read_image

N_FIELDS = 65  # the .lst 017 layout: particle rows start on line 2 + 65 + 1


def _manifest(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "manifest.csv", keep_default_na=False)


@pytest.fixture(scope="module")
def by_label(synthetic_particles) -> dict[str, list]:
    particles: dict[str, list] = {}
    for p in synthetic_particles:
        particles.setdefault(p.label, []).append(p)
    return particles


@pytest.fixture(scope="module")
def class_folders(by_label, tmp_path_factory) -> Path:
    """``classes/<class>/lib.flb``: a folder of class folders each holding a library (one file name twice)."""
    root = tmp_path_factory.mktemp("libraries") / "classes"
    for label, particles in by_label.items():
        write_flowcam_library(root / label, particles, name="lib")
    return root


def test_writer_gives_an_flb_with_the_lst_layout_and_lib_images_collages(class_folders, by_label):
    folder = class_folders / "heat"
    assert sorted(p.name for p in folder.iterdir()) == ["lib.flb", "lib_lib_images_000001.tif",
                                                         "lib_lib_images_000001_bin.tif"]
    table = read_lst(folder / "lib.flb")
    assert table.version == "017" and len(table.fields) == N_FIELDS
    assert len(table.frame) == len(by_label["heat"]) and set(table.frame["collage_file"]) == {"lib_lib_images_000001.tif"}


def test_libraries_in_class_folders_give_exact_crops_labelled_by_folder(class_folders, by_label, tmp_path):
    summary = curate_flowcam([class_folders], tmp_path / "ds", FlowCamOptions(masks=True, progress=False))
    assert summary.written == sum(map(len, by_label.values())) and len(summary.skipped) == 0
    assert set(summary.details["libraries"]) == {"heat_lib", "mechanical_lib"}  # one file name: told apart
    manifest = _manifest(tmp_path / "ds").set_index(["run", "particle_id"])
    for label, particles in by_label.items():
        for pid, particle in enumerate(particles, start=1):
            row = manifest.loc[(f"{label}_lib", pid)]
            assert row["label"] == label and row["sample"] == f"{label}_lib"
            assert np.array_equal(read_image(tmp_path / "ds" / row["image"]), particle.image)
            assert np.array_equal(read_image(tmp_path / "ds" / row["mask"]) > 0, particle.mask)
            assert row["avg_red"] == pytest.approx(particle.features["avg_red"], abs=6e-5)
    assert set(manifest["volume_imaged_ml"]) == {""}  # a library has no run summary


def test_library_class_from_the_file_name(by_label, tmp_path):
    write_flowcam_library(tmp_path / "export1", by_label["heat"][:4], name="heat")
    write_flowcam_library(tmp_path / "export2", by_label["mechanical"][:3], name="mechanical")
    inputs = [tmp_path / "export1" / "heat.flb", tmp_path / "export2"]
    curate_flowcam(inputs, tmp_path / "by_file", FlowCamOptions(library_class="file", progress=False))
    assert _manifest(tmp_path / "by_file")["label"].value_counts().to_dict() == {"heat": 4, "mechanical": 3}
    curate_flowcam(inputs, tmp_path / "by_folder", FlowCamOptions(progress=False))
    assert _manifest(tmp_path / "by_folder")["label"].value_counts().to_dict() == {"export1": 4, "export2": 3}
    assert [r.library_class for r in find_inputs(inputs, "file")] == ["heat", "mechanical"]
    with pytest.raises(CurationError, match="unknown library class source 'name'"):
        curate_flowcam(inputs, tmp_path / "bad", FlowCamOptions(library_class="name", progress=False))


def test_missing_library_collage_is_an_error_or_skipped(by_label, tmp_path, tool, capsys):
    classes = tmp_path / "classes"
    write_flowcam_library(classes / "heat", by_label["heat"][:5], name="heat")
    write_flowcam_library(classes / "mechanical", by_label["mechanical"][:4], name="mechanical")
    flb = classes / "mechanical" / "mechanical.flb"
    (classes / "mechanical" / "mechanical_lib_images_000001.tif").unlink()
    with pytest.raises(CurationError, match="collage 'mechanical_lib_images_000001.tif' named here is missing "
                                            "from the library folder") as info:
        curate_flowcam([classes], tmp_path / "out", FlowCamOptions(progress=False))
    assert info.value.file == flb and info.value.line == 2 + N_FIELDS + 1 and "--skip-bad" in str(info.value)
    assert not (tmp_path / "out").exists()

    assert tool("curate_flowcam")([str(classes), "--out", str(tmp_path / "out"), "--skip-bad", "--quiet"]) == 0
    assert "wrote 5 particle(s)" in capsys.readouterr().out
    assert _manifest(tmp_path / "out")["label"].tolist() == ["heat"] * 5
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert skipped["source"].tolist() == [str(flb)] * 4 and skipped["particle"].tolist() == [1, 2, 3, 4]
    assert set(skipped["reason"]) == {"missing collage mechanical_lib_images_000001.tif"}


def test_a_folder_without_runs_or_libraries_is_refused(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(CurationError, match="no .lst file in the run folder") as info:
        curate_flowcam([tmp_path / "empty"], tmp_path / "out", FlowCamOptions(progress=False))
    assert ".flb" in str(info.value)
