"""Writing ``split`` and ``fold`` columns into a curated dataset (a new folder; the input is untouched).

The split logic is :mod:`fimvision.data.splits` (the one the data module uses), so a dataset split
here and one split on the fly at training time agree. Only labelled rows get a split; unlabelled
rows keep an empty one (supervised training leaves them out).

- ``stratified``: particles split at random, stratified by class (``random`` in fimvision.data;
  particles of one sample land on both sides, which leaks: use it knowingly).
- ``sample``: whole samples (vials) per split, stratified by their majority class (the default).
- ``group``: leave-one-group-out: ``fold`` is the index of the row's group (sorted), and the split
  holds out group ``--fold`` as the test set.
- ``kfold``: ``fold`` is each sample's fold (0..n_folds-1, stratified by class), and the split
  holds out fold ``--fold`` as the test set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fimvision.curation.output import Summary, copy_images, load_dataset
from fimvision.errors import CurationError, DataError
from fimvision.files import OutputFolder

STRATEGIES = {"stratified": "random", "sample": "sample", "group": "group", "kfold": "kfold"}


def split_frame(frame: pd.DataFrame, strategy: str = "sample", *, fold: int = 0, n_folds: int = 5,
                val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0) -> pd.DataFrame:
    """``frame`` with ``split`` (train/val/test, '' for unlabelled rows) and ``fold`` columns."""
    from fimvision.data.splits import assign_folds, assign_splits

    if strategy not in STRATEGIES:
        raise CurationError(f"unknown split strategy '{strategy}'", hint=f"use one of {', '.join(STRATEGIES)}")
    frame = frame.reset_index(drop=True).copy()
    labelled = frame["label"].astype(str) != ""
    if not labelled.any():
        raise CurationError("no labelled particle to split", hint="label the dataset first (curation tools take labels)")
    part = frame[labelled].reset_index(drop=True)
    if "line" not in part.columns:
        part["line"] = np.flatnonzero(labelled.to_numpy()) + 2
    for column in ("sample", "group"):
        if column in part.columns:
            part[column] = part[column].fillna("").astype(str)
    try:
        splits = assign_splits(part, STRATEGIES[strategy], fold=fold, n_folds=n_folds, val_fraction=val_fraction,
                               test_fraction=test_fraction, seed=seed)
        if strategy == "group":
            folds = np.unique(part["group"], return_inverse=True)[1]  # the group's index in sorted order
        elif strategy == "kfold":
            folds = assign_folds(part, n_folds, seed=seed)
        else:
            folds = np.full(len(part), -1)
    except DataError as err:  # the data module's message already names the column and the fix
        raise CurationError(str(err).rstrip(".")) from err
    frame["split"] = ""
    frame.loc[labelled.to_numpy(), "split"] = np.asarray(splits, dtype=object)
    frame["fold"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    if strategy in ("group", "kfold"):
        frame.loc[labelled.to_numpy(), "fold"] = folds.astype(int)
    return frame


def split_dataset(dataset: str | Path, out: str | Path, *, strategy: str = "sample", fold: int = 0, n_folds: int = 5,
                  val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0, overwrite: bool = False,
                  link: bool = False, progress: bool = True) -> Summary:
    """Copy ``dataset`` to ``out`` with ``split`` and ``fold`` columns (see the module docstring)."""
    root = Path(dataset).expanduser().resolve()
    frame = load_dataset(root)
    result = split_frame(frame, strategy, fold=fold, n_folds=n_folds, val_fraction=val_fraction,
                         test_fraction=test_fraction, seed=seed).drop(columns=["line"], errors="ignore")
    summary = Summary(tool="split_dataset", out=Path(out).expanduser().resolve())
    with OutputFolder(out, overwrite=overwrite, inputs=[root]) as tmp:
        result = copy_images(result, root, tmp, link=link, progress=progress)
        labelled = result[result["split"] != ""]
        table = pd.crosstab(labelled["label"], labelled["split"]).reindex(columns=["train", "val", "test"], fill_value=0)
        summary.details["strategy"] = f"{strategy} (fold {fold})" if strategy in ("group", "kfold") else strategy
        summary.details["particles per split"] = {s: int((labelled["split"] == s).sum()) for s in ("train", "val", "test")}
        summary.details["per class and split"] = "\n" + table.to_string()
        if "sample" in labelled.columns and (labelled["sample"] != "").all():
            leaks = labelled.groupby("sample")["split"].nunique()
            summary.details["samples on more than one side"] = int((leaks > 1).sum())  # > 0 only for stratified
        if strategy == "group":
            test = labelled["split"] == "test"
            shared = set(labelled.loc[test, "group"]) & set(labelled.loc[~test, "group"])
            summary.details["held-out groups also in train/val"] = len(shared)
        summary.finish(result, tmp)
    return summary
