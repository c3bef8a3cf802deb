"""split_dataset (split / fold columns) and merge_datasets on small synthetic datasets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fimvision.curation.merge import merge_datasets
from fimvision.curation.splits import split_dataset
from fimvision.errors import CurationError


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    from fimvision.data.synthetic import SyntheticConfig, write_dataset

    root = tmp_path_factory.mktemp("synthetic") / "ds"
    write_dataset(root, SyntheticConfig(antibodies=3, per_class=24, particles_per_vial=4, seed=5), progress=False)
    frame = pd.read_csv(root / "manifest.csv", keep_default_na=False)
    frame.loc[frame.index % 10 == 0, "label"] = ""  # some unclassified particles, as real exports have
    frame.to_csv(root / "manifest.csv", index=False)
    return root


def _read(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "manifest.csv", keep_default_na=False, dtype={"sample": str, "group": str})


def test_sample_split_keeps_vials_together(labelled, tmp_path, snapshot):
    before = snapshot(labelled)
    summary = split_dataset(labelled, tmp_path / "out", strategy="sample", seed=1)
    assert snapshot(labelled) == before
    frame = _read(tmp_path / "out")
    tagged = frame[frame["label"] != ""]
    assert set(tagged["split"]) == {"train", "val", "test"}
    assert (frame.loc[frame["label"] == "", "split"] == "").all()  # unlabelled rows get no split
    assert tagged.groupby("sample")["split"].nunique().max() == 1  # no vial on two sides
    assert summary.details["samples on more than one side"] == 0
    for image in frame["image"]:
        assert (tmp_path / "out" / image).is_file()
    from fimvision.data.manifest import load_manifest

    assert set(load_manifest(tmp_path / "out").frame["split"]) == {"train", "val", "test", ""}


def test_leave_one_group_out(labelled, tmp_path):
    summary = split_dataset(labelled, tmp_path / "out", strategy="group", fold=1)
    assert summary.details["held-out groups also in train/val"] == 0
    tagged = _read(tmp_path / "out").query("label != ''")
    assert set(tagged.loc[tagged["split"] == "test", "group"]) == {"ab2"}
    assert "ab2" not in set(tagged.loc[tagged["split"] != "test", "group"])
    assert tagged.groupby("group")["fold"].first().astype(int).to_dict() == {"ab1": 0, "ab2": 1, "ab3": 2}
    with pytest.raises(CurationError, match="fold 5 is out of range"):
        split_dataset(labelled, tmp_path / "bad", strategy="group", fold=5)
    assert not (tmp_path / "bad").exists()


def test_kfold_and_stratified(labelled, tmp_path):
    split_dataset(labelled, tmp_path / "k", strategy="kfold", n_folds=3, fold=2)
    tagged = _read(tmp_path / "k").query("label != ''").astype({"fold": int})
    assert set(tagged["fold"]) == {0, 1, 2}
    assert tagged.groupby("sample")["fold"].nunique().max() == 1
    assert (tagged.loc[tagged["fold"] == 2, "split"] == "test").all()
    assert (tagged.loc[tagged["fold"] != 2, "split"] != "test").all()

    split_dataset(labelled, tmp_path / "s", strategy="stratified")
    stratified = _read(tmp_path / "s")
    assert (stratified["fold"] == "").all() and set(stratified.query("label != ''")["split"]) == {"train", "val", "test"}


def test_merge_with_groups(labelled, tmp_path, snapshot):
    other = tmp_path / "second" / "ds"  # the same folder name: the merge must keep them apart
    split_dataset(labelled, other, strategy="sample")
    before = snapshot(labelled)
    summary = merge_datasets([labelled, other], tmp_path / "merged", groups=["mAb1", "mAb2"], progress=False)
    assert snapshot(labelled) == before
    merged = _read(tmp_path / "merged")
    n = len(_read(labelled))
    assert summary.written == len(merged) == 2 * n
    assert merged["source"].tolist() == ["ds"] * n + ["ds_2"] * n
    assert merged.groupby("source")["group"].unique().map(list).to_dict() == {"ds": ["mAb1"], "ds_2": ["mAb2"]}
    assert merged["image"].str.startswith(("ds/", "ds_2/")).all() and merged["image"].is_unique
    assert all((tmp_path / "merged" / image).is_file() for image in merged["image"])
    assert (merged.loc[merged["source"] == "ds", "split"] == "").all()  # union of columns: empty where absent
    with pytest.raises(CurationError, match="1 group name"):
        merge_datasets([labelled, other], tmp_path / "m2", groups=["x"], progress=False)
