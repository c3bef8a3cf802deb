"""The report of a study, rebuilt from ``results.csv`` and the run folders: ``report.md``, PNGs, ``report.html``.

Colour against mono (a ``modality`` axis with both): per model, mean ± sd of each, the paired difference
over the pairs (fold, seed) both modalities ran, a paired t-test and a Wilcoxon signed-rank test with the
effect size d_z = mean(diff) / sd(diff), and a plain verdict that says when there are too few pairs; a
heat map of accuracy per held-out group (fold); summed confusion matrices; the accuracy of a vial's
verdict against the number of particles pooled per vial; learning curves.

Adaptation (a ``method`` axis): accuracy against shots per method, the shot-free methods (the source
model, SHOT, NRC, AaD) as reference lines, each method its own colour and line style; the table grouped
by method and ordered by shots; SND and IM against accuracy.
"""

from __future__ import annotations

import base64
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from scipy import stats

from fimvision.plots import plt, save_figure
from fimvision.study.config import FOLD, METHOD, MODALITY, SEED, SHOTS

METRICS = ("test_acc", "test_balanced_acc", "test_f1_macro")
# Fewer pairs than this: the paired tests are reported, but no conclusion is drawn.
MIN_PAIRS = 5
STYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


# ------------------------------------------------------------------------------------------------ statistics
def summarise(results: pd.DataFrame, by: list[str], metrics=METRICS) -> pd.DataFrame:
    """Mean, sample standard deviation (ddof 1) and count of each metric per group of ``by``."""
    present = [m for m in metrics if m in results]
    table = results.groupby(by, sort=False, dropna=False)[present].agg(["mean", "std", "count"])
    table.columns = [f"{m}_{s}" for m, s in table.columns]
    return table.reset_index()


def paired_comparison(results: pd.DataFrame, *, factor: str = MODALITY, a: str = "color", b: str = "mono",
                      pair_on: tuple[str, ...] = (FOLD, SEED), within: tuple[str, ...] = ("model",),
                      metric: str = "test_acc") -> pd.DataFrame:
    """``a`` against ``b`` of ``factor`` within each group of ``within``, paired on ``pair_on``: means, sds, the
    paired difference, the paired t-test and Wilcoxon p-values, the effect size d_z and a verdict."""
    keys = [k for k in pair_on if k in results]
    groups = [k for k in within if k in results]
    rows = []
    for name, part in (results.groupby(groups, sort=False) if groups else [((), results)]):
        wide = part.pivot_table(index=keys or None, columns=factor, values=metric, aggfunc="mean")
        if a not in wide or b not in wide:
            continue
        pairs = wide[[a, b]].dropna()
        diff = pairs[a] - pairs[b]
        n = len(diff)
        row = dict(zip(groups, name if isinstance(name, tuple) else (name,), strict=True))
        row.update({"metric": metric, "n_pairs": n, f"mean_{a}": part.loc[part[factor] == a, metric].mean(),
                    f"sd_{a}": part.loc[part[factor] == a, metric].std(), f"mean_{b}": part.loc[part[factor] == b, metric].mean(),
                    f"sd_{b}": part.loc[part[factor] == b, metric].std(), "mean_diff": diff.mean(),
                    "sd_diff": diff.std() if n > 1 else math.nan})
        row["d_z"] = row["mean_diff"] / row["sd_diff"] if n > 1 and row["sd_diff"] > 0 else math.nan
        row["p_ttest"] = float(stats.ttest_rel(pairs[a], pairs[b]).pvalue) if n > 1 and diff.std() > 0 else math.nan
        row["p_wilcoxon"] = float(stats.wilcoxon(diff).pvalue) if n > 0 and (diff != 0).any() else math.nan
        row["verdict"] = verdict(row, a, b)
        rows.append(row)
    return pd.DataFrame(rows)


