"""Finding tiles in collages without metadata: real colour and mono collages, and built edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fimvision.curation.collages import (
    Tile,
    drawn_marks,
    find_tiles,
    largest_rectangle,
    lst_boxes,
    split_collages,
)
from fimvision.curation.flowcam import find_run, read_lst
from fimvision.errors import CurationError
from fimvision.imageio import read_image


def test_colour_collages_give_exactly_the_lst_particles(vs4_runs):
    for run_dir in vs4_runs:
        run = find_run(run_dir)
        counts = read_lst(run.lst).frame["collage_file"].value_counts()
        for name, count in counts.items():
            found = find_tiles(read_image(run.folder / name))
            assert len(found.tiles) == count and not found.rejected
            # not only the count: every tile is exactly where the .lst puts a particle
            assert {t.box for t in found.tiles} == set(lst_boxes(run.lst, name))


def test_mono_collages(mono_collages):
    counts = {p.name: len(find_tiles(read_image(p)).tiles) for p in sorted(mono_collages.glob("*.tif"))}
    assert counts == {"collage_1.tif": 317, "collage_2.tif": 317,
                      "mAb7_200xdilu_SO_100xdilu_50_50_r0_000003.tif": 211}


def test_marks_drawn_on_a_mono_collage_are_ignored(mono_collages):
    marked = read_image(mono_collages / "collage_1.tif")  # collage_2 with ten red-and-white arrows drawn on it
    clean = read_image(mono_collages / "collage_2.tif")
    marks = drawn_marks(marked)
    assert marks is not None and 1500 < marks.sum() < 2500 and drawn_marks(clean) is None
    assert np.array_equal(marked[~marks], clean[~marks])
    tiles = find_tiles(marked)
    assert {t.box for t in tiles.tiles} == {t.box for t in find_tiles(clean).tiles}
    # without mark removal the arrows show up as extra tiles or fragments
    raw = find_tiles(marked, remove_marks=False)
    assert len(raw.tiles) + len(raw.rejected) > 317


def test_split_collages_writes_grey_crops(mono_collages, tmp_path):
    summary = split_collages(sorted(mono_collages.glob("*.tif")), tmp_path / "tiles", group="mAb7", progress=False)
    manifest = pd.read_csv(tmp_path / "tiles" / "manifest.csv", keep_default_na=False)
    assert summary.written == len(manifest) == 845
    assert manifest.groupby("sample").size().to_dict() == {
        "collage_1": 317, "collage_2": 317, "mAb7_200xdilu_SO_100xdilu_50_50_r0_000003": 211}
    assert set(manifest["label"]) == {""} and set(manifest["group"]) == {"mAb7"}
    row = manifest[manifest["sample"] == "mAb7_200xdilu_SO_100xdilu_50_50_r0_000003"].iloc[5]
    crop = read_image(tmp_path / "tiles" / row["image"])
    collage = np.asarray(Image.open(mono_collages / row["collage_file"]))
    expected = collage[row["image_y"] : row["image_y"] + row["image_h"], row["image_x"] : row["image_x"] + row["image_w"]]
    assert crop.ndim == 2 and np.array_equal(crop, expected[..., 0])  # native mono stays one channel
    assert 15 <= manifest["image_w"].min() and manifest["image_h"].max() <= 174
    assert "collage_2.tif" in summary.details


def test_split_collages_checks_against_lst(vs4_runs, tmp_path):
    run = find_run(vs4_runs[0])
    collage = run.folder / f"{run.name}_000002.tif"
    summary = split_collages([collage], tmp_path / "tiles", check_lst=run.lst, progress=False)
    assert summary.details["lst_check"] == {collage.name: {"found": 216, "listed": 216, "same_place": 216}}
    lst = read_lst(run.lst).frame
    first = lst[lst["collage_file"] == collage.name].iloc[0]  # tiles are numbered in placing order
    crop = read_image(tmp_path / "tiles" / f"images/{collage.stem}/00001.png")
    pixels = np.asarray(Image.open(collage))
    assert np.array_equal(crop, pixels[first["image_y"] : first["image_y"] + first["image_h"],
                                       first["image_x"] : first["image_x"] + first["image_w"]])


def _canvas(tiles: list[tuple[int, int, int, int]], size: tuple[int, int] = (60, 80)) -> np.ndarray:
    image = np.zeros((*size, 3), np.uint8)
    for k, (x, y, w, h) in enumerate(tiles):
        image[y : y + h, x : x + w] = (150 + k, 160, 220)
    return image


def test_one_pixel_gap_separates_tiles():
    found = find_tiles(_canvas([(0, 0, 10, 12), (11, 0, 10, 12), (0, 13, 21, 9)]))
    assert [t.box for t in found.tiles] == [(0, 0, 10, 12), (11, 0, 10, 12), (0, 13, 21, 9)]


def test_touching_tiles_of_different_height_are_separated():
    found = find_tiles(_canvas([(2, 2, 12, 20), (14, 2, 15, 11), (40, 5, 9, 9)]))
    assert [t.box for t in found.tiles] == [(2, 2, 12, 20), (14, 2, 15, 11), (40, 5, 9, 9)]
    assert not found.rejected


def test_touching_tiles_of_equal_height_stay_one_tile():
    # documented limitation: without a gap or a change of height, two tiles are one rectangle
    found = find_tiles(_canvas([(0, 0, 10, 12), (10, 0, 14, 12)]))
    assert [t.box for t in found.tiles] == [(0, 0, 24, 12)]


def test_small_regions_and_fragments_are_rejected():
    image = _canvas([(0, 0, 20, 20), (30, 0, 5, 5)])
    image[20:23, 0:3] = 200  # a speck hanging off the first tile
    found = find_tiles(image, min_size=8)
    assert [t.box for t in found.tiles] == [(0, 0, 20, 20)]
    assert sorted((t.box, reason) for t, reason in found.rejected) == [
        ((0, 20, 3, 3), "smaller than 8 px"), ((30, 0, 5, 5), "smaller than 8 px")]
    arrow = np.zeros((30, 30, 3), np.uint8)
    for i in range(12):  # a triangle: no rectangle of 8 px a side fits, so nothing is taken for a tile
        arrow[i, 0 : 12 - i] = 200
    found = find_tiles(arrow, min_size=8)
    assert found.tiles == [] and found.rejected


def test_largest_rectangle():
    mask = np.zeros((8, 10), bool)
    mask[1:7, 2:5] = True  # 6 x 3 = 18
    mask[3:6, 2:9] = True  # 3 x 7 = 21
    assert largest_rectangle(mask) == Tile(y=3, x=2, h=3, w=7)
    assert largest_rectangle(np.zeros((3, 3), bool)) is None


def test_split_collages_bad_input(tmp_path, mono_collages):
    with pytest.raises(CurationError, match="collage not found"):
        split_collages([tmp_path / "nope.tif"], tmp_path / "out", progress=False)
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(black)
    with pytest.raises(CurationError, match="no tile found"):
        split_collages([black], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
