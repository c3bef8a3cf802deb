"""Collages without metadata: find the particle tiles on the black canvas and write them as a dataset.

VisualSpreadsheet packs particle tiles row by row on a pure black canvas with a black gap between
neighbours (2 px on the exports checked). A tile is a filled rectangle of camera pixels, which are
never exactly 0, so tiles are the connected regions of non-black pixels (4-connectivity).

Two things break the one-region-one-tile rule, and are handled:

- marks drawn on the canvas after export: ``flowcam-mono-collages/collage_1.tif`` is
  ``collage_2.tif`` with ten red-and-white arrows drawn on it, one overlapping a tile. In a monochrome
  collage (R = G = B on all but a few pixels) coloured pixels, and saturated white touching them,
  are taken for marks and treated as canvas (:func:`drawn_marks`).
- a region that is still not a filled rectangle (fill below ``min_fill``: tiles that touch without a
  gap, or marks on a colour collage) is taken apart: cut between columns where its vertical extent
  changes (tiles of different heights side by side in a row), between rows, or by peeling off its
  largest filled rectangles, whichever covers most of it with tiles at least ``min_size`` a side
  (then: fewer tiles; then that order). What remains is reported as a rejected fragment. Touching tiles of equal height in a
  row form one rectangle and cannot be told apart without looking at the content: they come out as
  one tile (not seen on real exports, where the gap is always there).

Regions smaller than ``min_size`` on a side are rejected as too small. Tiles are numbered in reading
order (top to bottom, left to right), the order VisualSpreadsheet places particles in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fimvision.console import tqdm_disable
from fimvision.curation.flowcam.formats import read_lst
from fimvision.curation.output import Summary
from fimvision.errors import CurationError
from fimvision.files import OutputFolder
from fimvision.imageio import LUMINANCE_WEIGHTS, read_image, write_png

GREY_SHARE = 0.99  # share of tile pixels with R == G == B above which a collage is treated as monochrome


@dataclass(frozen=True, order=True)
class Tile:
    """A rectangle in collage pixels: ``collage[y:y+h, x:x+w]``."""

    y: int
    x: int
    h: int
    w: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x, y, w, h), the .lst order."""
        return self.x, self.y, self.w, self.h


@dataclass
class TileSearch:
    """Tiles found in a collage, in reading order, and the regions rejected with the reason."""

    tiles: list[Tile] = field(default_factory=list)
    rejected: list[tuple[Tile, str]] = field(default_factory=list)


def largest_rectangle(mask: np.ndarray) -> Tile | None:
    """The largest axis-aligned rectangle of True pixels in a 2-D boolean mask (None if empty)."""
    best, best_area = None, 0
    heights = np.zeros(mask.shape[1] + 1, dtype=np.int64)  # a trailing 0 flushes the stack
    for row in range(mask.shape[0]):
        heights[:-1] = np.where(mask[row], heights[:-1] + 1, 0)
        stack: list[int] = []
        for col, height in enumerate(heights.tolist()):
            while stack and heights[stack[-1]] >= height:
                top = stack.pop()
                h = int(heights[top])
                start = stack[-1] + 1 if stack else 0
                area = h * (col - start)
                if area > best_area:
                    best_area, best = area, Tile(y=row - h + 1, x=start, h=h, w=col - start)
            stack.append(col)
    return best


def drawn_marks(image: np.ndarray) -> np.ndarray | None:
    """Pixels of marks drawn on a monochrome collage stored as RGB, or None if it is not one.

    In a collage whose non-black pixels are grey (R = G = B) but for a few, the coloured pixels were
    drawn, not imaged; so is saturated white touching them (the fill of a drawn arrow).
    """
    if image.ndim != 3:
        return None
    spread = image.max(axis=2) - image.min(axis=2)
    foreground = image.max(axis=2) > 0
    coloured = (spread > 0) & foreground
    if not coloured.any() or coloured.sum() > (1 - GREY_SHARE) * max(1, int(foreground.sum())):
        return None
    white = image.min(axis=2) == np.iinfo(image.dtype).max
    count, labels = cv2.connectedComponents((coloured | white).astype(np.uint8), connectivity=8)
    touched = np.unique(labels[coloured])
    return np.isin(labels, touched[touched > 0])


MAX_CUTS = 8  # more runs than this along an axis is a shape (a drawn mark), not tiles side by side


def _runs(region: np.ndarray, axis: int) -> list[tuple[int, int]]:
    """Stretches of columns (axis 1) or rows (axis 0) over which the region's extent is the same."""
    lines = region.T if axis == 1 else region
    filled = lines.any(axis=1)
    first = np.where(filled, lines.argmax(axis=1), -1)
    last = np.where(filled, lines.shape[1] - 1 - lines[:, ::-1].argmax(axis=1), -1)
    runs, start = [], 0
    for i in range(1, len(lines) + 1):
        if i == len(lines) or (first[i], last[i]) != (first[start], last[start]):
            if filled[start]:
                runs.append((start, i))
            start = i
    return runs


