"""The few-shot source-free adaptation protocol: the target split, the few-shot draw and label shift.

The target domain is split 80/20, stratified by class, with an RNG keyed to (seed, target); from the
80 % part each class gives ``n_shot`` training images and one validation image (nested: the 1-shot set
is part of the 3-shot set, and the validation image is the same for every ``n_shot``); results are
reported on the 20 % test part, which never meets the few-shot set. Source-free unsupervised methods
adapt on the whole 80 % part with its labels hidden. See docs/sfda.md.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from fimvision.errors import DataError


def rng_for(seed: int, *key: str) -> np.random.Generator:
    """A generator keyed to ``seed`` and text keys (stable across runs and Python versions)."""
    return np.random.default_rng([int(seed), *(zlib.crc32(k.encode()) for k in key)])


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions (rest, held_out): ``fraction`` of each class held out (rounded, at least one when a class
    has two or more images)."""
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
