"""Quality control of a curated dataset: filters, duplicate removal and the class-balance report.

Filters (each dropped particle is listed in ``skipped.csv`` with the first reason that applies):

- ESD range (``esd_um`` column), edge particles (``edge_particle`` column, as MFI exports carry),
  crops smaller than ``min_side`` pixels, blurred crops (``sharpness``: the variance of the
  Laplacian of the grey crop on the 0-255 scale, below ``min_sharpness``).
- exact duplicates: the same pixels (shape, bit depth and values); the first in manifest order is kept.
- near duplicates: perceptual hashes (DCT pHash, 64 bits, as the ``imagehash`` package computes it)
  at most ``hash_distance`` bits apart *and* crop sizes within ``size_tolerance`` of each other,
  because in flow imaging two particles of one shape but different size are different particles.
  Groups of near duplicates keep their first member.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from fimvision.console import tqdm_disable
from fimvision.curation.mfi import TRUE
from fimvision.curation.output import MANIFEST, Summary, copy_images, load_dataset
from fimvision.data.manifest import class_counts
from fimvision.errors import CurationError
from fimvision.files import OutputFolder
from fimvision.imageio import read_image, to_float

DEDUPE_MODES = ("none", "exact", "near")


def phash(image: np.ndarray, hash_size: int = 8, highfreq_factor: int = 4) -> int:
    """64-bit perceptual hash: the signs of the low-frequency DCT of the 32x32 grey image about their median."""
    size = hash_size * highfreq_factor
    grey = cv2.resize(to_float(image), (size, size), interpolation=cv2.INTER_AREA)
    low = cv2.dct(grey)[:hash_size, :hash_size]
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values).astype(np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
    return table[values.astype(np.uint64).view(np.uint8).reshape(*values.shape, 8)].sum(axis=-1)


def hamming(a: int | np.ndarray, b: int | np.ndarray) -> np.ndarray:
    """Bits that differ between 64-bit hashes."""
    return _popcount(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image on the 0-255 scale (low: blurred)."""
    return float(cv2.Laplacian(to_float(image), cv2.CV_32F, ksize=3).var())


def near_duplicate_pairs(hashes: np.ndarray, sizes: np.ndarray, *, max_distance: int = 4,
                         size_tolerance: float = 0.1) -> list[tuple[int, int, int]]:
    """Pairs (i, j, distance), i < j, of near-duplicate crops.

    ``hashes`` are uint64 pHashes, ``sizes`` (N, 2) crop heights and widths. Candidates come from
    ``max_distance + 1`` bands of the hash (two hashes that close agree on at least one band, by
    the pigeonhole principle), so the search does not compare every pair.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    sizes = np.asarray(sizes, dtype=np.float64)
    if not 0 <= max_distance < 64:
        raise CurationError(f"hash distance must be 0..63, got {max_distance}")
    bands = max_distance + 1
    edges = np.linspace(0, 64, bands + 1).astype(int)
    found: dict[tuple[int, int], int] = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        keys = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        stops = np.r_[starts[1:], len(order)]
        for start, stop in zip(starts, stops, strict=True):
            if stop - start < 2:
                continue
            members = np.sort(order[start:stop])
            distance = hamming(hashes[members][:, None], hashes[members][None, :])
            ratio = sizes[members][:, None, :] / np.maximum(sizes[members][None, :, :], 1)
            similar = (np.abs(ratio - 1) <= size_tolerance).all(axis=-1) & (np.abs(1 / ratio - 1) <= size_tolerance).all(axis=-1)
            close = np.triu((distance <= max_distance) & similar, k=1)
            for a, b in zip(*np.nonzero(close), strict=True):
                found[(int(members[a]), int(members[b]))] = int(distance[a, b])
    return sorted((i, j, d) for (i, j), d in found.items())


def _clusters(n: int, pairs: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """For each item, the first (lowest index) item of its group of connected pairs."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.asarray(pairs, dtype=np.int64).reshape(-1, 3)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)  # labels are 0..k-1: first[k] is group k's first item
    return first[labels]


