"""A one-page look at a dataset: crops per class in colour and mono side by side, and per-class
histograms of ESD and circularity.

Mono is the BT.601 luminance of the colour crop (0.299 R + 0.587 G + 0.114 B, the default of
``fimvision.data.dataset``), so the page shows what a mono model sees. Crops are padded to square
with their own border colour (the tile background), as the training transforms do, then scaled to
the cell; 16-bit crops are scaled for display by the 99.5th percentile of the crops shown.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from fimvision.curation.output import load_dataset
from fimvision.errors import CurationError
from fimvision.imageio import LUMINANCE_WEIGHTS, read_image

LUMA = np.asarray(LUMINANCE_WEIGHTS["bt601"], np.float32)
UNLABELLED = "(unlabelled)"


def _square(image: np.ndarray) -> np.ndarray:
    """Pad to square with the median colour of the crop's border."""
    h, w = image.shape[:2]
    side = max(h, w)
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).reshape(-1, image.shape[2])
    fill = np.median(border, axis=0)
    canvas = np.empty((side, side, image.shape[2]), image.dtype)
    canvas[:] = fill.astype(image.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top : top + h, left : left + w] = image
    return canvas


def montage(images: list[np.ndarray], *, columns: int, cell: int) -> np.ndarray:
    """Float RGB (0-1) grid of square-padded crops, ``columns`` wide, black where empty."""
    rows = max(1, -(-len(images) // columns))
    sheet = np.zeros((rows * cell, columns * cell, 3), np.float32)
    for k, image in enumerate(images):
        tile = cv2.resize(_square(image), (cell - 2, cell - 2), interpolation=cv2.INTER_AREA)
        if tile.ndim == 2:
            tile = tile[:, :, None]
        r, c = divmod(k, columns)
        sheet[r * cell + 1 : (r + 1) * cell - 1, c * cell + 1 : (c + 1) * cell - 1] = tile
    return sheet


def _as_float_rgb(image: np.ndarray, scale: float) -> np.ndarray:
    image = image.astype(np.float32) / np.float32(scale)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.clip(image, 0, 1)


def preview(dataset: str | Path, out: str | Path, *, per_class: int = 16, columns: int = 4, cell: int = 48,
            max_classes: int = 12, seed: int = 0, overwrite: bool = False) -> dict[str, int]:
    """Write the preview PNG of ``dataset`` to ``out``; returns the particles per class shown.

    An existing ``out`` is refused unless ``overwrite``; the file appears only when complete.
    """
    from fimvision.plots import plt, save_figure

    root = Path(dataset).expanduser().resolve()
    out = Path(out).expanduser()
    if out.suffix.lower() != ".png":
        raise CurationError("the preview is written as PNG", file=out, hint="give an output name ending in .png")
    if out.resolve().is_relative_to(root):
        raise CurationError("the preview would be written inside the dataset", file=out,
                            hint="write it elsewhere; inputs are never modified")
    if out.exists() and not overwrite:
        raise CurationError("the preview file exists", file=out, hint="choose another name, or pass --overwrite")
    frame = load_dataset(root)
    frame["class"] = frame["label"].replace("", UNLABELLED)
    classes = sorted(c for c in frame["class"].unique() if c != UNLABELLED)
    if (frame["class"] == UNLABELLED).any():
        classes.append(UNLABELLED)
    if len(classes) > max_classes:
        counts = frame["class"].value_counts()
        classes = sorted(counts.index[:max_classes], key=classes.index)
    rng = np.random.default_rng(seed)
    picked: dict[str, list[np.ndarray]] = {}
    for name in classes:
        rows = np.flatnonzero((frame["class"] == name).to_numpy())
        chosen = np.sort(rng.choice(rows, size=min(per_class, len(rows)), replace=False))
        picked[name] = [read_image(root / frame["image"].iloc[i]) for i in chosen]
    crops = [image for images in picked.values() for image in images]
    native_mono = all(image.ndim == 2 for image in crops)
    deep = [image for image in crops if image.dtype == np.uint16]
    scale16 = float(np.percentile(np.concatenate([d.ravel() for d in deep]), 99.5)) if deep else 65535.0
    features = [c for c in ("esd_um", "circularity") if c in frame.columns
                and pd.to_numeric(frame[c], errors="coerce").notna().any()]

    n = len(classes)
    sheet_rows = -(-per_class // columns)
    height = n * (sheet_rows * cell / 80 + 0.5) + (3.2 if features else 0)
    fig = plt.figure(figsize=(2 * columns * cell / 80 + 1.5, max(3.0, height)), dpi=100)
    grid = fig.add_gridspec(n + (1 if features else 0), 2, height_ratios=[sheet_rows] * n + ([sheet_rows * 1.6] if features else []))
    for k, name in enumerate(classes):
        images = [_as_float_rgb(i, scale16 if i.dtype == np.uint16 else 255.0) for i in picked[name]]
        colour = montage(images, columns=columns, cell=cell)
        mono = np.repeat((colour @ LUMA)[:, :, None], 3, axis=2)
        count = int((frame["class"] == name).sum())
        for j, (sheet, title) in enumerate(((colour, "native mono" if native_mono else "colour"), (mono, "mono (BT.601)"))):
            axis = fig.add_subplot(grid[k, j])
            axis.imshow(sheet, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(f"{name} (n={count}): {title}", fontsize=8)
    for j, column in enumerate(features):
        axis = fig.add_subplot(grid[n, j])
        values = pd.to_numeric(frame[column], errors="coerce")
        finite = values[np.isfinite(values)]
        positive = column == "esd_um" and (finite > 0).all() and len(finite)
        bins = (np.geomspace(finite.min(), finite.max(), 30) if positive and finite.max() > finite.min()
                else np.linspace(finite.min(), finite.max() if finite.max() > finite.min() else finite.min() + 1, 30))
        for name in classes:
            part = values[(frame["class"] == name).to_numpy()].dropna()
            if len(part):
                axis.hist(part, bins=bins, histtype="step", density=True, label=f"{name} ({len(part)})")
        if positive:
            from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

            axis.set_xscale("log")
            axis.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.xaxis.set_major_formatter(ScalarFormatter())
            axis.xaxis.set_minor_formatter(NullFormatter())  # minor labels on a short log axis overlap
        axis.set_xlabel("ESD (µm)" if column == "esd_um" else "circularity", fontsize=8)
        axis.set_ylabel("density", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=6)
    fig.suptitle(f"{root.name}: {len(frame)} particles, {len([c for c in classes if c != UNLABELLED])} classes",
                 fontsize=10)
    save_figure(fig, out, dpi=100)
    return {name: len(images) for name, images in picked.items()}