Decomposition = tuple[list[Tile], list[tuple[Tile, str]]]


def _score(option: Decomposition) -> tuple[int, int]:
    tiles, _ = option
    return sum(t.w * t.h for t in tiles), -len(tiles)


def _decompose(region: np.ndarray, min_size: int, min_fill: float, depth: int = 0) -> Decomposition:
    """Tiles in a region that is not one filled rectangle, and the rejected rest (region coordinates).

    Tried in turn: cuts between columns where the region's vertical extent changes (tiles side by
    side in a row), cuts between rows, and peeling off the largest rectangles. The option covering
    most pixels with tiles wins; then the one with fewer tiles; then the earlier one.
    """
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        return [], []
    y0, x0 = int(ys.min()), int(xs.min())
    sub = region[y0 : ys.max() + 1, x0 : xs.max() + 1]
    h, w = sub.shape

    def shift(t: Tile) -> Tile:
        return Tile(y=t.y + y0, x=t.x + x0, h=t.h, w=t.w)

    if sub.sum() >= min_fill * h * w:
        tile = Tile(y=y0, x=x0, h=h, w=w)
        return ([tile], []) if min(h, w) >= min_size else ([], [(tile, f"smaller than {min_size} px")])
    options: list[Decomposition] = []
    for axis in (1, 0):
        runs = _runs(sub, axis)
        if not 1 < len(runs) <= MAX_CUTS or depth > 6:
            continue
        tiles: list[Tile] = []
        rejected: list[tuple[Tile, str]] = []
        for start, stop in runs:
            piece = np.zeros_like(sub)
            if axis == 1:
                piece[:, start:stop] = sub[:, start:stop]
            else:
                piece[start:stop] = sub[start:stop]
            more, less = _decompose(piece, min_size, min_fill, depth + 1)
            tiles += more
            rejected += less
        options.append((tiles, rejected))
    options.append(_peel(sub, min_size))
    tiles, rejected = max(options, key=_score)
    return [shift(t) for t in tiles], [(shift(t), why) for t, why in rejected]


def _peel(region: np.ndarray, min_size: int) -> Decomposition:
    """Cut out the largest filled rectangles while they are at least ``min_size`` a side."""
    region = region.copy()
    tiles = []
    while True:
        best = largest_rectangle(region)
        if best is None or min(best.w, best.h) < min_size:
            break
        tiles.append(best)
        region[best.y : best.y + best.h, best.x : best.x + best.w] = False
    rejected = []
    if region.any():
        count, _, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=4)
        for k in range(1, count):
            px, py, pw, ph, area = (int(v) for v in stats[k])
            rejected.append((Tile(y=py, x=px, h=ph, w=pw), f"fragment that is not a rectangular tile ({area} px)"))
    return tiles, rejected


def find_tiles(image: np.ndarray, *, min_size: int = 8, black_level: int = 0, min_fill: float = 0.95,
               remove_marks: bool = True) -> TileSearch:
    """Find the tiles of a collage (H x W or H x W x C): see the module docstring.

    With ``remove_marks`` the marks drawn on a monochrome collage (:func:`drawn_marks`) count as
    black canvas.
    """
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    marks = drawn_marks(image) if remove_marks else None
    brightness = image.max(axis=2) if image.ndim == 3 else image
    foreground = brightness > black_level
    if marks is not None:
        foreground &= ~marks
    foreground = foreground.astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=4)
    result = TileSearch()
    for index in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[index])
        if area >= min_fill * w * h:
            tile = Tile(y=y, x=x, h=h, w=w)
            if min(w, h) < min_size:
                result.rejected.append((tile, f"smaller than {min_size} px"))
            else:
                result.tiles.append(tile)
            continue
        region = labels[y : y + h, x : x + w] == index
        tiles, rejected = _decompose(region, min_size, min_fill)
        result.tiles += [Tile(y=y + t.y, x=x + t.x, h=t.h, w=t.w) for t in tiles]
        result.rejected += [(Tile(y=y + t.y, x=x + t.x, h=t.h, w=t.w), why) for t, why in rejected]
    result.tiles.sort()
    result.rejected.sort()
    return result


def _grey(collage: np.ndarray, tiles: Sequence[Tile]) -> bool:
    if collage.ndim == 2:
        return True
    equal = total = 0
    for tile in tiles:
        crop = collage[tile.y : tile.y + tile.h, tile.x : tile.x + tile.w]
        equal += int(((crop[..., 0] == crop[..., 1]) & (crop[..., 1] == crop[..., 2])).sum())
        total += tile.w * tile.h
    return total > 0 and equal >= GREY_SHARE * total


