"""Train/val/test splits of a manifest's labelled rows.

Particles of one vial are not independent, so every strategy except ``random`` keeps each ``sample``
on one side. Strategies:

- ``random``: stratified by class, particle by particle (leaks samples; only when asked for).
- ``sample``: grouped by ``sample``, stratified by the sample's majority class (the default).
- ``group``: leave-one-group-out: the ``fold``-th group (sorted, e.g. an antibody) is the test set;
  validation samples come from the other groups.
- ``kfold``: ``n_folds`` folds of samples, stratified by class; fold ``fold`` is the test set.
- ``predefined``: the manifest's ``split`` column (train/val/test).

Validation is drawn by sample too, except where the training part holds too few samples for that
(fewer than ``MIN_VAL_SAMPLES``, e.g. curated instrument runs, one sample a run): then one sample
would be the whole validation set, whatever ``val_fraction`` says. Leave-one-group-out then draws
validation by whole group (run) when two or more training groups remain, so validation sees the
same kind of shift as the held-out group; otherwise validation is drawn by particle, stratified by
class, within the training samples. The split table says which rule applied.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from fimvision.data.manifest import SPLIT_NAMES, Manifest
from fimvision.errors import DataError

SplitStrategy = Literal["random", "sample", "group", "kfold", "predefined"]
# Fewest training samples from which validation is drawn by whole sample.
MIN_VAL_SAMPLES = 5

log = logging.getLogger(__name__)


def _units(frame: pd.DataFrame, by: str | None) -> pd.DataFrame:
    """One row per unit (a sample, or a particle when ``by`` is None): its majority label and size."""
    key = frame[by] if by else pd.Series(frame.index.astype(str), index=frame.index)
    units = frame.assign(_unit=key.to_numpy()).groupby("_unit", sort=True)["label"]
    return pd.DataFrame({"label": units.agg(lambda s: s.value_counts().index[0]), "size": units.size()})


def _allocate(units: pd.DataFrame, fractions: dict[str, float], rng: np.random.Generator) -> pd.Series:
    """Assign whole units to splits, class by class, until each split holds its fraction of particles."""
    assignment = pd.Series("train", index=units.index, dtype=object)
    for _, members in units.groupby("label", sort=True):
        order = members.index.to_numpy()[rng.permutation(len(members))]
        sizes = members.loc[order, "size"].to_numpy()
        total, start = sizes.sum(), 0
        for split, fraction in fractions.items():
            if fraction <= 0 or start >= len(order) - 1:  # always leave the last unit to train
                continue
            taken, stop = 0, start
            while stop < len(order) - 1 and taken < fraction * total:
                taken += sizes[stop]
                stop += 1
            assignment.loc[order[start:stop]] = split
            start = stop
    return assignment


def _need(frame: pd.DataFrame, column: str, strategy: str) -> None:
    if column not in frame.columns or (frame[column] == "").all():
        raise DataError(f"split '{strategy}' needs a '{column}' column in manifest.csv. Add it, or choose "
                        "another split (split: random splits particles regardless of sample, which leaks).")
    empty = frame.loc[frame[column] == "", "line"]
    if len(empty):
        raise DataError(f"split '{strategy}': manifest.csv line(s) {list(empty[:10])}, column '{column}' "
                        f"is empty. Fill it in for every labelled row.")


def _by_units(frame: pd.DataFrame, by: str | None, val_fraction: float, test_fraction: float,
              rng: np.random.Generator) -> np.ndarray:
    units = _units(frame, by)
    assignment = _allocate(units, {"test": test_fraction, "val": val_fraction}, rng)
    key = frame[by] if by else pd.Series(frame.index.astype(str), index=frame.index)
    return key.map(assignment).to_numpy()


def assign_folds(frame: pd.DataFrame, n_folds: int, *, by: str | None = "sample", seed: int = 0) -> np.ndarray:
    """A fold index (0..n_folds-1) for each row: whole units (``by``) per fold, stratified by class."""
    units = frame[by].to_numpy() if by else np.arange(len(frame))
    if len(set(units)) < n_folds:
        raise DataError(f"split 'kfold': n_folds={n_folds} needs at least {n_folds} "
                        f"{'samples' if by else 'particles'}; the manifest has {len(set(units))}.")
    folds = np.zeros(len(frame), dtype=int)
    splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(units, frame["label"].to_numpy(), groups=units)):
        folds[held_out] = fold
    return folds


def _validation_unit(frame: pd.DataFrame, notes: list[str] | None) -> str | None:
    """``sample`` when the rows hold enough samples to draw validation by sample, else None (by particle)."""
    if "sample" not in frame.columns or (frame["sample"] == "").any():
        return None
    n = frame["sample"].nunique()
    if n >= MIN_VAL_SAMPLES:
        return "sample"
    if notes is not None:
        notes.append(f"validation drawn by particle (stratified) within the {n} training sample(s): fewer than "
                     f"{MIN_VAL_SAMPLES} samples, so a whole-sample validation set would be one sample")
    return None


def _validation_of_rest(rest: pd.DataFrame, strategy: str, val_fraction: float, rng: np.random.Generator,
                       notes: list[str] | None) -> np.ndarray:
    """Train/val of the training part ``rest`` of a ``group`` or ``kfold`` split: by sample where enough; for
    ``group``, else by whole group (run) where two or more remain and that gives a validation set; else by
    particle (see the module docstring)."""
    local: list[str] = []
    unit = _validation_unit(rest, local)
    if unit is None and strategy == "group" and (n := rest["group"].nunique()) >= 2:
        by_group = _by_units(rest, "group", val_fraction, 0.0, rng)
        if (by_group == "val").any():  # empty when each run is the only one of its majority class
            if notes is not None:
                notes.append(f"validation drawn by whole group (run) from the {n} training groups: fewer than "
                             f"{MIN_VAL_SAMPLES} samples, and a held-out run is best mimicked by another run")
            return by_group
    if notes is not None:
        notes.extend(local)
    return _by_units(rest, unit, val_fraction, 0.0, rng)


def rare_class_warnings(frame: pd.DataFrame, splits: np.ndarray, min_train: int = 10) -> list[str]:
    """A line for each class the test set holds but the training and validation sets barely have
    (fewer than ``min_train`` particles): its test score says little, and the model may never predict it."""
    labels = frame["label"].to_numpy()
    train = pd.Series(labels[splits != "test"]).value_counts()
    test = pd.Series(labels[splits == "test"]).value_counts()
    return [f"class '{c}': {n} test particle(s) but only {int(train.get(c, 0))} for training and validation; its "
            "test score says little (add labelled particles of it from other runs)"
            for c, n in test.items() if train.get(c, 0) < min_train]


def assign_splits(frame: pd.DataFrame, strategy: SplitStrategy = "sample", *, fold: int = 0, n_folds: int = 5,
                  val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                  notes: list[str] | None = None) -> np.ndarray:
    """The split ('train', 'val' or 'test') of each row of ``frame`` (labelled rows of a manifest).

    Raises a ``DataError`` naming the strategy when a split comes out empty. ``notes``, when given,
    receives a line for each rule that shaped the split (e.g. validation drawn by particle).
    """
    frame = frame.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    if strategy == "random":
        splits = _by_units(frame, None, val_fraction, test_fraction, rng)
    elif strategy == "sample":
        _need(frame, "sample", strategy)
        if frame["sample"].nunique() > MIN_VAL_SAMPLES:
            splits = _by_units(frame, "sample", val_fraction, test_fraction, rng)
        else:  # test by sample; validation by particle within the rest
            splits = _by_units(frame, "sample", 0.0, test_fraction, rng)
            rest = splits == "train"
            share = min(0.9, val_fraction / max(1e-9, rest.mean()))  # of the rest: val_fraction of all
            splits[rest] = _by_units(frame.loc[rest], _validation_unit(frame.loc[rest], notes), share, 0.0, rng)
    elif strategy in ("group", "kfold"):
        if strategy == "group":
            _need(frame, "group", strategy)
            names = sorted(frame["group"].unique())
            if not 0 <= fold < len(names):
                raise DataError(f"split 'group': fold {fold} is out of range; the manifest has {len(names)} "
                                f"groups {names} (fold i holds out group i).")
            held_out = (frame["group"] == names[fold]).to_numpy()
        else:
            _need(frame, "sample", strategy)
            if not 0 <= fold < n_folds:
                raise DataError(f"split 'kfold': fold {fold} is out of range for n_folds={n_folds}.")
            held_out = assign_folds(frame, n_folds, seed=seed) == fold
        splits = np.full(len(frame), "test", dtype=object)
        splits[~held_out] = _validation_of_rest(frame.loc[~held_out], strategy, val_fraction, rng, notes)
    elif strategy == "predefined":
        _need(frame, "split", strategy)
        splits = frame["split"].to_numpy()
    else:
        raise DataError(f"unknown split strategy '{strategy}'; use one of random, sample, group, kfold, predefined.")
    splits = np.asarray(splits, dtype=object)
    for name in SPLIT_NAMES:
        if not (splits == name).any():
            raise DataError(f"split '{strategy}' (fold {fold}) left the '{name}' set empty "
                            f"({len(frame)} labelled rows). Add labelled particles or samples, change the "
                            "fractions, or choose another split.")
    return splits


def subsample_labels(frame: pd.DataFrame, splits: np.ndarray, fraction: float, *, seed: int = 0) -> np.ndarray:
    """Keep ``fraction`` of the training rows, stratified by class (at least one a class); the others
    become ``unused``. Validation and test rows are unchanged."""
    splits = np.asarray(splits, dtype=object).copy()
    rng = np.random.default_rng([seed, 1])
    labels = frame["label"].to_numpy()
    for label in sorted(set(labels[splits == "train"])):
        rows = np.flatnonzero((splits == "train") & (labels == label))
        keep = max(1, round(fraction * len(rows)))
        splits[rng.permutation(rows)[keep:]] = "unused"
    return splits


def describe(frame: pd.DataFrame, splits: np.ndarray) -> pd.DataFrame:
    """Particles per class and split (a table for logs and reports)."""
    extra = sorted(set(splits) - set(SPLIT_NAMES))
    return pd.crosstab(pd.Series(frame["label"].to_numpy(), name="class"), pd.Series(splits, name="split")).reindex(
        columns=[*SPLIT_NAMES, *extra], fill_value=0)


def split_manifest(manifest: Manifest, strategy: SplitStrategy, *, fold: int, n_folds: int, val_fraction: float,
                   test_fraction: float, seed: int, label_fraction: float = 1.0) -> np.ndarray:
    """The split of each manifest row: ``train``, ``val``, ``test``, or "" for an unlabelled row (and for a
    training row left out by ``label_fraction``). Logs the particles per class and split, and warnings."""
    frame = manifest.frame
    labelled = np.flatnonzero(manifest.labelled.to_numpy())
    split_of = np.full(len(frame), "", dtype=object)
    if not len(labelled):
        return split_of
    notes: list[str] = []
    part = frame.iloc[labelled]
    splits = assign_splits(part, strategy, fold=fold, n_folds=n_folds, val_fraction=val_fraction,
                           test_fraction=test_fraction, seed=seed, notes=notes)
    for warning in rare_class_warnings(part, splits):
        log.warning("split '%s' (fold %d): %s", strategy, fold, warning)
    if label_fraction < 1:
        splits = subsample_labels(part, splits, label_fraction, seed=seed)
        notes.append(f"training on {label_fraction:.0%} of the training labels ('unused' column)")
    split_of[labelled] = np.where(splits == "unused", "", splits)
    log.info("split '%s' (fold %d), particles per class:\n%s%s", strategy, fold,
             describe(part, splits).to_string(), "".join(f"\n{n}" for n in notes))
    return split_of
