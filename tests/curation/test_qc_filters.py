"""Quality control: filters, exact and near-duplicate removal, and the class-balance report."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from fimvision.curation.qc import (
    FilterSettings,
    class_balance,
    filter_dataset,
    format_balance,
    hamming,
    near_duplicate_pairs,
    phash,
    sharpness,
)
from fimvision.errors import CurationError
from fimvision.imageio import write_png


@pytest.fixture
def dataset(synthetic_particles, tmp_path) -> Path:
    """12 distinct particles plus an exact copy, a noisy copy, a resized copy, a blurred one and a speck."""
    root = tmp_path / "ds"
    rows = []
    big = sorted(synthetic_particles, key=lambda p: -p.image.size)[:12]

    def add(name: str, image: np.ndarray, label: str, esd: float) -> None:
        write_png(root / "images" / f"{name}.png", image)
        rows.append({"image": f"images/{name}.png", "label": label, "particle_id": name, "sample": f"s{len(rows) % 3}",
                     "group": "ab1" if len(rows) % 2 else "ab2", "esd_um": esd})

    for k, particle in enumerate(big):
        add(f"p{k}", particle.image, particle.label, 5.0 + k)
    rng = np.random.default_rng(0)
    base = big[0].image
    add("exact", base.copy(), big[0].label, 5.0)
    add("noisy", np.clip(base.astype(int) + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8), big[0].label, 5.0)
    add("resized", cv2.resize(base, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_LINEAR), big[0].label, 7.5)
    add("blurred", cv2.GaussianBlur(big[1].image, (0, 0), 3.0), big[1].label, 6.0)
    add("speck", base[:5, :5].copy(), "", 0.5)
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def test_phash_and_hamming(synthetic_particles):
    image = sorted(synthetic_particles, key=lambda p: -p.image.size)[0].image
    assert phash(image) == phash(image.copy())
    noisy = np.clip(image.astype(int) + np.random.default_rng(1).integers(-2, 3, image.shape), 0, 255).astype(np.uint8)
    assert int(hamming(phash(image), phash(noisy))) <= 4
    assert int(hamming(phash(image), phash(image[:, ::-1].copy()))) > 8  # a mirrored particle is another picture
    assert int(hamming(0, 0xFF)) == 8 and int(hamming(2**64 - 1, 0)) == 64
    deep = (image.astype(np.uint16) * 257)[..., 0]  # the same picture in 16 bits hashes the same
    assert int(hamming(phash(image[..., 0]), phash(deep))) <= 1


def test_banded_search_equals_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 150, dtype=np.uint64)
    flips = np.array([1 << int(b) for b in rng.integers(0, 64, 150)], dtype=np.uint64)
    hashes = np.concatenate([base, base[:50] ^ flips[:50], base[:30] ^ flips[50:80] ^ flips[80:110]])
    sizes = np.full((len(hashes), 2), 40)
    pairs = near_duplicate_pairs(hashes, sizes, max_distance=3)
    distance = hamming(hashes[:, None], hashes[None, :])
    brute = {(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(distance <= 3, k=1)), strict=True)}
    assert {(i, j) for i, j, _ in pairs} == brute and len(brute) >= 80


def test_filters_and_duplicates(dataset, tmp_path, snapshot):
    before = snapshot(dataset)
    settings = FilterSettings(esd_min=1.0, esd_max=15.5, min_side=8, min_sharpness=None, dedupe="near")
    summary = filter_dataset(dataset, tmp_path / "clean", settings, progress=False)
    assert snapshot(dataset) == before
    kept = pd.read_csv(tmp_path / "clean" / "manifest.csv", keep_default_na=False)
    skipped = pd.read_csv(tmp_path / "clean" / "skipped.csv")
    reasons = dict(zip(skipped["particle"], skipped["reason"], strict=True))
    assert reasons["speck"].startswith("ESD below 1.0")  # the first failing filter is the reason
    assert reasons["p11"] == "ESD above 15.5 um"
    assert reasons["exact"] == "exact duplicate: of images/p0.png"
    assert reasons["noisy"].startswith("near duplicate: of images/p0.png")
    assert reasons["blurred"].startswith("near duplicate: of images/p1.png")  # blurring keeps the pHash
    assert "resized" in set(kept["particle_id"])  # same shape, other size: another particle
    assert summary.written == len(kept) == 12 and len(skipped) == 5
    assert (tmp_path / "clean" / "class_balance.csv").is_file() and "phash" in kept.columns
    for image in kept["image"]:
        assert (tmp_path / "clean" / image).is_file()


def test_blur_filter(dataset, tmp_path, synthetic_particles):
    big = sorted(synthetic_particles, key=lambda p: -p.image.size)[1].image
    sharp, soft = sharpness(big), sharpness(cv2.GaussianBlur(big, (0, 0), 3.0))
    assert soft < sharp / 4
    threshold = (sharp * soft) ** 0.5
    summary = filter_dataset(dataset, tmp_path / "sharp", FilterSettings(min_sharpness=threshold, dedupe="none"),
                             progress=False)
    kept = pd.read_csv(tmp_path / "sharp" / "manifest.csv", keep_default_na=False)
    assert "blurred" not in set(kept["particle_id"]) and "sharpness" in kept.columns
    assert summary.skipped.reasons()["blurred (sharpness below " + f"{threshold})"] >= 1


def test_missing_columns_are_explained(dataset, tmp_path):
    with pytest.raises(CurationError, match="no edge_particle column"):
        filter_dataset(dataset, tmp_path / "x", FilterSettings(drop_edge=True), progress=False)
    frame = pd.read_csv(dataset / "manifest.csv").drop(columns="esd_um")
    frame.to_csv(dataset / "manifest.csv", index=False)
    with pytest.raises(CurationError, match="no esd_um column") as info:
        filter_dataset(dataset, tmp_path / "x", FilterSettings(esd_min=2), progress=False)
    assert info.value.file == dataset.resolve() / "manifest.csv"
    assert not (tmp_path / "x").exists()


def test_class_balance(dataset):
    frame = pd.read_csv(dataset / "manifest.csv", keep_default_na=False)
    table = class_balance(frame)
    counts = frame["label"].replace("", "(unlabelled)").value_counts()
    assert table["total"].to_dict() == counts.sort_index().to_dict()
    assert table["share_%"].sum() == pytest.approx(100, abs=0.2)
    by_group = class_balance(frame, by="group")
    assert {"ab1", "ab2", "total"} <= set(by_group.columns)
    assert (by_group["ab1"] + by_group["ab2"] == by_group["total"]).all()
    labelled = counts.drop("(unlabelled)")
    assert f"{labelled.max() / labelled.min():.1f}" in format_balance(table)
