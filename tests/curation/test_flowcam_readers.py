"""Readers of VisualSpreadsheet files (.lst, .csv, .ctx, .cla) on the real exports and damaged copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fimvision.curation.flowcam import find_run, read_cla, read_ctx, read_flowcam_csv, read_lst
from fimvision.curation.flowcam.formats import LST_NAMES, normalise_header
from fimvision.curation.flowcam.runs import derive_features
from fimvision.errors import CurationError


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _write(path: Path, lines: list[str], newline: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if newline else ""), encoding="utf-8")
    return path


def test_read_lst_017_real(vs4_runs):
    table = read_lst(find_run(vs4_runs[0]).lst)
    assert table.version == "017" and not table.legacy
    assert len(table.fields) == 65 and table.fields[:5] == ["id", "image_x", "image_y", "image_w", "image_h"]
    assert table.fields[-2:] == ["collage_file", "image_id"]
    frame = table.frame
    assert len(frame) == 1000
    first = frame.iloc[0]
    assert (first["id"], first["image_x"], first["image_y"], first["image_w"], first["image_h"]) == (1, 0, 0, 34, 28)
    assert first["esd_diameter"] == pytest.approx(8.5624)
    assert first["image_id"] == "C60339F4-9D66-4CC9-9EE1-5966639FC33C"
    assert first["collage_file"].endswith("_000001.tif")
    # 2 header lines + 65 field lines: the first particle is on line 68, the last on line 1067
    assert frame["line"].iloc[0] == 68 and frame["line"].iloc[-1] == 1067
    assert frame["id"].tolist() == list(range(1, 1001))


def test_read_lst_legacy_colon_separated(vs4_runs, tmp_path):
    frame = read_lst(find_run(vs4_runs[0]).lst).frame.head(20)
    columns = ["id", "image_x", "image_y", "image_w", "image_h", "esd_diameter", "collage_file", "image_id"]
    rows = [":".join(str(v) for v in row) for row in frame[columns].itertuples(index=False)]
    path = _write(tmp_path / "old.lst", ["012", *rows])

    table = read_lst(path)
    assert table.legacy and table.version == "012"
    # the first five take the 017 names by position; file and GUID columns are recognised
    assert table.fields[:5] == ["id", "image_x", "image_y", "image_w", "image_h"]
    assert table.fields[6:] == ["collage_file", "image_id"]
    assert table.frame["image_w"].tolist() == frame["image_w"].tolist()
    assert table.frame["line"].tolist() == list(range(2, 22))

    named = read_lst(path, legacy_fields=columns)
    assert named.frame["esd_diameter"].to_numpy() == pytest.approx(frame["esd_diameter"].to_numpy())
    with pytest.raises(CurationError, match="num-fields mismatch") as info:
        read_lst(path, legacy_fields=columns[:-1])
    assert info.value.line == 2


def test_truncated_lst_names_the_last_line(copy_run):
    run = find_run(copy_run(0))
    lines = _lines(run.lst)
    _write(run.lst, [*lines[:-1], lines[-1][: len(lines[-1]) // 2]], newline=False)
    with pytest.raises(CurationError, match="truncated") as info:
        read_lst(run.lst)
    assert info.value.line == 1067 and info.value.file == run.lst
    assert "re-export" in str(info.value) and str(run.lst) in str(info.value)

    table = read_lst(run.lst, skip_bad=True)
    assert len(table.frame) == 999 and [line for line, _ in table.bad_rows] == [1067]


def test_truncated_header(copy_run):
    run = find_run(copy_run(0))
    _write(run.lst, _lines(run.lst)[:30])
    with pytest.raises(CurationError, match="truncated .lst: num-fields is 65 but the file ends after 28"):
        read_lst(run.lst)


@pytest.mark.parametrize(("declared", "line", "message"), [
    (66, 68, "line 68 is not a 'name|type' line"),
    (64, 67, "one more 'name|type' line"),
])
def test_num_fields_header_mismatch(copy_run, declared, line, message):
    run = find_run(copy_run(0))
    lines = _lines(run.lst)
    lines[1] = f"num-fields|{declared}"
    _write(run.lst, lines)
    with pytest.raises(CurationError, match="num-fields mismatch") as info:
        read_lst(run.lst)
    assert info.value.line == line and message in str(info.value)


def test_num_fields_row_mismatch(copy_run):
    run = find_run(copy_run(0))
    lines = _lines(run.lst)
    lines[99] = lines[99].rsplit("|", 1)[0]  # line 100: one field short, in the middle of the file
    _write(run.lst, lines)
    with pytest.raises(CurationError, match="num-fields mismatch: the row has 64 fields, the header declares 65") as info:
        read_lst(run.lst)
    assert info.value.line == 100


def test_bad_number_names_line_and_column(copy_run):
    run = find_run(copy_run(0))
    lines = _lines(run.lst)
    values = lines[70].split("|")
    values[1] = "abc"
    lines[70] = "|".join(values)
    _write(run.lst, lines)
    with pytest.raises(CurationError, match="'abc' is not a number") as info:
        read_lst(run.lst)
    assert (info.value.line, info.value.column) == (71, "image_x")


@pytest.mark.parametrize(("index", "junk", "protist"), [(0, 87, 2), (1, 183, 8)])
def test_read_cla_real(vs4_runs, index, junk, protist):
    (classification,) = read_cla(find_run(vs4_runs[index]).cla)
    assert classification.name == "karla_protist_class_2"
    assert list(classification.classes) == ["Junk", "protist", "missed"]
    counts = {name: len(ids) for name, ids in classification.classes.items()}
    assert counts == {"Junk": junk, "protist": protist, "missed": 0}
    assert classification.classes["Junk"][:3] == ([4, 8, 9] if index == 0 else classification.classes["Junk"][:3])
    labels = classification.labels()
    assert len(labels) == junk + protist and all(1 <= pid <= 1000 for pid in labels)


def test_truncated_cla(copy_run):
    run = find_run(copy_run(0))
    _write(run.cla, _lines(run.cla)[:50])
    with pytest.raises(CurationError, match="truncated .cla") as info:
        read_cla(run.cla)
    assert info.value.line == 51


def test_read_ctx_real(vs4_runs):
    context = read_ctx(find_run(vs4_runs[0]).ctx)
    assert context.cal_const_um_per_px == pytest.approx(0.5544)
    assert (context.camera, context.magnification, context.flow_cell) == ("SONY_XCD_SC90CR", "10", "FC100")
    assert (context.software, context.software_version) == ("VisualSpreadsheet", "4.19.3")
    assert context.instrument() == "FlowCam SONY_XCD_SC90CR 10x FC100"
    assert context.sections["CaptureParameters"]["MinESD"] == "3.0000"


@pytest.mark.parametrize(("header", "column"), [
    ("Diameter (ESD)", "esd_um"), ("Diameter (ESD) (µm)", "esd_um"), ("Diameter (ESD) (um)", "esd_um"),
    ("Area (ABD) (µm²)", "area_abd_um2"), ("Volume (ESD) (µm³)", "volume_esd_um3"), ("Length (µm)", "length_um"),
    ("Elapsed Time (s)", "elapsed_time_s"), ("Circularity (Hu)", "circularity_hu"), ("Circularity", "circularity"),
    ("Ch2/Ch1 Ratio", "ch2_ch1_ratio"), ("Original Reference ID", "image_id"), ("Particle ID", "particle_id"),
    ("Average Red", "avg_red"), ("Aspect Ratio", "aspect_ratio"), ("Some New Feature (%)", "some_new_feature_pct"),
])  # fmt: skip
def test_normalise_header(header, column):
    assert normalise_header(header) == column


def test_read_csv_real_agrees_with_lst(vs4_runs):
    run = find_run(vs4_runs[1])
    csv = read_flowcam_csv(run.csv)
    lst = read_lst(run.lst).frame.rename(columns=LST_NAMES)
    assert len(csv) == 1000 and csv.columns.is_unique and len(csv.columns) == 71 + 1  # 71 columns (the data README says 72) + line
    assert csv["particle_id"].tolist() == lst["particle_id"].tolist()
    assert csv["image_id"].tolist() == lst["image_id"].tolist()
    for column in ("esd_um", "length_um", "width_um", "intensity", "avg_blue", "image_w", "image_h"):
        assert np.allclose(csv[column].to_numpy(float), lst[column].to_numpy(float)), column


def test_csv_with_unit_suffixes_reads_the_same(vs4_runs, tmp_path):
    run = find_run(vs4_runs[0])
    lines = run.csv.read_text(encoding="utf-8").splitlines()
    units = {"Diameter (ESD)": "Diameter (ESD) (µm)", "Length": "Length (µm)", "Area (ABD)": "Area (ABD) (µm²)",
             "Elapsed Time": "Elapsed Time (s)"}
    header = [units.get(h, h) for h in lines[0].split(",")]
    newer = _write(tmp_path / "newer.csv", ["Export,VisualSpreadsheet 6", ",".join(header), *lines[1:]])
    old, new = read_flowcam_csv(run.csv), read_flowcam_csv(newer)
    assert list(new.columns) == list(old.columns)
    pd.testing.assert_frame_equal(new.drop(columns="line"), old.drop(columns="line"))
    assert new["line"].iloc[0] == 3  # metadata line, header, then the first particle


def test_features_derived_without_csv_match_visualspreadsheet(vs4_runs):
    for run_dir in vs4_runs:
        run = find_run(run_dir)
        derived = derive_features(read_lst(run.lst).frame.rename(columns=LST_NAMES))
        csv = read_flowcam_csv(run.csv)
        for column in ("aspect_ratio", "circularity", "transparency"):
            difference = np.abs(derived[column].to_numpy(float) - csv[column].to_numpy(float))
            assert difference.max() <= 1.5e-4, (run.name, column, difference.max())