def _to_grey(crop: np.ndarray) -> np.ndarray:
    if crop.ndim == 2:
        return crop
    # BT.601 luminance: exact on grey pixels, a fair value on the few coloured ones (drawn marks).
    y = crop.astype(np.float32) @ np.asarray(LUMINANCE_WEIGHTS["bt601"], np.float32)
    top = 65535 if crop.dtype == np.uint16 else 255
    return np.clip(np.rint(y), 0, top).astype(crop.dtype)


def lst_boxes(lst: str | Path, collage_name: str) -> list[tuple[int, int, int, int]]:
    """The (x, y, w, h) of every particle a ``.lst`` places in the collage ``collage_name``."""
    frame = read_lst(lst).frame
    if "collage_file" not in frame.columns:
        raise CurationError("the .lst names no collage files", file=lst, hint="give a format 017 .lst")
    rows = frame[frame["collage_file"].str.lower() == collage_name.lower()]
    return [tuple(int(v) for v in r) for r in rows[["image_x", "image_y", "image_w", "image_h"]].to_numpy()]


def split_collages(collages: Sequence[str | Path], out: str | Path, *, min_size: int = 8, black_level: int = 0,
                   min_fill: float = 0.95, mode: str = "auto", label: str = "", group: str = "",
                   sample: str | None = None, instrument: str = "", check_lst: str | Path | None = None,
                   overwrite: bool = False, progress: bool = True) -> Summary:
    """Cut collages into tiles and write them as a dataset (images/<collage>/<n>.png + manifest.csv).

    ``mode`` is ``auto`` (one-channel crops when the tiles are grey, R = G = B, as monochrome FlowCam
    collages saved as RGB), ``rgb`` or ``grey``. Every tile gets ``label``, ``group``, ``instrument``
    and ``sample`` (default: the collage's file name without extension). With ``check_lst`` the tiles
    of each collage are compared with the particles that ``.lst`` places there (count and rectangles,
    in the summary). Rejected regions are listed in ``skipped.csv``.
    """
    if mode not in ("auto", "rgb", "grey"):
        raise CurationError(f"unknown mode '{mode}'", hint="use auto, rgb or grey")
    paths = [Path(c).expanduser() for c in collages]
    if not paths:
        raise CurationError("no collage given", hint="give one or more collage images")
    for path in paths:
        if not path.is_file():
            raise CurationError("collage not found", file=path, hint="check the path")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise CurationError(f"collage name(s) {sorted({s for s in stems if stems.count(s) > 1})} given twice",
                            hint="give each collage once (names must differ)")
    summary = Summary(tool="split_collages", out=Path(out).expanduser().resolve())
    rows = []
    inputs = [*paths, *([Path(check_lst)] if check_lst else [])]
    with OutputFolder(out, overwrite=overwrite, inputs=inputs) as tmp:
        for path in tqdm(paths, desc="collages", unit="collage", disable=True if len(paths) < 2 else tqdm_disable(progress)):
            collage = read_image(path)
            found = find_tiles(collage, min_size=min_size, black_level=black_level, min_fill=min_fill)
            grey = mode == "grey" or (mode == "auto" and _grey(collage, found.tiles))
            for tile, reason in found.rejected:
                summary.skipped.add(path, f"x={tile.x} y={tile.y} {tile.w}x{tile.h}", reason)
            for number, tile in enumerate(found.tiles, start=1):
                crop = collage[tile.y : tile.y + tile.h, tile.x : tile.x + tile.w]
                if grey:
                    crop = _to_grey(crop)
                elif crop.ndim == 2:
                    crop = np.repeat(crop[:, :, None], 3, axis=2)
                rel = f"images/{path.stem}/{number:05d}.png"
                write_png(tmp / rel, np.ascontiguousarray(crop))
                rows.append({"image": rel, "label": label, "particle_id": f"{path.stem}-{number}",
                             "sample": sample if sample is not None else path.stem, "group": group,
                             "instrument": instrument, "collage_file": path.name, "image_x": tile.x,
                             "image_y": tile.y, "image_w": tile.w, "image_h": tile.h})
            text = (f"{len(found.tiles)} tile(s), {len(found.rejected)} region(s) rejected, "
                    f"{'1-channel' if grey else '3-channel'} crops")
            if check_lst is not None:
                listed = lst_boxes(check_lst, path.name)
                same = len({t.box for t in found.tiles} & set(listed))
                summary.details.setdefault("lst_check", {})[path.name] = {  # type: ignore[index]
                    "found": len(found.tiles), "listed": len(listed), "same_place": same}
            summary.details[path.name] = text
        if not rows:
            raise CurationError("no tile found in any collage", hint="check --min-size and --black-level")
        summary.finish(pd.DataFrame(rows), tmp)
    return summary
