"""Synthetic particles written as a VisualSpreadsheet run and read back: known truth end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fimvision.curation.collages import find_tiles, lst_boxes
from fimvision.curation.flowcam import FlowCamOptions, curate_flowcam, find_run, read_cla, read_ctx, read_lst
from fimvision.curation.flowcam_writer import write_flowcam_run, write_flowcam_runs
from fimvision.errors import CurationError
from fimvision.imageio import read_image


@pytest.fixture(scope="module")
def export(synthetic_particles, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flowcam") / "export"
    write_flowcam_runs(out, synthetic_particles, per="sample", progress=False)
    return out


def test_runs_and_files(export, synthetic_particles):
    samples = sorted({p.sample for p in synthetic_particles})
    assert sorted(p.name for p in export.iterdir() if p.is_dir()) == samples
    runs = pd.read_csv(export / "runs.csv")
    assert runs["run"].tolist() == list(dict.fromkeys(p.sample for p in synthetic_particles))
    assert all(run.startswith(group) for run, group in zip(runs["run"], runs["group"], strict=True))
    run = find_run(export / samples[0])
    assert run.csv and run.cla and run.ctx
    assert (run.folder / f"{run.name}_000001.tif").is_file() and (run.folder / f"{run.name}_000001_bin.tif").is_file()
    assert read_ctx(run.ctx).cal_const_um_per_px == pytest.approx(0.5544)


def test_same_layout_as_the_real_export(export, vs4_runs):
    synthetic = find_run(next(p for p in export.iterdir() if p.is_dir()))
    real = find_run(vs4_runs[0])
    ours, theirs = read_lst(synthetic.lst), read_lst(real.lst)
    assert (ours.version, ours.fields, ours.types) == (theirs.version, theirs.fields, theirs.types)
    assert synthetic.csv.read_text().splitlines()[0] == real.csv.read_text().splitlines()[0]


def test_round_trip_gives_identical_crops_and_labels(export, synthetic_particles, tmp_path):
    runs = sorted(p for p in export.iterdir() if p.is_dir())
    summary = curate_flowcam(runs, tmp_path / "ds",
                             FlowCamOptions(group_csv=export / "runs.csv", masks=True, progress=False))
    assert summary.written == len(synthetic_particles) and len(summary.skipped) == 0
    manifest = pd.read_csv(tmp_path / "ds" / "manifest.csv", keep_default_na=False).set_index(["run", "particle_id"])
    number: dict[str, int] = {}
    for particle in synthetic_particles:
        number[particle.sample] = number.get(particle.sample, 0) + 1  # ids are 1..N in writing order
        row = manifest.loc[(particle.sample, number[particle.sample])]
        assert np.array_equal(read_image(tmp_path / "ds" / row["image"]), particle.image)
        assert np.array_equal(read_image(tmp_path / "ds" / row["mask"]) > 0, particle.mask)
        assert (row["label"], row["group"], row["sample"]) == (particle.label, particle.group, particle.sample)
        for column in ("esd_um", "circularity", "aspect_ratio"):
            assert row[column] == pytest.approx(particle.features[column], abs=6e-5), column
    counts = manifest["label"].value_counts().to_dict()
    assert counts == pd.Series([p.label for p in synthetic_particles]).value_counts().to_dict()


def test_cla_and_collage_tiles(export, synthetic_particles):
    for run_dir in sorted(p for p in export.iterdir() if p.is_dir())[::3]:
        run = find_run(run_dir)
        (classification,) = read_cla(run.cla)
        labels = [p.label for p in synthetic_particles if p.sample == run.name]
        assert {k: len(v) for k, v in classification.classes.items()} == pd.Series(labels).value_counts().to_dict()
        name = f"{run.name}_000001.tif"
        tiles = find_tiles(read_image(run.folder / name))
        assert {t.box for t in tiles.tiles} == set(lst_boxes(run.lst, name))


def test_byte_identical_when_written_twice(synthetic_particles, tmp_path):
    first = write_flowcam_run(tmp_path / "a" / "run", synthetic_particles[:10], name="run")
    second = write_flowcam_run(tmp_path / "b" / "run", synthetic_particles[:10], name="run")
    for suffix in (".lst", ".csv", ".cla", ".ctx", "_000001.tif", "_000001_bin.tif"):
        assert (first / f"run{suffix}").read_bytes() == (second / f"run{suffix}").read_bytes(), suffix
    with pytest.raises(CurationError, match="not empty"):
        write_flowcam_run(tmp_path / "a" / "run", synthetic_particles[:10])


def test_many_particles_fill_several_collages(synthetic_particles, tmp_path):
    largest = sorted(synthetic_particles, key=lambda p: -p.image.size)[:8]
    particles = largest * 80  # 640 large tiles: more than one 1292 x 964 collage holds
    run = write_flowcam_run(tmp_path / "big", particles, name="big")
    table = read_lst(run / "big.lst").frame
    assert len(table) == len(particles) and table["collage_file"].nunique() >= 2
    boxes = table.assign(x2=table.image_x + table.image_w, y2=table.image_y + table.image_h)
    assert boxes["x2"].max() <= 1292 and boxes["y2"].max() <= 964
    for name, rows in table.groupby("collage_file"):
        assert len(find_tiles(read_image(run / name)).tiles) == len(rows)


def test_features_are_the_same_in_the_folder_and_the_curated_flowcam_export(tool, tmp_path, capsys):
    """One features list means the same on synthetic data written as a folder and as a curated FlowCam export."""
    args = ["--antibodies", "1", "--per-class", "6", "--particles-per-vial", "3", "--seed", "5", "--workers", "1",
            "--no-progress"]
    assert tool("make_synthetic")(["--out", str(tmp_path / "folder"), *args]) == 0
    assert tool("make_synthetic")(["--out", str(tmp_path / "export"), "--format", "flowcam", *args]) == 0
    runs = sorted(str(p) for p in (tmp_path / "export").iterdir() if p.is_dir())
    assert tool("curate_flowcam")([*runs, "--out", str(tmp_path / "curated"), "--quiet",
                                   "--group-csv", str(tmp_path / "export" / "runs.csv")]) == 0
    capsys.readouterr()
    folder = pd.read_csv(tmp_path / "folder" / "manifest.csv", keep_default_na=False).sort_values("particle_id")
    curated = pd.read_csv(tmp_path / "curated" / "manifest.csv", keep_default_na=False)
    curated = curated.set_index(["run", "particle_id"])
    folder["key"] = list(zip(folder["sample"], folder.groupby("sample").cumcount() + 1, strict=True))  # ids 1..N a run
    assert len(folder) == len(curated) == 12
    columns = ("esd_um", "circularity", "aspect_ratio", "convexity", "edge_gradient", "avg_red", "avg_green", "avg_blue")
    for row in folder.itertuples():
        got = curated.loc[row.key]
        assert (got["label"], got["group"]) == (row.label, row.group)
        for column in columns:  # both written to 4 decimals from one measurement: equal
            assert got[column] == pytest.approx(getattr(row, column), abs=1e-9), (row.key, column)
        assert got["intensity"] == pytest.approx(row.mean_intensity, abs=5.1e-4)  # the folder writes 3 decimals
    assert curated["edge_gradient"].nunique() == 12 and curated["avg_red"].nunique() == 12
    # the synthetic summary's fluid volume imaged: particles / 10,000 a ml
    sizes = folder.groupby("sample").size()
    volumes = curated.reset_index().groupby("run")["volume_imaged_ml"].first()
    assert volumes.to_dict() == pytest.approx((sizes / 10_000).round(4).to_dict())
