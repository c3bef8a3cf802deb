"""Curating VisualSpreadsheet runs: the real exports, labels and groups, and damaged or clashing input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fimvision.curation.flowcam import FlowCamOptions, curate_flowcam, find_run, read_cla, read_lst
from fimvision.errors import CurationError
from fimvision.imageio import read_image


def _manifest(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "manifest.csv", keep_default_na=False)


def test_every_particle_cropped_exactly(curated_vs4, vs4_runs):
    manifest = _manifest(curated_vs4)
    assert len(manifest) == 2000 and manifest["image"].is_unique
    for run_dir in vs4_runs:
        run = find_run(run_dir)
        lst = read_lst(run.lst).frame
        rows = manifest[manifest["run"] == run.name].set_index("particle_id")
        assert sorted(rows.index) == lst["id"].tolist()  # every particle of the .lst is written
        for p in lst.itertuples():  # every crop's size equals image_w x image_h (PNG header only: fast)
            with Image.open(curated_vs4 / rows.loc[p.id, "image"]) as crop:
                assert crop.size == (p.image_w, p.image_h) and crop.mode == "RGB"
        for collage_name, particles in lst.groupby("collage_file"):
            collage = np.asarray(Image.open(run.folder / collage_name))
            for p in particles.iloc[::7].itertuples():  # pixels: every 7th particle of each collage
                row = rows.loc[p.id]
                box = np.s_[p.image_y : p.image_y + p.image_h, p.image_x : p.image_x + p.image_w]
                assert np.array_equal(read_image(curated_vs4 / row["image"]), collage[box])
                assert (row["image_w"], row["image_h"]) == (p.image_w, p.image_h)


def test_masks_are_the_bin_tif_slices(small_run, tmp_path):
    run = find_run(small_run(1, 150))
    curate_flowcam([run.folder], tmp_path / "out", FlowCamOptions(masks=True, progress=False))
    manifest = _manifest(tmp_path / "out").set_index("particle_id")
    masks = np.asarray(Image.open(run.folder / f"{run.name}_000001_bin.tif"))
    for p in read_lst(run.lst).frame.itertuples():
        mask = read_image(tmp_path / "out" / manifest.loc[p.id, "mask"])
        expected = masks[p.image_y : p.image_y + p.image_h, p.image_x : p.image_x + p.image_w] > 0
        assert set(np.unique(mask)) <= {0, 255} and np.array_equal(mask > 0, expected) and expected.any()


def test_class_counts_equal_the_cla(curated_vs4, vs4_runs):
    manifest = _manifest(curated_vs4)
    for run_dir in vs4_runs:
        run = find_run(run_dir)
        (classification,) = read_cla(run.cla)
        rows = manifest[manifest["run"] == run.name]
        counts = rows["label"].value_counts().to_dict()
        expected = {name: len(ids) for name, ids in classification.classes.items() if ids}
        assert {k: v for k, v in counts.items() if k} == expected
        assert counts[""] == 1000 - sum(expected.values())  # unclassified kept with an empty label
        by_id = rows.set_index("particle_id")["label"]
        assert all(by_id[pid] == name for name, ids in classification.classes.items() for pid in ids)
    assert _manifest(curated_vs4)["label"].value_counts().to_dict() == {"": 1720, "Junk": 270, "protist": 10}


def test_manifest_columns_and_values(curated_vs4, vs4_runs):
    manifest = _manifest(curated_vs4)
    assert list(manifest.columns[:8]) == ["image", "label", "particle_id", "image_id", "run", "sample", "group",
                                          "instrument"]
    for column in ("esd_um", "length_um", "width_um", "aspect_ratio", "circularity", "transparency", "intensity",
                   "sigma_intensity", "avg_red", "avg_green", "avg_blue", "edge_gradient", "collage_file"):
        assert column in manifest.columns, column
    first = manifest[(manifest["run"] == vs4_runs[0].name) & (manifest["particle_id"] == 1)].iloc[0]
    assert first["image_id"] == "C60339F4-9D66-4CC9-9EE1-5966639FC33C"
    assert first["esd_um"] == pytest.approx(8.5624) and first["circularity"] == pytest.approx(0.5005)
    assert first["transparency"] == pytest.approx(0.7966) and first["avg_blue"] == pytest.approx(206.9677)
    assert set(manifest["group"]) == {"protist-study"}
    assert set(manifest["sample"]) == {r.name for r in vs4_runs} == set(manifest["run"])
    assert set(manifest["instrument"]) == {"FlowCam SONY_XCD_SC90CR 10x FC100"}

    summary = json.loads((curated_vs4 / "curation_summary.json").read_text())
    assert summary["written"] == 2000 and summary["skipped"] == 0
    assert summary["classes"] == {"Junk": 270, "protist": 10, "": 1720}
    assert len(pd.read_csv(curated_vs4 / "skipped.csv")) == 0

    from fimvision.data.manifest import load_manifest

    loaded = load_manifest(curated_vs4)  # the training side reads what curation writes
    assert loaded.classes == ["Junk", "protist"] and len(loaded.frame) == 2000


def test_drop_unclassified_and_inputs_untouched(copy_run, tmp_path, snapshot):
    run = copy_run(0)
    before = snapshot(run)
    summary = curate_flowcam([run], tmp_path / "out", FlowCamOptions(drop_unclassified=True, progress=False))
    assert snapshot(run) == before
    manifest = _manifest(tmp_path / "out")
    assert len(manifest) == 89 and manifest["label"].value_counts().to_dict() == {"Junk": 87, "protist": 2}
    assert summary.skipped.reasons() == {"unclassified": 911}
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert len(skipped) == 911 and set(skipped["reason"]) == {"unclassified"}


def test_existing_output_is_refused_and_left_alone(small_run, tmp_path, snapshot):
    run = small_run(0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(CurationError, match="exists and is not empty") as info:
        curate_flowcam([run], out, FlowCamOptions(progress=False))
    assert "--overwrite" in str(info.value)
    assert snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary left behind

    curate_flowcam([run], out, FlowCamOptions(overwrite=True, progress=False))
    assert not (out / "notes.txt").exists() and len(_manifest(out)) == 40


def test_output_inside_the_input_is_refused(small_run):
    run = small_run(0)
    with pytest.raises(CurationError, match="overlaps the input"):
        curate_flowcam([run], run / "dataset", FlowCamOptions(progress=False))
    assert not (run / "dataset").exists()


def test_missing_collage(copy_run, tmp_path, snapshot):
    run = find_run(copy_run(0))
    (run.folder / f"{run.name}_000002.tif").unlink()
    with pytest.raises(CurationError, match="collage '.*_000002.tif' named here is missing") as info:
        curate_flowcam([run.folder], tmp_path / "out", FlowCamOptions(progress=False))
    assert info.value.file == run.lst and info.value.line == 68 + 784  # the first particle on that collage
    assert not (tmp_path / "out").exists()

    summary = curate_flowcam([run.folder], tmp_path / "out", FlowCamOptions(skip_bad=True, progress=False))
    assert summary.written == 784 and summary.skipped.reasons() == {"missing collage " + f"{run.name}_000002.tif": 216}
    assert len(_manifest(tmp_path / "out")) == 784


def test_row_outside_its_collage(copy_run, tmp_path):
    run = find_run(copy_run(0))
    lines = run.lst.read_text().splitlines()
    values = lines[71].split("|")  # line 72: particle 5
    assert values[0] == "5"
    values[1] = "1280"  # image_x + image_w now runs past the 1292 px collage
    lines[71] = "|".join(values)
    run.lst.write_text("\n".join(lines) + "\n")
    with pytest.raises(CurationError, match="particle 5: crop x=1280..") as info:
        curate_flowcam([run.folder], tmp_path / "out", FlowCamOptions(progress=False))
    assert info.value.line == 72 and "1292x964" in str(info.value)
    assert not (tmp_path / "out").exists()

    summary = curate_flowcam([run.folder], tmp_path / "out", FlowCamOptions(skip_bad=True, progress=False))
    assert summary.written == 999 and summary.skipped.reasons() == {"crop outside collage": 1}
    assert 5 not in set(_manifest(tmp_path / "out")["particle_id"])


def test_truncated_lst_stops_curation(copy_run, tmp_path):
    run = find_run(copy_run(1))
    text = run.lst.read_text()
    run.lst.write_text(text[: len(text) - 200])
    with pytest.raises(CurationError, match="truncated .lst") as info:
        curate_flowcam([run.folder], tmp_path / "out", FlowCamOptions(progress=False))
    assert info.value.line == 1067
    assert not (tmp_path / "out").exists()


def test_labels_from_class_folders(curated_vs4, vs4_runs, small_run, tmp_path):
    manifest = _manifest(curated_vs4)
    rows = manifest[manifest["run"] == vs4_runs[0].name].head(30)
    run = small_run(0, 60)
    export = tmp_path / "classes"
    for i, row in enumerate(rows.itertuples()):
        target = export / ("heat" if i % 3 else "mechanical") / f"{row.run}_{row.image_id}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(curated_vs4 / row.image, target)
    curate_flowcam([run], tmp_path / "out", FlowCamOptions(label_folders=export, progress=False))
    labelled = _manifest(tmp_path / "out").set_index("particle_id")["label"]
    assert labelled.value_counts().to_dict() == {"": 30, "heat": 20, "mechanical": 10}
    assert labelled[rows["particle_id"].iloc[0]] == "mechanical" and labelled[rows["particle_id"].iloc[1]] == "heat"

    clash = export / "heat" / f"{rows['run'].iloc[0]}_{rows['image_id'].iloc[0]}.png"
    shutil.copyfile(curated_vs4 / rows["image"].iloc[0], clash)
    with pytest.raises(CurationError, match="is in class 'mechanical' and in class 'heat'|is in class 'heat' and in"):
        curate_flowcam([run], tmp_path / "out2", FlowCamOptions(label_folders=export, progress=False))


def test_labels_and_groups_from_csv(small_run, tmp_path):
    runs = [small_run(0), small_run(1)]
    names = [r.name for r in runs]
    labels = tmp_path / "labels.csv"
    labels.write_text("run,particle_id,label\n" f"{names[0]},1,heat\n{names[0]},2,mechanical\n{names[1]},1,heat\n")
    groups = tmp_path / "groups.csv"
    groups.write_text(f"run,group,sample\n{names[0]},mAb1,vial-A\n{names[1]},mAb2,\n")
    curate_flowcam(runs, tmp_path / "out", FlowCamOptions(label_csv=labels, group_csv=groups, progress=False))
    manifest = _manifest(tmp_path / "out")
    key = manifest.set_index(["run", "particle_id"])
    assert (key.loc[(names[0], 1), "label"], key.loc[(names[0], 2), "label"], key.loc[(names[1], 1), "label"]) == (
        "heat", "mechanical", "heat")
    assert (manifest["label"] != "").sum() == 3  # the .cla is not used when a label CSV is given
    assert manifest.groupby("run")["group"].first().to_dict() == {names[0]: "mAb1", names[1]: "mAb2"}
    assert manifest.groupby("run")["sample"].first().to_dict() == {names[0]: "vial-A", names[1]: names[1]}

    ambiguous = tmp_path / "ambiguous.csv"
    ambiguous.write_text("particle_id,label\n1,heat\n")
    with pytest.raises(CurationError, match="no 'run' column"):
        curate_flowcam(runs, tmp_path / "out2", FlowCamOptions(label_csv=ambiguous, progress=False))
    partial = tmp_path / "partial.csv"
    partial.write_text(f"run,group\n{names[0]},mAb1\n")
    with pytest.raises(CurationError, match="no row for run") as info:
        curate_flowcam(runs, tmp_path / "out3", FlowCamOptions(group_csv=partial, progress=False))
    assert names[1] in str(info.value)


def test_monochrome_run_gives_one_channel_crops(small_run, tmp_path):
    run = find_run(small_run(0))
    for number in (1, 2):
        path = run.folder / f"{run.name}_{number:06d}.tif"
        Image.open(path).convert("L").save(path, compression="tiff_lzw")
    curate_flowcam([run.folder], tmp_path / "out", FlowCamOptions(progress=False))
    manifest = _manifest(tmp_path / "out")
    crop = read_image(tmp_path / "out" / manifest["image"].iloc[0])
    assert crop.ndim == 2 and crop.shape == (manifest["image_h"].iloc[0], manifest["image_w"].iloc[0])
    grey = np.asarray(Image.open(run.folder / f"{run.name}_000001.tif"))
    assert np.array_equal(crop, grey[0:28, 0:34])


def test_volume_imaged_from_the_run_summaries(curated_vs4, vs4_runs):
    manifest = _manifest(curated_vs4)
    volumes = manifest.groupby("run")["volume_imaged_ml"].agg(["min", "max"])
    assert volumes.loc[vs4_runs[0].name].tolist() == [0.1418, 0.1418]  # "Fluid Volume Imaged: 0.1418 ml"
    assert volumes.loc[vs4_runs[1].name].tolist() == [0.0971, 0.0971]


def test_volume_imaged_falls_back_to_the_summary_csv_and_is_empty_when_unknown(small_run, tmp_path):
    run = find_run(small_run(1, 5))
    (run.folder / f"{run.name}_run_summary.txt").unlink()
    curate_flowcam([run.folder], tmp_path / "csv", FlowCamOptions(progress=False))
    assert set(_manifest(tmp_path / "csv")["volume_imaged_ml"]) == {0.09713}  # "Sample Volume Imaged ml,0.09713"
    (run.folder / f"{run.name}_summary.csv").unlink()
    curate_flowcam([run.folder], tmp_path / "none", FlowCamOptions(progress=False))
    assert set(_manifest(tmp_path / "none")["volume_imaged_ml"]) == {""}


def test_unreadable_volume_imaged_names_the_file_and_line(small_run, tmp_path):
    run = find_run(small_run(0, 5))
    summary = run.folder / f"{run.name}_run_summary.txt"
    summary.write_text(summary.read_text().replace("Fluid Volume Imaged: 0.1418 ml", "Fluid Volume Imaged: n/a ml"))
    with pytest.raises(CurationError, match="fluid volume imaged .* is not a positive number of ml") as info:
        curate_flowcam([run.folder], tmp_path / "out", FlowCamOptions(progress=False))
    assert info.value.file == summary and info.value.line == 9 and "delete the summary" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_convexity_derived_from_the_lst_equals_visualspreadsheets(vs4_runs):
    from fimvision.curation.flowcam.runs import derive_features, read_run_table

    tables = [read_run_table(find_run(run_dir)) for run_dir in vs4_runs]  # with the .csv: VS's own Convexity
    for table in tables:
        derived = derive_features(table.drop(columns=["convexity"]))["convexity"]
        assert np.abs(derived - table["convexity"]).max() <= 1.0001e-4
        assert (table["convexity"] < 1).mean() > 0.3  # concave particles are common
    assert sum((t["convexity"] == 0).sum() for t in tables) == 3  # lines without hull area: 0, derived too
