"""The preview page: montages per class (colour and mono) and per-class histograms."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fimvision.curation.collages import split_collages
from fimvision.curation.preview import _square, montage, preview
from fimvision.errors import CurationError


def _coloured_pixels(path) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(((rgb.max(axis=2) - rgb.min(axis=2)) > 30).sum())


def test_preview_of_a_colour_dataset(curated_vs4, tmp_path):
    out = tmp_path / "page.png"
    shown = preview(curated_vs4, out, per_class=8)
    assert shown == {"Junk": 8, "protist": 8, "(unlabelled)": 8}
    with Image.open(out) as page:
        assert page.width > 300 and page.height > 300
    assert _coloured_pixels(out) > 2000  # the bluish FlowCam tiles and the histogram lines
    with pytest.raises(CurationError, match="preview file exists"):
        preview(curated_vs4, out)
    preview(curated_vs4, out, overwrite=True, per_class=2)
    with pytest.raises(CurationError, match="inside the dataset"):
        preview(curated_vs4, curated_vs4 / "p.png")
    assert not (curated_vs4 / "p.png").exists()


def test_preview_of_a_mono_dataset(mono_collages, tmp_path):
    split_collages([mono_collages / "collage_2.tif"], tmp_path / "tiles", label="so", progress=False)
    out = tmp_path / "mono.png"
    assert preview(tmp_path / "tiles", out, per_class=4) == {"so": 4}
    assert _coloured_pixels(out) < 50  # grey crops, no histograms (no esd_um): nothing coloured


def test_square_padding_and_montage():
    crop = np.zeros((4, 8, 3), np.uint8)
    crop[:] = (10, 20, 30)
    crop[1:3, 2:6] = 200
    square = _square(crop)
    assert square.shape == (8, 8, 3) and (square[0] == (10, 20, 30)).all() and (square[3:5, 2:6] == 200).all()
    sheet = montage([crop.astype(np.float32) / 255] * 5, columns=4, cell=10)
    assert sheet.shape == (20, 40, 3) and sheet[10:20, 10:40].max() == 0  # empty cells stay black
