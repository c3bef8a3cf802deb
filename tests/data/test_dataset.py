"""Decoding, modality and geometry of particle images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from fimvision.data.dataset import as_hwc_uint8, decode_images, luminance
from fimvision.data.manifest import load_manifest
from fimvision.data.transforms import border_background, pad_to_square, to_canvas
from fimvision.errors import DataError
from fimvision.imageio import read_image

BACKGROUND = (157, 164, 230)


def particle(h: int = 20, w: int = 30) -> np.ndarray:
    """A dark square particle on the bluish FlowCam background."""
    image = np.empty((h, w, 3), np.uint8)
    image[...] = BACKGROUND
    image[5:-5, 5:-5] = (40, 50, 60)
    return image


def test_reads_rgb_grey_rgba_16bit_png_and_tiff(tmp_path):
    rgb = particle()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb[:, :, 1]).save(tmp_path / "grey.png")
    grey16 = (rgb[:, :, 1].astype(np.uint16) * 257)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb.astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "grey.tif", rgb[:, :, 1])

    assert np.array_equal(read_image(tmp_path / "rgb.png"), rgb)
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)
    for name in ("grey.png", "grey16.png", "grey.tif"):
        image = read_image(tmp_path / name)
        assert image.shape == (20, 30) and image.dtype == (np.uint16 if "16" in name else np.uint8), name
        assert np.array_equal(as_hwc_uint8(image), rgb[:, :, 1:2]), name  # 16 bits scaled by their range
    assert read_image(tmp_path / "grey16.png").tolist() == grey16.tolist()  # read unscaled
    assert np.array_equal(as_hwc_uint8(read_image(tmp_path / "rgb16.tif")), rgb)


def test_unreadable_or_missing_image_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    for name, problem in (("broken.png", "cannot be read as an image"), ("absent.png", "image file not found")):
        with pytest.raises(DataError, match=problem) as info:
            read_image(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


def test_luminance_formulas():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [100, 150, 200]]], np.uint8)
    assert luminance(rgb, "bt601")[0, :, 0].tolist() == [76, 150, 29, round(0.299 * 100 + 0.587 * 150 + 0.114 * 200)]
    assert luminance(rgb, "bt709")[0, :, 0].tolist() == [54, 182, 18, round(0.2126 * 100 + 0.7152 * 150 + 0.0722 * 200)]


def test_pad_to_square_uses_the_tile_background():
    image = particle(20, 30)
    assert border_background(image).tolist() == list(BACKGROUND)
    square = pad_to_square(image)
    assert square.shape == (30, 30, 3)
    assert (square[:5] == BACKGROUND).all() and (square[-5:] == BACKGROUND).all()
    assert np.array_equal(square[5:25], image)  # centred, not stretched


def test_resize_keeps_aspect_and_keep_scale_keeps_pixels():
    image = particle(20, 30)
    resized = to_canvas(image, 60)
    assert resized.shape == (60, 60, 3)
    dark = (resized[:, :, 0] < 100)
    rows, cols = np.flatnonzero(dark.any(1)), np.flatnonzero(dark.any(0))
    assert len(cols) == pytest.approx(40, abs=2) and len(rows) == pytest.approx(20, abs=2)  # 20x10 core, x2

    canvas = to_canvas(image, 64, keep_scale=True)
    dark = canvas[:, :, 0] < 100
    assert canvas.shape == (64, 64, 3) and dark.sum() == 10 * 20  # the particle's pixels, at 1:1 scale
    cropped = to_canvas(particle(100, 120), 64, keep_scale=True)
    assert cropped.shape == (64, 64, 3) and (cropped[:, :, 0] < 100).all()  # centre-cropped, no resize


def test_cache_is_compact_uint8(synthetic_root):
    manifest = load_manifest(synthetic_root)
    color = decode_images(manifest, range(10), image_size=128, progress=False)
    mono = decode_images(manifest, range(10), image_size=128, modality="mono", progress=False)
    assert color.dtype == np.uint8 and color.shape == (10, 128, 128, 3)
    assert mono.shape == (10, 128, 128, 1)
    # 16,000 colour crops at 128 px: 16,000 x 128 x 128 x 3 bytes = 786 MB, well under 2 GB.
    assert color.nbytes / 10 * 16_000 < 0.8e9
    expected = luminance(decode_images(manifest, range(10), image_size=128, progress=False)[..., :3], "bt601")
    assert np.abs(mono.astype(int) - expected.astype(int)).max() <= 1  # luminance then resize vs resize then luminance


def _with_image(root, row, writer):
    frame = pd.read_csv(root / "manifest.csv")
    writer(root / frame["image"][row])
    return load_manifest(root)


def test_corrupt_image_names_line(dataset_copy):
    root = dataset_copy
    manifest = _with_image(root, 2, lambda p: p.write_bytes(b"not a png"))
    with pytest.raises(DataError, match=r"line 4, column 'image': cannot decode"):
        decode_images(manifest, range(len(manifest.frame)), image_size=32, progress=False)


def test_grey_image_refused_as_colour(dataset_copy):
    root = dataset_copy
    manifest = _with_image(root, 0, lambda p: Image.fromarray(np.full((20, 20), 120, np.uint8)).save(p))
    with pytest.raises(DataError, match=r"(?s)line 2.*one-channel.*modality: mono"):
        decode_images(manifest, range(3), image_size=32, progress=False)
    mono = decode_images(manifest, range(3), image_size=32, modality="mono", progress=False)
    assert (mono[0] == 120).all()


def test_reads_lzw_tiff_as_instruments_write_it(tmp_path):
    # VisualSpreadsheet writes LZW TIFFs; tifffile alone would need the optional imagecodecs package.
    rgb = particle()
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    assert np.array_equal(read_image(tmp_path / "lzw.tif"), rgb)
