"""The few-shot source-free adaptation protocol: the target split, the few-shot draw and label shift.

The target domain is split 80/20, stratified by class, with an RNG keyed to (seed, target); from the
80 % part each class gives ``n_shot`` training images and one validation image (nested: the 1-shot set
is part of the 3-shot set, and the validation image is the same for every ``n_shot``); results are
reported on the 20 % test part, which never meets the few-shot set. Source-free unsupervised methods
adapt on the whole 80 % part with its labels hidden. :func:`scenario_labels` gives the classes and kept
images of a scenario (label shift, partial, ood). See docs/sfda.md.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fimvision.errors import DataError

log = logging.getLogger(__name__)


def rng_for(seed: int, *key: str) -> np.random.Generator:
    """A generator keyed to ``seed`` and text keys (stable across runs and Python versions)."""
    return np.random.default_rng([int(seed), *(zlib.crc32(k.encode()) for k in key)])


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions (rest, held_out): ``fraction`` of each class held out (rounded, at least one when a class
    has two or more images). Not scikit-learn's ``train_test_split``: that one may hold out none of a rare
    class and refuses a held-out part smaller than the number of classes (small real domains)."""
    rest, held = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        n = len(members)
        k = int(np.clip(round(fraction * n), 1, n - 1)) if n >= 2 and fraction > 0 else 0
        held.append(members[:k])
        rest.append(members[k:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))


@dataclass
class TargetSplit:
    """Positions into the target domain: the 80 % ``pool`` (unlabelled adaptation data, few-shot source)
    and the 20 % ``test``; ``shots`` (n_shot per class) and ``val`` (one per class) come from the pool."""

    pool: np.ndarray
    test: np.ndarray
    shots: np.ndarray
    val: np.ndarray


def split_target(labels: np.ndarray, target: str, seed: int, n_shot: int, test_fraction: float = 0.2,
                 known: np.ndarray | None = None) -> TargetSplit:
    """The protocol's split of a target domain (``labels``: -1 for unknown-class images).

    The 80/20 split depends on (seed, target) only, so every method and every ``n_shot`` is tested on
    the same images. Few-shot images are drawn per class from the 80 % part with one permutation keyed
    to (seed, target, class): its first image is the validation image, the next ``n_shot`` the training
    shots, so smaller shot sets are nested in larger ones.
    """
    labels = np.asarray(labels)
    pool, test = stratified_split(labels, test_fraction, rng_for(seed, "target-split", target))
    classes = np.unique(labels[labels >= 0]) if known is None else known
    shots, val, short = [], [], []
    for c in classes:
        members = pool[labels[pool] == c]
        if len(members) < n_shot + 1:
            short.append(f"class {int(c)}: {len(members)} image(s)")
            continue
        order = members[rng_for(seed, "few-shot", target, str(int(c))).permutation(len(members))]
        val.append(order[:1])
        shots.append(order[1:1 + n_shot])
    if short:
        raise DataError(f"target '{target}': the 80 % part needs n_shot + 1 = {n_shot + 1} images per class; "
                        f"{'; '.join(short)}. Lower n_shot or use a larger target domain.")
    return TargetSplit(pool, test, _sorted_union(shots), _sorted_union(val))


def _sorted_union(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def label_shift_keep(labels: np.ndarray, num_classes: int, ratio: float, rng: np.random.Generator,
                     reverse: bool = False, minimum: int = 1) -> np.ndarray:
    """Positions kept so that class k keeps ``ratio ** (k / (C-1))`` of its images (``reverse``: class
    C-1-k), at least ``minimum`` each: a long-tailed class distribution."""
    keep = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        rank = (num_classes - 1 - c) if reverse else c
        share = ratio ** (rank / max(1, num_classes - 1))
        k = min(len(members), max(minimum, int(round(share * len(members)))))
        keep.append(np.sort(members[rng.permutation(len(members))[:k]]))
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, np.int64)


@dataclass
class ScenarioLabels:
    """A scenario's classes and labels: ``source_all``/``target_all`` hold a label a domain image (-1:
    unknown), ``source_keep``/``target_keep`` the positions the scenario keeps."""

    classes: list[str]
    source_all: np.ndarray
    source_keep: np.ndarray
    target_all: np.ndarray
    target_keep: np.ndarray


def scenario_labels(source_names: Sequence[str], target_names: Sequence[str], classes: list[str] | None,
                    h: Any) -> ScenarioLabels:
    """The classes and kept images of scenario ``h.scenario`` (see :mod:`fimvision.data.domains.datamodule`),
    from each image's class name; ``h`` holds the data module's settings (seed, n_shot, imbalance_ratio, ...)."""
    src, tgt = set(source_names), set(target_names)
    classes = list(classes) if classes is not None else sorted(src, key=natural_key)
    # Under 'ood', source classes left out of `classes` are the unseen ones (a checkpoint's class list).
    left_out = sorted(src - set(classes), key=natural_key)
    if left_out and h.scenario != "ood":
        raise DataError(f"classes {classes} lacks source class(es) {left_out}; list every source class.")
    unknown = sorted(tgt - set(classes) - src)
    if unknown:
        log.info("target classes %s are not in the source: kept as unknown images (target -1)", unknown)
    classes = classes + left_out
    index = {c: i for i, c in enumerate(classes)}
    source_all = np.asarray([index[c] for c in source_names])
    target_all = np.asarray([index.get(c, -1) for c in target_names])
    source_keep, target_keep = np.arange(len(source_names)), np.arange(len(target_names))
    minimum = h.n_shot + 1 + max(1, math.ceil(1 / h.test_fraction))
    if h.scenario == "label_shift":
        rng = rng_for(h.seed, "label-shift", h.target)
        target_keep = label_shift_keep(target_all, len(classes), h.imbalance_ratio, rng, minimum=minimum)
        target_keep = np.sort(np.concatenate([target_keep, np.flatnonzero(target_all < 0)]))
        if h.source_imbalance:
            source_keep = label_shift_keep(source_all, len(classes), h.imbalance_ratio,
                                           rng_for(h.seed, "label-shift", h.source), reverse=True, minimum=minimum)
    elif h.scenario == "partial":
        keep = h.target_classes or classes[: max(1, len(classes) // 2)]
        _check_names(keep, classes, "target_classes")
        target_keep = np.flatnonzero(np.isin(target_all, [index[c] for c in keep]))
    elif h.scenario == "ood":
        unseen = h.unseen_classes or left_out or classes[len(classes) - max(1, len(classes) // 3):]
        _check_names(unseen, classes, "unseen_classes")
        classes = [c for c in classes if c not in unseen]
        remap = {c: i for i, c in enumerate(classes)}
        source_all = np.asarray([remap.get(c, -1) for c in source_names])
        source_keep = np.flatnonzero(source_all >= 0)
        target_all = np.asarray([remap.get(c, -1) for c in target_names])
    return ScenarioLabels(classes, source_all, source_keep, target_all, target_keep)


def _check_names(names: Sequence[str], classes: list[str], what: str) -> None:
    bad = [c for c in names if c not in classes]
    if bad:
        raise DataError(f"{what} {bad} are not classes of this data ({classes}).")


def natural_key(name: str) -> tuple:
    """Sort key putting '2' before '10'."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)
