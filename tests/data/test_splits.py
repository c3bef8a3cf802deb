"""Splits: no vial on both sides unless a random split is asked for; empty splits are errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fimvision.data.manifest import load_manifest
from fimvision.data.splits import assign_folds, assign_splits
from fimvision.errors import DataError


@pytest.fixture
def frame(synthetic_root):
    return load_manifest(synthetic_root).frame


def sides(frame, splits, column):
    return pd.DataFrame({"unit": frame[column].to_numpy(), "split": splits}).groupby("unit")["split"].nunique()


@pytest.mark.parametrize("strategy", ["sample", "group", "kfold"])
def test_grouped_splits_keep_each_sample_on_one_side(frame, strategy):
    splits = assign_splits(frame, strategy, fold=1, n_folds=3, val_fraction=0.2, test_fraction=0.2)
    assert set(splits) == {"train", "val", "test"}
    assert sides(frame, splits, "sample").max() == 1


def test_leave_one_group_out_holds_out_exactly_one_group(frame):
    groups = sorted(frame["group"].unique())
    for fold, group in enumerate(groups):
        splits = assign_splits(frame, "group", fold=fold, val_fraction=0.25)
        assert set(frame.loc[splits == "test", "group"]) == {group}
        assert group not in set(frame.loc[splits != "test", "group"])


def test_random_split_is_stratified_and_may_mix_samples(frame):
    splits = assign_splits(frame, "random", val_fraction=0.25, test_fraction=0.25)
    table = pd.crosstab(frame["label"], splits)
    assert (table["test"] == 12).all() and (table["val"] == 12).all()  # 48 per class, a quarter each
    assert sides(frame, splits, "sample").max() > 1


def test_splits_are_deterministic_for_a_seed(frame):
    first = assign_splits(frame, "sample", seed=3)
    assert np.array_equal(first, assign_splits(frame, "sample", seed=3))
    assert not np.array_equal(first, assign_splits(frame, "sample", seed=4))


def test_folds_partition_samples(frame):
    folds = assign_folds(frame, 3)
    assert sorted(set(folds)) == [0, 1, 2]
    assert sides(frame, folds, "sample").max() == 1


def test_empty_split_is_an_error(frame):
    with pytest.raises(DataError, match=r"split 'predefined'.*left the 'test' set empty"):
        assign_splits(frame.assign(split=["train", "val"] * (len(frame) // 2)), "predefined")
    one_sample_each = frame.assign(sample=frame["label"])
    with pytest.raises(DataError, match="left the '(val|test)' set empty"):
        assign_splits(one_sample_each, "sample")


def test_missing_sample_column_is_explained(frame):
    with pytest.raises(DataError, match="split 'sample' needs a 'sample' column"):
        assign_splits(frame.drop(columns=["sample"]), "sample")
    with pytest.raises(DataError, match=r"fold 7 is out of range; the manifest has 3 groups"):
        assign_splits(frame, "group", fold=7)
