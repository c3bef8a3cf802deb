"""Instrument-like measurements of a particle from its mask and pixels, never from its label.

The synthetic manifest and the FlowCam-format writer (:mod:`fimvision.curation.flowcam_writer`)
share these definitions, and the columns are named as :mod:`fimvision.curation.flowcam` names the
same measurement of a real VisualSpreadsheet export, so one ``features: [...]`` list means the same
on synthetic and on curated data:

- ``esd_um``: area-equivalent diameter, ``2 sqrt(area / pi) x um_per_px``.
- ``circularity``: ``min(1, 4 pi area / perimeter^2)``; the perimeter runs through the boundary pixel
  centres plus ``pi`` a contour (the outline's length), so a rasterised disc scores about 0.9.
- ``aspect_ratio``: width / length of the minimum-area rectangle.
- ``mean_intensity``: mean BT.601 luminance (0.299 R + 0.587 G + 0.114 B) over the mask.
- ``area_px``: mask pixels.
- ``convexity``: ``min(1, area / convex hull area)``, the hull through the boundary pixel centres
  (0 when the hull has no area: a one-pixel-wide line). This is VisualSpreadsheet's "Convexity":
  on the real 4.19.3 exports ``min(1, raw_filled_area / raw_convex_hull_area)`` equals it for every
  particle to the 4 decimals it writes.
- ``edge_gradient``: mean luminance gradient magnitude (central differences, ``|Sobel 3x3| / 8``,
  8-bit levels a pixel) over the particle's outline: the mask pixels with a 4-neighbour outside it.
- ``avg_red``, ``avg_green``, ``avg_blue``: mean R, G, B over the mask (8-bit levels; a grey tile
  gives three equal values).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from fimvision.data.synthetic.config import LUMA_BT601

_LUMA = np.asarray(LUMA_BT601, np.float32)
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def rgb(image: np.ndarray) -> np.ndarray:
    """``image`` as H x W x 3 (a grey tile repeated on three channels)."""
    return image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)


def contours(mask: np.ndarray) -> list[np.ndarray]:
    """The outer contours of a boolean mask, through the boundary pixel centres (no approximation)."""
    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return list(found)


def convexity(area: float, hull_area: float) -> float:
    """VisualSpreadsheet's convexity: ``min(1, area / convex hull area)``, 0 for a hull without area."""
    return min(1.0, area / hull_area) if hull_area > 0 else 0.0


def edge_gradient(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean luminance gradient magnitude (8-bit levels a pixel) over the mask's outline pixels."""
    luma = rgb(image).astype(np.float32) @ _LUMA
    gx = cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
    inside = mask.astype(np.uint8)
    eroded = cv2.erode(inside, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    outline = (inside > 0) & (eroded == 0)
    if not outline.any():
        return 0.0
    return float(np.mean(np.hypot(gx[outline], gy[outline]), dtype=np.float64) / 8.0)


def mean_rgb(image: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """Mean R, G and B over the mask (8-bit levels)."""
    pixels = rgb(image)[mask].astype(np.float64)
    red, green, blue = pixels.mean(axis=0) if len(pixels) else (0.0, 0.0, 0.0)
    return float(red), float(green), float(blue)


def measure_particle(image: np.ndarray, mask: np.ndarray, um_per_px: float) -> dict[str, float]:
    """Every manifest measurement of a particle (see the module docstring) from its tile and mask."""
    area = float(np.count_nonzero(mask))
    outer = contours(mask)
    points = np.concatenate(outer)
    perimeter = sum(cv2.arcLength(c, True) + math.pi for c in outer)
    (_, _), (w, h), _ = cv2.minAreaRect(outer[0] if len(outer) == 1 else points)
    grey = rgb(image)[mask].astype(np.float32) @ _LUMA
    red, green, blue = mean_rgb(image, mask)
    return {
        "esd_um": 2.0 * math.sqrt(area / math.pi) * um_per_px,
        "circularity": float(min(1.0, 4 * math.pi * area / perimeter**2)),
        "aspect_ratio": float(min(w, h) / max(w, h)) if max(w, h) > 0 else 1.0,
        "mean_intensity": float(grey.mean()),
        "area_px": area,
        "convexity": convexity(area, float(cv2.contourArea(cv2.convexHull(points)))),
        "edge_gradient": edge_gradient(image, mask),
        "avg_red": red,
        "avg_green": green,
        "avg_blue": blue,
    }
