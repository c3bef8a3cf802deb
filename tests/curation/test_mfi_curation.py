"""MFI exports (assumed layout, see fimvision.curation.mfi) on fixtures built from synthetic particles."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from fimvision.curation.mfi import curate_mfi, find_frames, mfi_column, read_mfi_csv
from fimvision.errors import CurationError
from fimvision.imageio import read_image

FRAME = (240, 320)  # height, width


def _make_export(folder: Path, particles, *, ecd_header: str = "ECD (µm)", exclusive: bool = False) -> dict:
    """Place particles on 16-bit frames (2 frames, PNG and TIFF), write the CSV; returns the truth."""
    folder.mkdir(parents=True)
    (folder / "frames").mkdir()
    rng = np.random.default_rng(0)
    truth, rows = {}, []
    for frame_number in (1, 2):
        frame = (3000 + rng.integers(0, 40, FRAME)).astype(np.uint16)
        x, y, row_height = 0, 0, 0
        for k, particle in enumerate(particles[(frame_number - 1) * 10 : frame_number * 10]):
            grey = particle.image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            patch = (grey * 16 + 500).astype(np.uint16)  # 12-bit-like values, far above 255
            h, w = patch.shape
            if x + w > FRAME[1]:
                x, y, row_height = 0, y + row_height + 3, 0
            frame[y : y + h, x : x + w] = patch
            pid = f"{frame_number}-{k}"
            truth[pid] = patch
            end = 0 if exclusive else 1
            rows.append({"Particle ID": pid, ecd_header: f"{particle.features['esd_um']:.3f}",
                         "Circularity": f"{particle.features['circularity']:.4f}",
                         "Aspect Ratio": f"{particle.features['aspect_ratio']:.4f}",
                         "Intensity Mean": f"{float(patch.mean()):.1f}", "Max Feret Diameter": "10.0",
                         "X Left": x, "X Right": x + w - end, "Y Top": y, "Y Bottom": y + h - end,
                         "Frame #": frame_number, "Edge Particle": "Yes" if (x == 0 and y == 0) else "No"})
            x, row_height = x + w + 3, max(row_height, h)
        if frame_number == 1:
            cv2.imwrite(str(folder / "frames" / "frame_000001.png"), frame)
        else:
            tifffile.imwrite(folder / "frames" / "frame_000002.tif", frame)
    table = pd.DataFrame(rows)
    with open(folder / "particles.csv", "w", encoding="utf-8") as fh:
        fh.write("Sample Name,mAb1 run 3\nSoftware,MVAS (assumed layout)\n")
        table.to_csv(fh, index=False)
    return truth


@pytest.fixture
def mfi_export(synthetic_particles, tmp_path) -> tuple[Path, dict]:
    folder = tmp_path / "mfi"
    return folder, _make_export(folder, synthetic_particles)


def test_16_bit_crops_keep_their_values(mfi_export, tmp_path):
    folder, truth = mfi_export
    summary = curate_mfi(folder / "particles.csv", folder / "frames", tmp_path / "ds", group="mAb1", progress=False)
    assert summary.written == 20
    manifest = pd.read_csv(tmp_path / "ds" / "manifest.csv", keep_default_na=False, dtype={"particle_id": str})
    assert set(manifest["bit_depth"]) == {16} and set(manifest["instrument"]) == {"MFI"}
    assert set(manifest["group"]) == {"mAb1"} and set(manifest["sample"]) == {"particles"}
    for row in manifest.itertuples():
        crop = read_image(tmp_path / "ds" / row.image)
        assert crop.dtype == np.uint16 and np.array_equal(crop, truth[row.particle_id])
        with Image.open(tmp_path / "ds" / row.image) as png:
            assert png.mode.startswith("I")  # a 16-bit PNG on disk, not scaled to 8 bits
    assert max(int(read_image(tmp_path / "ds" / p).max()) for p in manifest["image"]) > 255
    first = manifest.set_index("particle_id").loc["1-0"]
    assert first["edge_particle"] and not manifest.set_index("particle_id").loc["1-1", "edge_particle"]
    assert {"esd_um", "circularity", "aspect_ratio", "intensity", "max_feret_um", "frame"} <= set(manifest.columns)


def test_header_aliases(synthetic_particles, tmp_path):
    folder = tmp_path / "mfi"
    _make_export(folder, synthetic_particles, ecd_header="ECD(um)")
    table = read_mfi_csv(folder / "particles.csv")
    assert table["line"].iloc[0] == 4  # two metadata lines, the header, then the first particle
    assert table["esd_um"].iloc[0] == pytest.approx(round(synthetic_particles[0].features["esd_um"], 3))
    assert [mfi_column(h) for h in ("ECD (µm)", "ECD(um)", "ECD", "Intensity Mean", "Frame #", "Max Feret Diameter",
                                    "Edge Particle", "Particle #", "X Right")] == [
        "esd_um", "esd_um", "esd_um", "intensity", "frame", "max_feret_um", "edge_particle", "particle_id", "x_right"]


def test_coordinate_conventions(synthetic_particles, tmp_path):
    folder = tmp_path / "mfi"
    truth = _make_export(folder, synthetic_particles, exclusive=True)
    curate_mfi(folder / "particles.csv", folder / "frames", tmp_path / "exclusive", exclusive=True, progress=False)
    manifest = pd.read_csv(tmp_path / "exclusive" / "manifest.csv", dtype={"particle_id": str})
    for row in manifest.itertuples():
        assert np.array_equal(read_image(tmp_path / "exclusive" / row.image), truth[row.particle_id])
    # read as inclusive, the same numbers give crops one pixel larger each way
    curate_mfi(folder / "particles.csv", folder / "frames", tmp_path / "inclusive", progress=False)
    inclusive = pd.read_csv(tmp_path / "inclusive" / "manifest.csv", dtype={"particle_id": str})
    row = inclusive.iloc[1]
    assert read_image(tmp_path / "inclusive" / row["image"]).shape == tuple(s + 1 for s in truth[row["particle_id"]].shape)


def test_drop_edge_and_pad(mfi_export, tmp_path):
    folder, truth = mfi_export
    summary = curate_mfi(folder / "particles.csv", folder / "frames", tmp_path / "ds", drop_edge=True, pad=2,
                         progress=False)
    assert summary.written == 18 and summary.skipped.reasons() == {"edge particle": 2}
    manifest = pd.read_csv(tmp_path / "ds" / "manifest.csv", dtype={"particle_id": str})
    row = manifest.iloc[0]
    crop = read_image(tmp_path / "ds" / row["image"])
    h, w = truth[row["particle_id"]].shape
    assert crop.shape[0] in (h + 2, h + 4) and crop.shape[1] in (w + 2, w + 4)  # padded, clipped at the frame edge


def test_missing_frame_and_box_outside(mfi_export, tmp_path):
    folder, _ = mfi_export
    (folder / "frames" / "frame_000002.tif").unlink()
    with pytest.raises(CurationError, match="frame 2 has no image") as info:
        curate_mfi(folder / "particles.csv", folder / "frames", tmp_path / "ds", progress=False)
    assert info.value.line == 14 and info.value.column == "frame"  # first particle of frame 2: data row 11
    assert not (tmp_path / "ds").exists()
    summary = curate_mfi(folder / "particles.csv", folder / "frames", tmp_path / "ds", skip_bad=True, progress=False)
    assert summary.written == 10 and summary.skipped.reasons() == {"missing frame": 10}

    table = pd.read_csv(folder / "particles.csv", skiprows=2)
    table.loc[3, "X Right"] = 400  # past the 320 px frame
    table.to_csv(folder / "bad.csv", index=False)
    with pytest.raises(CurationError, match="particle 1-3: box .* lies outside frame 1") as info:
        curate_mfi(folder / "bad.csv", folder / "frames", tmp_path / "ds2", progress=False)
    assert info.value.line == 5


def test_frames_found_by_number(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("Frame 7.png", "img_0008.png", "notes.txt"):
        (frames / name).write_bytes(b"")
    assert {k: p.name for k, p in find_frames(frames).items()} == {7: "Frame 7.png", 8: "img_0008.png"}
    (frames / "frame_07.png").write_bytes(b"")
    with pytest.raises(CurationError, match="two files are frame 7"):
        find_frames(frames)
    assert find_frames(frames, pattern="img_{frame:04d}.png", numbers=[8, 9]) == {8: frames / "img_0008.png"}