def class_balance(frame: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Particles per class (rows; '(unlabelled)' for empty labels), per value of ``by`` if given, with totals."""
    labels = frame["label"].replace("", "(unlabelled)")
    if by is not None and by in frame.columns and (frame[by].astype(str) != "").any():
        table = pd.crosstab(labels, frame[by].astype(str).replace("", "(none)"))
    else:
        table = labels.value_counts().sort_index().to_frame("count")
    table["total"] = table.sum(axis=1) if "count" not in table.columns else table["count"]
    table = table.drop(columns=["count"], errors="ignore")
    table["share_%"] = (100 * table["total"] / max(1, table["total"].sum())).round(1)
    table.index.name = "label"
    return table


def format_balance(table: pd.DataFrame) -> str:
    """The balance table as text, with the ratio of the largest to the smallest labelled class."""
    labelled = table.drop(index="(unlabelled)", errors="ignore")["total"]
    text = table.to_string()
    if len(labelled) > 1 and labelled.min() > 0:
        text += f"\nimbalance (largest / smallest labelled class): {labelled.max() / labelled.min():.1f}"
    return text


@dataclass
class FilterSettings:
    """Which filters :func:`filter_dataset` applies (None: off)."""

    esd_min: float | None = None
    esd_max: float | None = None
    drop_edge: bool = False
    min_side: int | None = None
    min_sharpness: float | None = None
    dedupe: str = "exact"
    hash_distance: int = 4
    size_tolerance: float = 0.1


def _needs_images(settings: FilterSettings) -> bool:
    return settings.min_side is not None or settings.min_sharpness is not None or settings.dedupe != "none"


def filter_frame(frame: pd.DataFrame, root: Path, settings: FilterSettings, *,
                 progress: bool = True) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """Apply the filters to a manifest frame; returns the kept rows and (row, reason) for the rest."""
    if settings.dedupe not in DEDUPE_MODES:
        raise CurationError(f"unknown dedupe mode '{settings.dedupe}'", hint=f"use one of {', '.join(DEDUPE_MODES)}")
    frame = frame.reset_index(drop=True)
    reasons: dict[int, str] = {}
    manifest = root / MANIFEST

    def drop(mask: np.ndarray, reason: str | Sequence[str]) -> None:
        for i in np.flatnonzero(mask):
            if i not in reasons:
                reasons[int(i)] = reason if isinstance(reason, str) else reason[i]

    if settings.esd_min is not None or settings.esd_max is not None:
        if "esd_um" not in frame.columns:
            raise CurationError("no esd_um column to filter by ESD", file=manifest,
                                hint="curate with a tool that writes esd_um, or leave out --esd-min/--esd-max")
        esd = pd.to_numeric(frame["esd_um"], errors="coerce").to_numpy(dtype=float)
        drop(np.isnan(esd), "ESD unknown")
        if settings.esd_min is not None:
            drop(esd < settings.esd_min, f"ESD below {settings.esd_min} um")
        if settings.esd_max is not None:
            drop(esd > settings.esd_max, f"ESD above {settings.esd_max} um")
    if settings.drop_edge:
        if "edge_particle" not in frame.columns:
            raise CurationError("no edge_particle column", file=manifest,
                                hint="edge flags come from MFI exports (curate_mfi.py); leave out --drop-edge")
        edge = frame["edge_particle"].astype(str).str.strip().str.lower().isin(TRUE).to_numpy()
        drop(edge, "edge particle")

    if _needs_images(settings):
        count = len(frame)
        shapes = np.zeros((count, 2), dtype=np.int64)
        sharp = np.zeros(count)
        hashes = np.zeros(count, dtype=np.uint64)
        digests: list[str] = [""] * count
        for i, rel in enumerate(tqdm(frame["image"], desc="inspect crops", unit="crop", disable=tqdm_disable(progress))):
            image = read_image(root / rel)
            shapes[i] = image.shape[:2]
            if settings.min_sharpness is not None:
                sharp[i] = sharpness(image)
            if settings.dedupe != "none":
                digests[i] = hashlib.sha1(f"{image.shape}{image.dtype}".encode() + image.tobytes()).hexdigest()
            if settings.dedupe == "near":
                hashes[i] = phash(image)
        if settings.min_side is not None:
            drop(shapes.min(axis=1) < settings.min_side, f"smaller than {settings.min_side} px")
        if settings.min_sharpness is not None:
            frame["sharpness"] = sharp.round(2)
            drop(sharp < settings.min_sharpness, f"blurred (sharpness below {settings.min_sharpness})")
        if settings.dedupe != "none":
            alive = np.array([i not in reasons for i in range(count)])
            first: dict[str, int] = {}
            for i in np.flatnonzero(alive):
                if digests[i] in first:
                    reasons[int(i)] = f"exact duplicate: of {frame['image'].iloc[first[digests[i]]]}"
                else:
                    first[digests[i]] = int(i)
        if settings.dedupe == "near":
            frame["phash"] = [f"{int(h):016x}" for h in hashes]
            alive = np.flatnonzero([i not in reasons for i in range(count)])
            pairs = near_duplicate_pairs(hashes[alive], shapes[alive], max_distance=settings.hash_distance,
                                         size_tolerance=settings.size_tolerance)
            heads = _clusters(len(alive), pairs)
            for k, head in enumerate(heads):
                if head != k:  # distance to the kept one (a chain of near duplicates may exceed the limit)
                    kept = frame["image"].iloc[alive[head]]
                    bits = int(hamming(hashes[alive[k]], hashes[alive[head]]))
                    reasons[int(alive[k])] = f"near duplicate: of {kept} (hash distance {bits})"
    keep = np.array([i not in reasons for i in range(len(frame))], dtype=bool)
    return frame[keep].reset_index(drop=True), sorted(reasons.items())


def filter_dataset(dataset: str | Path, out: str | Path, settings: FilterSettings, *, overwrite: bool = False,
                   link: bool = False, progress: bool = True) -> Summary:
    """Write the particles of ``dataset`` that pass the filters to a new dataset ``out``.

    The summary holds the class balance before and after; ``class_balance.csv`` is written too.
    """
    root = Path(dataset).expanduser().resolve()
    frame = load_dataset(root).drop(columns=["line"])
    kept, dropped = filter_frame(frame, root, settings, progress=progress)
    summary = Summary(tool="filter_dataset", out=Path(out).expanduser().resolve())
    for row, reason in dropped:
        summary.skipped.add(root / MANIFEST, frame["particle_id"].iloc[row] if "particle_id" in frame.columns
                            else frame["image"].iloc[row], reason)
    if kept.empty:
        raise CurationError("every particle was filtered out", file=root / MANIFEST, hint="loosen the filters")
    with OutputFolder(out, overwrite=overwrite, inputs=[root]) as tmp:
        kept = copy_images(kept, root, tmp, link=link, progress=progress)
        class_balance(kept).to_csv(tmp / "class_balance.csv")
        summary.details["particles in"] = len(frame)
        summary.details["class balance before"] = {k or "(unlabelled)": v for k, v in class_counts(frame["label"]).items()}
        summary.finish(kept, tmp)
    return summary
