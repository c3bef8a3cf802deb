"""Figures shared by training, prediction, the demo and study reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; these machines have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fimvision.files import write_atomically  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 120) -> Path:
    """Lay out, save (creating the folder; the file appears only when complete) and close ``fig``; returns the path."""
    fig.tight_layout()
    try:
        return write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=Path(path).suffix[1:] or "png"))
    finally:
        plt.close(fig)


def confusion_matrix_png(matrix: np.ndarray, classes: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Save a confusion matrix (rows: true class, columns: predicted) with counts and row shares."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = 1.6 + 0.7 * len(classes)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, f"{count}\n{shares[i, j]:.0%}", ha="center", va="center",
                color="white" if shares[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def grouped_bars_png(values: Mapping[str, Mapping[str, float]], path: str | Path, *, title: str = "",
                     ylabel: str = "", errors: Mapping[str, Mapping[str, float]] | None = None) -> Path:
    """Save grouped bars: ``values[series][metric]`` (e.g. modality -> metric -> value), optional error bars."""
    series = list(values)
    metrics = list(next(iter(values.values())))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(1.5 + 1.4 * len(metrics), 3.6))
    for k, name in enumerate(series):
        x = np.arange(len(metrics)) + (k - (len(series) - 1) / 2) * width
        heights = [values[name][m] for m in metrics]
        yerr = [errors[name][m] for m in metrics] if errors else None
        bars = ax.bar(x, heights, width, yerr=yerr, label=name, capsize=3)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    return save_figure(fig, path)
