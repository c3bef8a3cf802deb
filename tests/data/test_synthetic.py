"""The synthetic colour-FIM generator: files, determinism, geometry, classes, vials, colour cue, tool."""

from __future__ import annotations

import csv
import dataclasses
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fimvision.data.synthetic import (
    BACKGROUND_RGB,
    COLOUR_CUE_RGB,
    FEATURE_COLUMNS,
    INSTRUMENT,
    LUMA_BT601,
    MANIFEST_COLUMNS,
    SyntheticConfig,
    SyntheticParticle,
    iter_particles,
    measure,
    particle_count,
    render,
    render_particle,
    write_dataset,
    writer,
)
from fimvision.errors import FimvisionError

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "make_synthetic.py"
TINY = SyntheticConfig(antibodies=2, per_class=20, seed=0)


def read_manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def particles(config: SyntheticConfig, label: str, n: int) -> list[SyntheticParticle]:
    """``n`` particles of ``label``, the first few of each antibody (spread over the antibodies)."""
    cls = config.all_classes.index(label)
    per_group = -(-n // config.antibodies)
    block = len(config.all_classes) * config.per_class
    indices = [
        a * block + cls * config.per_class + k for a in range(config.antibodies) for k in range(per_group)
    ]
    return [render_particle(config, i) for i in indices[:n]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tiny") / "data", TINY, progress=False)


@pytest.fixture(scope="module")
def tiny_rows(tiny) -> list[dict[str, str]]:
    return read_manifest(tiny)


# ------------------------------------------------------------------------------------------ files, format


def test_manifest_and_images_match_rendered_particles(tiny, tiny_rows):
    assert list(tiny_rows[0]) == list(MANIFEST_COLUMNS)
    assert len(tiny_rows) == particle_count(TINY) == 2 * 2 * 20
    assert [int(r["particle_id"]) for r in tiny_rows] == list(range(len(tiny_rows)))
    for row in tiny_rows[::7]:
        particle = render_particle(TINY, int(row["particle_id"]))
        image = np.asarray(Image.open(tiny / row["image"]))  # a standard RGB PNG, not BGR
        np.testing.assert_array_equal(image, particle.image)
        assert row["image"] == f"images/{particle.group}/{particle.label}/{particle.particle_id:06d}.png"
        assert (row["label"], row["group"], row["sample"]) == (
            particle.label,
            particle.group,
            particle.sample,
        )
        assert int(row["area_px"]) == particle.mask.sum() == particle.features["area_px"]
        assert float(row["esd_um"]) == pytest.approx(
            2 * np.sqrt(particle.mask.sum() / np.pi) * 0.5544, abs=1e-4
        )
    assert {r["instrument"] for r in tiny_rows} == {INSTRUMENT} == {"synthetic-flowcam"}
    assert sorted(p.name for p in tiny.iterdir()) == ["README.txt", "images", "manifest.csv"]
    assert len(list((tiny / "images").rglob("*.png"))) == len(tiny_rows)
    assert [p.name for p in tiny.parent.iterdir()] == ["data"]  # no temporary folder left behind


def test_readme_says_synthetic_and_records_parameters(tiny):
    text = (tiny / "README.txt").read_text()
    assert text.startswith("SYNTHETIC DATA")
    assert '"antibodies": 2' in text and '"per_class": 20' in text and '"seed": 0' in text
    assert "heat=40, mechanical=40" in text
    assert "0.299 R + 0.587 G + 0.114 B" in text


def test_iter_particles_yields_every_index_in_order():
    config = SyntheticConfig(antibodies=1, per_class=3, extra_classes=("air_bubble",))
    got = list(iter_particles(config))
    assert [p.particle_id for p in got] == list(range(9))
    assert [p.label for p in got] == ["heat"] * 3 + ["mechanical"] * 3 + ["air_bubble"] * 3
    assert all(p.image.dtype == np.uint8 and p.image.ndim == 3 and p.image.shape[2] == 3 for p in got)
    assert all(p.mask.dtype == bool and p.mask.shape == p.image.shape[:2] for p in got)
    assert {"esd_um", "circularity", "aspect_ratio", "mean_intensity", "area_px"} <= set(got[0].features)


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_bytes_whatever_the_workers(tiny, tmp_path):
    again = write_dataset(tmp_path / "again", TINY, workers=2, progress=False)
    assert folder_bytes(again) == folder_bytes(tiny)


def test_different_seed_gives_different_data(tiny, tiny_rows, tmp_path):
    other = write_dataset(tmp_path / "other", dataclasses.replace(TINY, seed=1), progress=False)
    other_rows = read_manifest(other)
    assert [r["image"] for r in other_rows] == [r["image"] for r in tiny_rows]  # same layout, ...
    manifests = [(root / "manifest.csv").read_bytes() for root in (tiny, other)]
    assert manifests[0] != manifests[1]  # ... other particles
    differing = sum((other / r["image"]).read_bytes() != (tiny / r["image"]).read_bytes() for r in tiny_rows)
    assert differing == len(tiny_rows)


# ------------------------------------------------------------------------------------------ geometry


def test_tiles_are_10_to_150_px_with_a_5px_background_border():
    config = SyntheticConfig(antibodies=4, per_class=100, extra_classes=("air_bubble",))
    sides = []
    for label in config.all_classes:
        for p in particles(config, label, 120):
            h, w = p.mask.shape
            sides += [h, w]
            assert 10 <= h <= 150 and 10 <= w <= 150
            assert p.mask.any()
            assert not p.mask[:5].any() and not p.mask[-5:].any()
            assert not p.mask[:, :5].any() and not p.mask[:, -5:].any()
            ring = np.concatenate([p.image[0], p.image[-1], p.image[:, 0], p.image[:, -1]]).astype(float)
            assert np.abs(np.median(ring, axis=0) - BACKGROUND_RGB).max() < 25, (label, p.particle_id)
    sides = np.array(sides)
    assert np.median(sides) < 40  # most tiles small ...
    assert sides.max() > 70  # ... with a long tail


def test_tiles_are_rectangular_bounding_boxes_of_the_particle():
    tiles = particles(SyntheticConfig(), "mechanical", 60)
    assert sum(p.mask.shape[0] != p.mask.shape[1] for p in tiles) > 30
    for p in tiles:
        rows, cols = np.nonzero(p.mask)
        h, w = p.mask.shape
        assert (rows.min(), cols.min(), rows.max(), cols.max()) == (5, 5, h - 6, w - 6), p.particle_id


def test_min_tile_grows_small_tiles_around_the_particle():
    config = SyntheticConfig(min_tile=24)
    for p in particles(config, "heat", 40):
        assert min(p.mask.shape) >= 24
        assert not p.mask[:5].any() and not p.mask[-5:].any()
        assert not p.mask[:, :5].any() and not p.mask[:, -5:].any()


def test_mask_covers_the_particle_in_one_piece():
    for label in ("heat", "mechanical"):
        for p in particles(SyntheticConfig(), label, 40):
            n_parts, _ = cv2.connectedComponents(p.mask.astype(np.uint8), connectivity=8)
            assert n_parts == 2, (label, p.particle_id)  # background + one particle
            grey = p.image.astype(float) @ LUMA_BT601
            border = np.ones_like(p.mask)
            border[5:-5, 5:-5] = False
            assert grey[p.mask].mean() < grey[border].mean() - 3, (label, p.particle_id)
            assert p.features["mean_intensity"] == pytest.approx(grey[p.mask].mean(), abs=1e-3)


# ------------------------------------------------------------------------------------------ measurements


def test_new_feature_columns_are_written_as_measured(tiny, tiny_rows):
    new = ("convexity", "edge_gradient", "avg_red", "avg_green", "avg_blue")
    assert list(MANIFEST_COLUMNS[-5:]) == list(new) and set(new) < set(FEATURE_COLUMNS)
    assert "esd_um" in FEATURE_COLUMNS and "label" not in FEATURE_COLUMNS
    readme = (tiny / "README.txt").read_text()
    assert all(name in readme for name in new) and "convex hull" in readme
    for row in tiny_rows[::9]:
        p = render_particle(TINY, int(row["particle_id"]))
        for channel, name in enumerate(("avg_red", "avg_green", "avg_blue")):
            assert float(row[name]) == pytest.approx(p.image[p.mask][:, channel].mean(), abs=6e-5), name
        hull = cv2.contourArea(cv2.convexHull(np.argwhere(p.mask)[:, ::-1].astype(np.int32)))
        assert float(row["convexity"]) == pytest.approx(min(1.0, p.mask.sum() / hull), abs=6e-5)
        assert float(row["edge_gradient"]) == pytest.approx(p.features["edge_gradient"], abs=6e-5)
        assert 0 < float(row["convexity"]) <= 1 and float(row["edge_gradient"]) > 0


def test_features_come_from_the_pixels_not_the_label():
    config = SyntheticConfig(antibodies=2, per_class=30)
    heat, mechanical = particles(config, "heat", 30), particles(config, "mechanical", 30)
    for name in FEATURE_COLUMNS:  # one label, many values: measured per particle
        assert np.std([p.features[name] for p in mechanical]) > 0, name
        if name != "convexity":  # compact heat particles are all convex (1.0), like most real debris
            assert np.std([p.features[name] for p in heat]) > 0, name
    redder = dataclasses.replace(config, colour_cue=12.0)
    for p in heat[:10]:
        q = render_particle(redder, p.particle_id)
        assert q.label == p.label and np.array_equal(q.mask, p.mask)
        assert q.features["esd_um"] == p.features["esd_um"] and q.features["convexity"] == p.features["convexity"]
        # the cue's strength moves avg_red by about (12 - 3) x the particle's cue coefficient
        assert q.features["avg_red"] != p.features["avg_red"]
        assert q.features["avg_red"] == pytest.approx(q.image[q.mask][:, 0].mean())
    shift = [render_particle(redder, p.particle_id).features["avg_red"] - p.features["avg_red"] for p in heat]
    assert np.mean(shift) > 3  # heat's cue is towards red: a stronger cue, redder heat particles


def test_measurement_definitions_on_known_masks():
    square = np.zeros((8, 8), bool)
    square[2:6, 2:6] = True
    step = np.zeros((8, 8, 3), np.uint8)
    step[:, 4:] = 80  # a vertical step between columns 3 and 4: |Sobel| / 8 = 40 on both sides of it
    # outline of the 4x4 square: 12 pixels; 4 of them (rows 2 and 5, columns 3 and 4) sit on the step
    assert measure.edge_gradient(step, square) == pytest.approx(4 * 40 / 12)
    assert measure.edge_gradient(np.full((8, 8, 3), 99, np.uint8), square) == 0.0
    assert measure.convexity(16.0, 9.0) == 1.0 and measure.convexity(3.0, 4.0) == 0.75
    assert measure.convexity(5.0, 0.0) == 0.0  # a line has no hull area (VisualSpreadsheet writes 0)
    ell = np.zeros((12, 12), bool)  # a one-pixel-wide L: 15 pixels, hull through pixel centres 7 x 7 / 2
    ell[2:10, 2] = True
    ell[9, 2:10] = True
    features = measure.measure_particle(np.zeros((12, 12, 3), np.uint8), ell, 0.5)
    assert features["convexity"] == pytest.approx(15 / 24.5) and features["area_px"] == 15
    assert measure.measure_particle(step, square, 0.5)["convexity"] == 1.0
    assert measure.mean_rgb(step, square) == (40.0, 40.0, 40.0)


# ------------------------------------------------------------------------------------------ classes, vials


def test_class_counts_are_antibodies_times_per_class(tiny_rows):
    assert Counter(r["label"] for r in tiny_rows) == {"heat": 40, "mechanical": 40}
    assert Counter((r["group"], r["label"]) for r in tiny_rows) == {
        (g, c): 20 for g in ("ab1", "ab2") for c in ("heat", "mechanical")
    }


def test_vials_hold_one_class_of_one_antibody(tiny_rows):
    vials = defaultdict(set)
    for r in tiny_rows:
        assert re.fullmatch(rf"{r['group']}-{r['label']}-v\d+", r["sample"])
        vials[r["sample"]].add((r["group"], r["label"]))
    assert all(len(v) == 1 for v in vials.values())
    per_class = Counter(next(iter(v)) for v in vials.values())
    assert len(per_class) == 4 and min(per_class.values()) >= 2


def test_default_vials_hold_about_100_to_250_particles():
    config = SyntheticConfig()
    for antibody in range(config.antibodies):
        for cls in range(2):
            sizes = render._vial_sizes(config, antibody, cls)
            assert sizes.sum() == 1000 and len(sizes) >= 2
            assert 100 <= sizes.min() and sizes.max() <= 300


def test_extra_classes(tmp_path):
    config = SyntheticConfig(antibodies=1, per_class=6, extra_classes=("silicone_oil", "air_bubble"))
    rows = read_manifest(write_dataset(tmp_path / "x", config, progress=False))
    assert Counter(r["label"] for r in rows) == dict.fromkeys(
        ("heat", "mechanical", "silicone_oil", "air_bubble"), 6
    )
    for label in ("silicone_oil", "air_bubble"):
        for p in particles(config, label, 6):
            assert p.features["circularity"] > 0.75 and p.features["aspect_ratio"] > 0.8
            grey = p.image.astype(float) @ LUMA_BT601
            inside = cv2.distanceTransform(p.mask.astype(np.uint8), cv2.DIST_L2, 5)
            centre = grey[inside >= inside.max() - 0.5].mean()
            ring = grey[p.mask & (inside <= max(1.5, inside.max() * 0.3))].mean()
            assert centre > ring + 15, (label, centre, ring)  # bright centre, dark ring


def test_heat_is_smaller_rounder_darker_than_mechanical():
    config = SyntheticConfig()
    feats = {c: [p.features for p in particles(config, c, 240)] for c in ("heat", "mechanical")}
    mean = {c: {k: np.mean([f[k] for f in fs]) for k in fs[0]} for c, fs in feats.items()}
    assert mean["mechanical"]["esd_um"] > 1.4 * mean["heat"]["esd_um"]
    assert mean["heat"]["circularity"] > mean["mechanical"]["circularity"] + 0.15
    assert mean["heat"]["mean_intensity"] < mean["mechanical"]["mean_intensity"] - 5  # mechanical translucent
    # overlapping, not separable: some mechanical particles are rounder than the median heat particle
    heat_median = np.median([f["circularity"] for f in feats["heat"]])
    assert np.mean([f["circularity"] > heat_median for f in feats["mechanical"]]) > 0.02


def test_antibodies_differ_in_background_tint():
    config = SyntheticConfig(antibodies=6, per_class=30)
    means = []
    for antibody in range(6):
        start = antibody * 2 * config.per_class
        tiles = [render_particle(config, start + k).image for k in range(15)]
        means.append([np.concatenate([t[0], t[-1]]).astype(float).mean(0) for t in tiles])
    means = np.array(means)  # antibody x particle x RGB
    between = means.mean(1).std(0)  # spread of antibody means
    within = means.std(1).mean(0) / np.sqrt(means.shape[1])  # standard error of one antibody's mean
    assert (between > 3 * within).all()


# ------------------------------------------------------------------------------------------ colour cue


def test_colour_cue_direction_has_zero_bt601_luminance():
    assert np.dot(COLOUR_CUE_RGB, LUMA_BT601) == pytest.approx(0.0, abs=1e-12)
    assert COLOUR_CUE_RGB[0] > 0 > COLOUR_CUE_RGB[2]  # red up, blue down: "reddish" for heat


def test_colour_cue_separates_classes_in_colour_but_not_in_luminance():
    config = SyntheticConfig(antibodies=4, per_class=100)
    no_cue = dataclasses.replace(config, colour_cue=0.0)
    added = {}
    for label in ("heat", "mechanical"):
        diffs = []
        for p in particles(config, label, 160):
            q = render_particle(no_cue, p.particle_id)
            np.testing.assert_array_equal(q.mask, p.mask)  # the cue changes nothing else
            diffs.append((p.image.astype(float) - q.image.astype(float))[p.mask])
        diff = np.concatenate(diffs)
        luma = diff @ LUMA_BT601
        assert abs(luma.mean()) < 0.05, label  # rounding only
        assert np.quantile(np.abs(luma), 0.999) <= 1.0, label
        added[label] = diff.mean(0)
    assert added["heat"][0] > 1.0 and added["heat"][2] < -1.0  # heat: more red, less blue
    assert added["mechanical"][0] < -1.0 and added["mechanical"][2] > 1.0  # mechanical: more blue
    assert np.dot(added["heat"] - added["mechanical"], LUMA_BT601) == pytest.approx(0.0, abs=0.05)


# ------------------------------------------------------------------------------------------ safety, errors


def test_refuses_to_overwrite_a_non_empty_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    config = SyntheticConfig(antibodies=1, per_class=2)
    with pytest.raises(FimvisionError, match="overwrite"):
        write_dataset(out, config, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    write_dataset(out, config, overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "images", "manifest.csv"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    write_dataset(empty, config, progress=False)  # an empty folder is fine
    assert (empty / "manifest.csv").is_file()


def test_writing_is_atomic_and_a_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    seen = []

    def broken(config, index):
        if index == 3:  # mid-run: the target still holds the old data; the new data lie in a hidden sibling
            seen.append(sorted(p.name for p in out.iterdir()))
            seen.append(sorted(p.name[:5] for p in tmp_path.iterdir()))
            raise RuntimeError("boom")
        return render_particle(config, index)

    monkeypatch.setattr(writer, "render_particle", broken)
    with pytest.raises(RuntimeError, match="boom"):
        write_dataset(out, SyntheticConfig(antibodies=1, per_class=4), overwrite=True, progress=False)
    assert seen == [["old.txt"], [".out.", "out"]]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # nothing overwritten


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"extra_classes": ("glass",)}, "unknown extra class"),
        ({"classes": ("heat", "freeze")}, "unknown class"),
        ({"per_class": 0}, "per_class must be >= 1"),
        ({"antibodies": 0}, "antibodies must be >= 1"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_invalid_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**kwargs)


# ------------------------------------------------------------------------------------------ the tool


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120)


def test_tool_help():
    result = run_tool("--help")
    assert result.returncode == 0
    for option in (
        "--out",
        "--antibodies",
        "--per-class",
        "--seed",
        "--extra-classes",
        "--overwrite",
        "--workers",
    ):
        assert option in result.stdout
    assert "SYNTHETIC" in result.stdout


def test_tool_writes_a_dataset_and_refuses_to_clobber(tmp_path):
    out = tmp_path / "ds"
    args = ("--out", str(out), "--antibodies", "1", "--per-class", "5", "--seed", "3", "--workers", "1")
    result = run_tool(*args, "--extra-classes", "air_bubble")
    assert result.returncode == 0, result.stderr
    assert "SYNTHETIC" in result.stdout and str(out) in result.stdout
    assert re.search(r"heat: 5\b", result.stdout) and re.search(r"air_bubble: 5\b", result.stdout)
    rows = read_manifest(out)
    assert Counter(r["label"] for r in rows) == {"heat": 5, "mechanical": 5, "air_bubble": 5}
    config = SyntheticConfig(antibodies=1, per_class=5, seed=3, extra_classes=("air_bubble",))
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / rows[7]["image"])), render_particle(config, 7).image
    )

    before = folder_bytes(out)
    refused = run_tool(*args)
    assert refused.returncode != 0 and "--overwrite" in refused.stderr
    assert folder_bytes(out) == before
    replaced = run_tool(*args, "--overwrite", "--no-progress")
    assert replaced.returncode == 0, replaced.stderr
    assert Counter(r["label"] for r in read_manifest(out)) == {"heat": 5, "mechanical": 5}