def verdict(row: dict, a: str, b: str) -> str:
    n = row["n_pairs"]
    if n < MIN_PAIRS:
        return f"too few pairs to conclude ({n} < {MIN_PAIRS})"
    p = row["p_ttest"]
    if not p < 0.05:
        return f"no significant difference (paired t-test p = {p:.3g})"
    better = a if row["mean_diff"] > 0 else b
    return f"{better} better by {abs(row['mean_diff']):.3f} (paired t-test p = {p:.3g}, d_z = {row['d_z']:.2f})"


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


# ------------------------------------------------------------------------------------------------ the report
class Report:
    """Builds the report of a study folder from its results.csv (see the module docstring)."""

    def __init__(self, out: str | Path, title: str = "study") -> None:
        self.out, self.title = Path(out), title
        self.results = pd.read_csv(self.out / "results.csv", keep_default_na=False, na_values=[""])
        self.sections: list[str] = []
        self.figures: list[Path] = []

    def build(self) -> Path:
        r = self.results
        self.sections.append(f"# {self.title}\n\n{len(r)} finished runs. Mean ± sample sd (ddof 1) over the runs "
                             "of each row; every table and figure is rebuilt from `results.csv` and the run folders "
                             "(`fimvision-study report DIR`).")
        tested = r.dropna(subset=["test_acc"]) if "test_acc" in r else r.iloc[:0]
        compared = tested[tested[MODALITY].notna()] if MODALITY in tested else tested.iloc[:0]
        if {"color", "mono"} <= set(compared.get(MODALITY, pd.Series(dtype=str)).astype(str)):
            self.colour_against_mono(compared)
        adapted = tested[tested[METHOD].notna()] if METHOD in tested else tested.iloc[:0]
        if len(adapted):
            self.adaptation(adapted)
        if len(self.sections) == 1 and len(tested):
            by = [c for c in tested.columns if c in ("stage", "model", MODALITY)]
            self.sections.append("## Results\n\n" + markdown(compact(summarise(tested, by or ["stage"]))))
        text = "\n\n".join(self.sections) + "\n"
        (self.out / "report.md").write_text(text)
        self.html(text)
        return self.out / "report.md"

    def figure(self, fig, name: str, caption: str) -> None:
        width = fig.get_size_inches()[0]
        fig.suptitle(textwrap.fill(self.title, max(40, int(14 * width))), fontsize=8)  # a figure shared alone says what it shows
        path = save_figure(fig, self.out / name)
        self.figures.append(path)
        self.sections.append(f"![{caption}]({name})\n\n*{caption}*")

    # -- colour against mono
    def colour_against_mono(self, r: pd.DataFrame) -> None:
        within = ["model"] if "model" in r else []
        table = summarise(r, [*within, MODALITY])
        self.sections.append("## Colour against mono\n\n" + markdown(compact(table)))
        comparison = pd.concat([paired_comparison(r, within=tuple(within), metric=m) for m in METRICS if m in r])
        comparison.to_csv(self.out / "paired_color_vs_mono.csv", index=False)
        self.sections.append(f"### Colour - mono, paired on the same {' and '.join(k for k in (FOLD, SEED) if k in r)}"
                             f"\n\nPaired t-test and Wilcoxon signed-rank test over the pairs; d_z = mean / sd of the "
                             f"differences; fewer than {MIN_PAIRS} pairs: no conclusion. All columns: "
                             "`paired_color_vs_mono.csv`.\n\n" + markdown(readable_comparison(comparison)))
        self.bars(r, within)
        if FOLD in r:
            self.fold_heatmap(r, within)
        self.confusions(r, within)
        self.vials(r, within)
        self.learning_curves(r, within)

    def bars(self, r: pd.DataFrame, within: list[str]) -> None:
        table = summarise(r, [*within, MODALITY], ("test_acc",))
        labels = list(dict.fromkeys(table[within[0]])) if within else ["all"]
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(labels), 3.6))
        for i, modality in enumerate(("color", "mono")):
            part = table[table[MODALITY] == modality].set_index(within[0] if within else MODALITY)
            part = part.reindex(labels) if within else part
            x = np.arange(len(labels)) + (i - 0.5) * 0.38
            ax.bar(x, part["test_acc_mean"], 0.38, yerr=part["test_acc_std"].fillna(0), capsize=3, label=modality,
                   color="tab:orange" if modality == "color" else "tab:gray")
        ax.set_xticks(range(len(labels)), labels, rotation=15)
        ax.set_ylabel("test accuracy (mean ± sd)")
        ax.set_ylim(0, 1)
        ax.legend()
        self.figure(fig, "color_vs_mono.png", "Test accuracy per model, colour and mono (mean ± sd over folds and seeds)")

    def fold_heatmap(self, r: pd.DataFrame, within: list[str]) -> None:
        table = r.pivot_table(index=[*within, MODALITY], columns=FOLD, values="test_acc", aggfunc="mean")
        names = self._fold_names(r)
        fig, ax = plt.subplots(figsize=(1.5 + 0.8 * table.shape[1], 0.8 + 0.45 * table.shape[0]))
        image = ax.imshow(table.to_numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(table.to_numpy()):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
        ax.set_xticks(range(table.shape[1]), [names.get(str(c), f"fold {c}") for c in table.columns], rotation=30)
        ax.set_yticks(range(table.shape[0]), [" / ".join(map(str, k if isinstance(k, tuple) else (k,)))
                                              for k in table.index])
        fig.colorbar(image, ax=ax, label="test accuracy (mean over seeds)")
        self.figure(fig, "fold_heatmap.png", "Accuracy per held-out group (fold), mean over seeds")

    def _fold_names(self, r: pd.DataFrame) -> dict[str, str]:
        """fold -> 'fold i (group)' from the test predictions of the runs (the held-out group)."""
        names = {}
        for fold, run_dir in r.groupby(FOLD)["run_dir"].first().items():
            path = Path(run_dir) / "test_predictions.csv"
            if path.is_file():
                groups = pd.read_csv(path, usecols=lambda c: c == "group").get("group")
                if groups is not None and groups.nunique() == 1:
                    names[str(fold)] = f"fold {fold} ({groups.iloc[0]})"
        return names

    def _runs_by(self, r: pd.DataFrame, within: list[str]):
        for key, part in r.groupby([*within, MODALITY], sort=False):
            yield (" / ".join(map(str, key)) if isinstance(key, tuple) else str(key)), part

    def confusions(self, r: pd.DataFrame, within: list[str]) -> None:
        matrices = {}
        for label, part in self._runs_by(r, within):
            files = [Path(d) / "confusion_matrix.csv" for d in part["run_dir"] if (Path(d) / "confusion_matrix.csv").is_file()]
            if files:
                total = sum(pd.read_csv(f, index_col=0) for f in files)
                matrices[label] = total
        if not matrices:
            return
        columns = min(2, len(matrices))  # colour and mono side by side, a model a row
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
        self.figure(fig, "confusion_matrices.png", "Confusion matrices summed over folds and seeds (rows: true class)")

    def vials(self, r: pd.DataFrame, within: list[str]) -> None:
        curves = {}
        for label, part in self._runs_by(r, within):
            frames = []
            for run_dir in part["run_dir"]:
                path = Path(run_dir) / "test_predictions.csv"
                if path.is_file():
                    predictions = pd.read_csv(path, keep_default_na=False)
                    if "sample" in predictions:
                        names = [c.removeprefix("prob_") for c in predictions.columns if c.startswith("prob_")]
                        frames.append(vial_accuracy(predictions, names))
            if frames:
                curves[label] = pd.concat(frames).groupby("particles")["correct"].agg(["mean", "std"]).reset_index()
        if not curves:
            return
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for i, (label, curve) in enumerate(curves.items()):
            ax.errorbar(curve["particles"], curve["mean"], yerr=curve["std"].fillna(0), marker=MARKERS[i % 8],
                        linestyle=STYLES[i % len(STYLES)], capsize=2, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("particles pooled per vial")
        ax.set_ylabel("vial verdict accuracy")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
        self.figure(fig, "vial_accuracy.png", "Accuracy of a vial's verdict (mean probability) against the number "
                    "of its particles pooled: how many particles a verdict needs")

    def learning_curves(self, r: pd.DataFrame, within: list[str]) -> None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        drawn = False
        for i, (label, part) in enumerate(self._runs_by(r, within)):
            frames = [pd.read_csv(Path(d) / "metrics.csv") for d in part["run_dir"] if (Path(d) / "metrics.csv").is_file()]
            if not frames:
                continue
            for ax, metric in zip(axes, ("val_loss", "val_acc"), strict=True):
                per_epoch = pd.concat(f.dropna(subset=[metric])[["epoch", metric]] for f in frames if metric in f)
                curve = per_epoch.groupby("epoch")[metric].mean()
                ax.plot(curve.index, curve.to_numpy(), marker=MARKERS[i % 8], linestyle=STYLES[i % len(STYLES)],
                        label=label)
                ax.set_xlabel("epoch")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_ylabel(f"{metric} (mean over runs)")
                drawn = True
        if drawn:
            axes[1].legend(fontsize=7)
            self.figure(fig, "learning_curves.png", "Validation loss and accuracy per epoch, mean over folds and seeds")
        else:
            plt.close(fig)

    # -- adaptation
    def adaptation(self, r: pd.DataFrame) -> None:
        r = r.copy()
        r[SHOTS] = pd.to_numeric(r[SHOTS], errors="coerce").fillna(0).astype(int) if SHOTS in r else 0
        setting = [c for c in ("stage", "scenario") if c in r and r[c].nunique() > 1] or ["stage"]
        methods = list(dict.fromkeys(r[METHOD]))  # the study's order, whatever was added later
        r["_order"] = r[METHOD].map(methods.index)
        table = summarise(r.sort_values([*setting, "_order", SHOTS], kind="stable"), [*setting, METHOD, SHOTS])
        self.sections.append("## Adaptation: accuracy on the target test part\n\nRows grouped by method and ordered "
                             "by shots (0: a method that uses no labelled target image).\n\n" + markdown(compact(table)))
        settings = list(table.groupby(setting, sort=False))
        fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 3.8), squeeze=False)
        colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
        for ax, (name, part) in zip(axes[0], settings, strict=True):
            shots = sorted(part.loc[part[SHOTS] > 0, SHOTS].unique()) or [1]
            for method, rows in part.groupby(METHOD, sort=False):
                i = methods.index(method)
                mean, sd = rows["test_acc_mean"].to_numpy(), rows["test_acc_std"].fillna(0).to_numpy()
                if (rows[SHOTS] > 0).all():
                    ax.errorbar(rows[SHOTS], mean, yerr=sd, marker=MARKERS[i % 8], capsize=3, color=colours[method],
                                linestyle=STYLES[i % len(STYLES)], label=method)
                else:  # no labelled target image: a reference line (the source model's with its sd band)
                    ax.axhline(mean[0], color=colours[method], linestyle=STYLES[i % len(STYLES)], linewidth=1.6,
                               label=f"{method} (no shots)")
                    if method == "source_only":
                        ax.axhspan(mean[0] - sd[0], mean[0] + sd[0], color=colours[method], alpha=0.12)
            ax.set_xticks(shots)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("labelled target images per class")
            ax.set_ylabel("test accuracy (mean ± sd over seeds)")
            ax.set_title(" / ".join(map(str, name)) if isinstance(name, tuple) else str(name), fontsize=9)
            ax.legend(fontsize=7)
        self.figure(fig, "accuracy_vs_shots.png", "Accuracy against shots per method; shot-free methods as reference lines")
        scores = [s for s in ("val_snd", "val_im") if s in r and r[s].notna().any()]
        if scores:
            fig, axes = plt.subplots(1, len(scores), figsize=(4.4 * len(scores), 3.6), squeeze=False)
            for ax, score in zip(axes[0], scores, strict=True):
                for method, rows in r.dropna(subset=[score]).groupby(METHOD):
                    ax.scatter(rows[score], rows["test_acc"], color=colours.get(method), label=method,
                               marker=MARKERS[methods.index(method) % 8] if method in methods else "o")
                ax.set_xlabel(f"{score} (unsupervised selection score)")
                ax.set_ylabel("test accuracy")
                ax.legend(fontsize=7)
            self.figure(fig, "selection_scores.png", "Unsupervised model-selection scores (SND, IM) against accuracy")

    # -- HTML
    def html(self, text: str) -> Path:
        """report.html: the tables and figures of report.md in one file, images embedded."""
        body = []
        for block in text.split("\n\n"):
            if block.startswith("!["):
                name = block[block.index("](") + 2:block.index(")", block.index("]("))]
                data = base64.b64encode((self.out / name).read_bytes()).decode()
                body.append(f'<p><img src="data:image/png;base64,{data}" style="max-width:100%"></p>')
            elif block.startswith("#"):
                level = len(block) - len(block.lstrip("#"))
                body.append(f"<h{level}>{block.lstrip('#').strip()}</h{level}>")
            elif block.startswith("|"):
                lines = [line.strip("|").split("|") for line in block.splitlines() if not set(line) <= set("|-: ")]
                head, rows = lines[0], lines[1:]
                body.append("<table border=1 cellpadding=3><tr>" + "".join(f"<th>{h.strip()}</th>" for h in head)
                            + "</tr>" + "".join("<tr>" + "".join(f"<td>{c.strip()}</td>" for c in row) + "</tr>"
                                                for row in rows) + "</table>")
            else:
                body.append(f"<p>{block}</p>")
        path = self.out / "report.html"
        path.write_text(f"<!doctype html><meta charset=utf-8><title>{self.title}</title><body style='font-family:"
                        f"sans-serif;max-width:1100px'>{''.join(body)}</body>")
        return path


