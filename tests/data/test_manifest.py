"""Manifest validation: each kind of bad input gets its own message naming file, line and column."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from fimtest import rewrite_manifest

from fimvision.data.manifest import load_manifest
from fimvision.errors import DataError


def test_valid_manifest_loads_with_sorted_classes(synthetic_root):
    manifest = load_manifest(synthetic_root)
    assert manifest.classes == ["heat", "mechanical"]
    assert len(manifest.frame) == 3 * 2 * 16
    assert manifest.frame["line"].iloc[0] == 2  # line 1 is the header


def test_missing_column(dataset_copy):
    rewrite_manifest(dataset_copy, lambda f: f.drop(columns=["label"]))
    with pytest.raises(DataError, match=r"missing required column\(s\) \['label'\]"):
        load_manifest(dataset_copy)


def test_missing_file_names_line_and_column(dataset_copy):
    frame = pd.read_csv(dataset_copy / "manifest.csv")
    (dataset_copy / frame["image"][4]).unlink()
    with pytest.raises(DataError, match=rf"line 6, column 'image': file '{frame['image'][4]}' not found"):
        load_manifest(dataset_copy)


def test_unknown_label(dataset_copy):
    rewrite_manifest(dataset_copy, lambda f: f.assign(label=f["label"].where(f.index != 3, "oxidation")))
    with pytest.raises(DataError, match=r"line 5, column 'label': 'oxidation' is not one of classes"):
        load_manifest(dataset_copy, classes=["heat", "mechanical"])
    # Without a fixed class list the new label is simply a third class.
    assert load_manifest(dataset_copy).classes == ["heat", "mechanical", "oxidation"]


def test_classes_fix_the_order(synthetic_root):
    manifest = load_manifest(synthetic_root, classes=["mechanical", "heat"])
    assert manifest.classes == ["mechanical", "heat"]
    labels = manifest.frame["label"].tolist()
    assert [manifest.classes[t] for t in manifest.targets()] == labels


def test_empty_labels_are_unlabelled(dataset_copy):
    rewrite_manifest(dataset_copy, lambda f: f.assign(label=f["label"].where(f.index % 4 != 0, "")))
    manifest = load_manifest(dataset_copy)
    assert (~manifest.labelled).sum() == 24
    assert manifest.targets()[0] == -1


def test_bad_split_value(dataset_copy):
    rewrite_manifest(dataset_copy, lambda f: f.assign(split=["train"] * (len(f) - 1) + ["holdout"]))
    with pytest.raises(DataError, match=r"column 'split': 'holdout' is not one of"):
        load_manifest(dataset_copy)


def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(tmp_path / "nowhere")
    with pytest.raises(DataError, match="has no manifest.csv"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("bad", ["../outside.png", "/tmp/abs.png", "images/../../x.png", "C:\\data\\x.png"])
def test_paths_outside_the_folder_are_refused(dataset_copy, bad):
    rewrite_manifest(dataset_copy, lambda f: f.assign(image=f["image"].where(f.index != 2, bad)))
    with pytest.raises(DataError, match=rf"line 4, column 'image': '{re.escape(bad)}' points outside the dataset"):
        load_manifest(dataset_copy)


def test_paths_outside_the_folder_allowed_on_request(dataset_copy, tmp_path):
    frame = rewrite_manifest(dataset_copy, lambda f: f)
    moved = tmp_path / "elsewhere.png"
    (dataset_copy / frame["image"][0]).rename(moved)
    rewrite_manifest(dataset_copy, lambda f: f.assign(image=f["image"].where(f.index != 0, str(moved))))
    assert load_manifest(dataset_copy, allow_outside_paths=True).image_paths()[0] == moved


def test_duplicate_image_rows_name_both_lines(dataset_copy):
    rewrite_manifest(dataset_copy, lambda f: f.assign(image=f["image"].where(f.index != 6, f["image"][1])))
    with pytest.raises(DataError, match=r"lines 3 and 8, column 'image': the same image .* is listed twice"):
        load_manifest(dataset_copy)


def test_a_tiny_class_next_to_a_similar_name_is_flagged(dataset_copy, caplog):
    rewrite_manifest(dataset_copy, lambda f: f.assign(label=f["label"].where(f.index != 0, "heaat")))
    with caplog.at_level("WARNING"):
        manifest = load_manifest(dataset_copy)
    assert manifest.classes == ["heaat", "heat", "mechanical"]  # a warning, not an error: it may be real
    assert "line(s) [2], column 'label': 'heaat' has 1 particle; did you mean 'heat' (47 particles)?" in caplog.text
