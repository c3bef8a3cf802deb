"""The figures of a study report, each generic over the levels it is given (no axis value is known here).

Each function returns a matplotlib figure (or None when there is nothing to draw); the report captions and
saves it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from fimvision.plots import plt

STYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
Runs = Mapping[str, Sequence[str]]  # condition label -> its run folders


def bars(table: pd.DataFrame, levels: Sequence[str], metric: str = "test_acc"):
    """Mean ± sd of ``metric`` (a :func:`~fimvision.study.compare.summarise` table with the columns ``_group``
    and ``_level``): a bar a level, side by side within each group."""
    labels = list(dict.fromkeys(table["_group"]))
    width = 0.8 / len(levels)
    fig, ax = plt.subplots(figsize=(1.6 + (0.4 + 0.3 * len(levels)) * len(labels), 3.6))
    for i, level in enumerate(levels):
        rows = table[table["_level"] == level].set_index("_group").reindex(labels)
        x = np.arange(len(labels)) + (i - (len(levels) - 1) / 2) * width
        ax.bar(x, rows[f"{metric}_mean"], width, yerr=rows[f"{metric}_std"].fillna(0), capsize=3, label=level,
               color=plt.cm.tab10(i % 10))
    ax.set_xticks(range(len(labels)), labels, rotation=15, fontsize=8)
    ax.set_ylabel(f"{metric} (mean ± sd)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return fig


def heatmap(table: pd.DataFrame, names: Mapping[str, str], split: str, metric: str = "test_acc"):
    """``table``: condition rows x split-level columns of mean ``metric``, with the numbers written in."""
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * table.shape[1], 0.8 + 0.45 * table.shape[0]))
    image = ax.imshow(table.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(table.to_numpy(dtype=float)):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(table.shape[1]), [names.get(str(c), f"{split} {c}") for c in table.columns], rotation=30)
    ax.set_yticks(range(table.shape[0]), [" / ".join(map(str, k if isinstance(k, tuple) else (k,)))
                                          for k in table.index])
    fig.colorbar(image, ax=ax, label=f"{metric} (mean over the other replicates)")
    return fig


def held_out_names(run_dirs: Mapping[str, str], split: str) -> dict[str, str]:
    """split level -> 'level (group)' where the level's test predictions hold one group only (the held-out one)."""
    names = {}
    for level, run_dir in run_dirs.items():
        path = Path(run_dir) / "test_predictions.csv"
        if path.is_file():
            groups = pd.read_csv(path, usecols=lambda c: c == "group").get("group")
            if groups is not None and groups.nunique() == 1:
                names[str(level)] = f"{split} {level} ({groups.iloc[0]})"
    return names