def readable_comparison(comparison: pd.DataFrame, a: str = "color", b: str = "mono") -> pd.DataFrame:
    """A :func:`paired_comparison` table for reading: ``mean ± sd`` cells, p-values to 2 significant digits."""
    keys = [c for c in comparison.columns if c not in ("n_pairs", "d_z", "p_ttest", "p_wilcoxon", "verdict")
            and not c.startswith(("mean_", "sd_"))]
    out = comparison[keys].copy()
    out["pairs"] = comparison["n_pairs"]
    for name, column in ((a, a), (b, b), (f"{a} - {b}", "diff")):
        out[name] = [f"{m:.3f} ± {sd:.3f}" if sd == sd else f"{m:.3f}"
                     for m, sd in zip(comparison[f"mean_{column}"], comparison[f"sd_{column}"], strict=True)]
    out["d_z"] = comparison["d_z"].map(lambda v: f"{v:.2f}" if v == v else "-")
    for column in ("p_ttest", "p_wilcoxon"):
        out[column] = comparison[column].map(lambda v: f"{v:.2g}" if v == v else "-")
    out["verdict"] = comparison["verdict"]
    return out


def compact(table: pd.DataFrame) -> pd.DataFrame:
    """A :func:`summarise` table for reading: each metric as one ``mean ± sd`` column, one ``runs`` column."""
    metrics = [c.removesuffix("_mean") for c in table.columns if c.endswith("_mean")]
    keys = [c for c in table.columns if not c.endswith(("_mean", "_std", "_count"))]
    out = table[keys].copy()
    for m in metrics:
        out[m] = [f"{mean:.3f} ± {sd:.3f}" if sd == sd else f"{mean:.3f}"
                  for mean, sd in zip(table[f"{m}_mean"], table[f"{m}_std"], strict=True)]
    if metrics:
        out["runs"] = table[f"{metrics[0]}_count"].astype(int)
    return out


def markdown(frame: pd.DataFrame) -> str:
    """A markdown table, numbers to 4 significant digits."""
    if frame.empty:
        return "(no rows)"
    cells = frame.map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.to_numpy().tolist()]
    return "\n".join(lines)


def write_report(out: str | Path, title: str = "study") -> Path:
    """report.md, report.html and the figures of the study folder ``out`` (from its results.csv)."""
    return Report(out, title).build()
