"""Manifest validation: each kind of bad input gets its own message naming file, line and column."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from fimvision.data.manifest import load_manifest
from fimvision.errors import DataError


@pytest.fixture
def copy(synthetic_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(synthetic_root, root)
    return root


def edit(root, change):
    frame = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    change(frame)
    frame.to_csv(root / "manifest.csv", index=False)


def test_valid_manifest_loads_with_sorted_classes(synthetic_root):
    manifest = load_manifest(synthetic_root)
    assert manifest.classes == ["heat", "mechanical"]
    assert len(manifest.frame) == 3 * 2 * 16
    assert manifest.frame["line"].iloc[0] == 2  # line 1 is the header


def test_missing_column(copy):
    edit(copy, lambda f: f.drop(columns=["label"], inplace=True))
    with pytest.raises(DataError, match=r"missing required column\(s\) \['label'\]"):
        load_manifest(copy)


def test_missing_file_names_line_and_column(copy):
    frame = pd.read_csv(copy / "manifest.csv")
    (copy / frame["image"][4]).unlink()
    with pytest.raises(DataError, match=rf"line 6, column 'image': file '{frame['image'][4]}' not found"):
        load_manifest(copy)


def test_unknown_label(copy):
    edit(copy, lambda f: f.__setitem__("label", f["label"].where(f.index != 3, "oxidation")))
    with pytest.raises(DataError, match=r"line 5, column 'label': 'oxidation' is not one of classes"):
        load_manifest(copy, classes=["heat", "mechanical"])
    # Without a fixed class list the new label is simply a third class.
    assert load_manifest(copy).classes == ["heat", "mechanical", "oxidation"]


def test_classes_fix_the_order(synthetic_root):
    manifest = load_manifest(synthetic_root, classes=["mechanical", "heat"])
    assert manifest.classes == ["mechanical", "heat"]
    labels = manifest.frame["label"].tolist()
    assert [manifest.classes[t] for t in manifest.targets()] == labels


def test_empty_labels_are_unlabelled(copy):
    edit(copy, lambda f: f.__setitem__("label", f["label"].where(f.index % 4 != 0, "")))
    manifest = load_manifest(copy)
    assert (~manifest.labelled).sum() == 24
    assert manifest.targets()[0] == -1


def test_bad_split_value(copy):
    edit(copy, lambda f: f.__setitem__("split", ["train"] * (len(f) - 1) + ["holdout"]))
    with pytest.raises(DataError, match=r"column 'split': 'holdout' is not one of"):
        load_manifest(copy)


def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(tmp_path / "nowhere")
    with pytest.raises(DataError, match="has no manifest.csv"):
        load_manifest(tmp_path)