def confusions(runs: Runs):
    """The confusion matrices of each condition summed over its runs (rows: true class)."""
    matrices = {}
    for label, dirs in runs.items():
        files = [Path(d) / "confusion_matrix.csv" for d in dirs if (Path(d) / "confusion_matrix.csv").is_file()]
        if files:
            matrices[label] = sum(pd.read_csv(f, index_col=0) for f in files)
    if not matrices:
        return None
    columns = min(2, len(matrices))
    rows = math.ceil(len(matrices) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(matrices):]:
        ax.axis("off")
    for ax, (label, matrix) in zip(axes.flat, matrices.items(), strict=False):
        shares = matrix.to_numpy() / np.maximum(matrix.to_numpy().sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(matrix.to_numpy()):
            ax.text(j, i, f"{int(v)}\n{shares[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=30, fontsize=7)
        ax.set_yticks(range(len(matrix.index)), matrix.index, fontsize=7)
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
    return fig


def vial_accuracy(predictions: pd.DataFrame, class_names: list[str], sizes=(1, 2, 5, 10, 20, 50), draws: int = 50,
                  seed: int = 0) -> pd.DataFrame:
    """Accuracy of a vial's verdict (the class of highest mean probability) from ``k`` of its particles drawn at
    random, against its true class (the majority label), for each ``k`` in ``sizes`` up to the vial's size."""
    rng = np.random.default_rng(seed)
    probs_cols = [f"prob_{c}" for c in class_names]
    rows = []
    for _, vial in predictions[predictions["target"] >= 0].groupby("sample"):
        truth = vial["target"].mode().iloc[0]
        probs = vial[probs_cols].to_numpy()
        for k in sizes:
            if k > len(vial):
                continue
            picks = [rng.choice(len(vial), k, replace=False) for _ in range(draws)]
            correct = np.mean([probs[p].mean(axis=0).argmax() == truth for p in picks])
            rows.append({"particles": k, "correct": correct})
    frame = pd.DataFrame(rows)
    return frame.groupby("particles", as_index=False)["correct"].mean() if len(frame) else frame


def vials(runs: Runs):
    """Vial verdict accuracy against the number of particles pooled, a line a condition."""
    curves = {}
    for label, dirs in runs.items():
        frames = []
        for run_dir in dirs:
            path = Path(run_dir) / "test_predictions.csv"
            if path.is_file():
                predictions = pd.read_csv(path, keep_default_na=False)
                if "sample" in predictions:
                    names = [c.removeprefix("prob_") for c in predictions.columns if c.startswith("prob_")]
                    frames.append(vial_accuracy(predictions, names))
        if frames:
            curves[label] = pd.concat(frames).groupby("particles")["correct"].agg(["mean", "std"]).reset_index()
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, (label, curve) in enumerate(curves.items()):
        ax.errorbar(curve["particles"], curve["mean"], yerr=curve["std"].fillna(0), marker=MARKERS[i % 8],
                    linestyle=STYLES[i % len(STYLES)], capsize=2, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("particles pooled per vial")
    ax.set_ylabel("vial verdict accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    return fig


def learning_curves(runs: Runs):
    """Validation loss and accuracy per epoch, mean over the runs of each condition."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    drawn = False
    for i, (label, dirs) in enumerate(runs.items()):
        frames = [pd.read_csv(Path(d) / "metrics.csv") for d in dirs if (Path(d) / "metrics.csv").is_file()]
        for ax, metric in zip(axes, ("val_loss", "val_acc"), strict=True):
            parts = [f.dropna(subset=[metric])[["epoch", metric]] for f in frames if metric in f]
            if not parts:
                continue
            curve = pd.concat(parts).groupby("epoch")[metric].mean()
            ax.plot(curve.index, curve.to_numpy(), marker=MARKERS[i % 8], linestyle=STYLES[i % len(STYLES)], label=label)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(f"{metric} (mean over runs)")
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    axes[1].legend(fontsize=7)
    return fig


def curves(panels: Mapping[str, pd.DataFrame], x: str, line: str | None, lines: Sequence[str], band: str | None,
           metric: str = "test_acc"):
    """``metric`` against the numeric axis ``x`` (summarise tables, one a panel), a line a level of ``line`` in
    its own colour and style; a level without ``x`` (empty) is a horizontal reference line, ``band`` with its
    sd band."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (title, part) in zip(axes[0], panels.items(), strict=True):
        xs = pd.to_numeric(part[x], errors="coerce")
        ticks = sorted(xs.dropna().unique())
        for level, rows in (part.groupby(line, sort=False) if line else [("all", part)]):
            i = lines.index(level) if level in lines else len(lines)
            colour = plt.cm.tab10(i % 10)
            mean, sd = rows[f"{metric}_mean"].to_numpy(), rows[f"{metric}_std"].fillna(0).to_numpy()
            at = pd.to_numeric(rows[x], errors="coerce")
            if at.notna().all():
                order = np.argsort(at.to_numpy())
                ax.errorbar(at.to_numpy()[order], mean[order], yerr=sd[order], marker=MARKERS[i % 8], capsize=3,
                            color=colour, linestyle=STYLES[i % len(STYLES)], label=str(level))
            else:  # a level that has no value of x: a reference line
                ax.axhline(mean[0], color=colour, linestyle=STYLES[i % len(STYLES)], linewidth=1.6,
                           label=f"{level} (no {x})")
                if level == band:
                    ax.axhspan(mean[0] - sd[0], mean[0] + sd[0], color=colour, alpha=0.12)
        ax.set_xticks(ticks)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(x)
        ax.set_ylabel(f"{metric} (mean ± sd)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return fig


def scores_against(results: pd.DataFrame, scores: Sequence[str], labels: pd.Series, metric: str = "test_acc"):
    """Each unsupervised score against ``metric``, a point a run, coloured by its condition ``labels``."""
    fig, axes = plt.subplots(1, len(scores), figsize=(4.4 * len(scores), 3.6), squeeze=False)
    names = list(dict.fromkeys(labels))
    for ax, score in zip(axes[0], scores, strict=True):
        for i, name in enumerate(names):
            rows = results[(labels == name).to_numpy()].dropna(subset=[score])
            ax.scatter(rows[score], rows[metric], color=plt.cm.tab10(i % 10), marker=MARKERS[i % 8], label=name)
        ax.set_xlabel(f"{score} (unsupervised selection score)")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    return fig
