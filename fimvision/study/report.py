"""The report of a study, rebuilt from ``results.csv`` and the run folders: ``report.md``, PNGs, ``report.html``.

For every compared axis (see :mod:`fimvision.study.config`: ``compare:``, by default every axis that is not a
replicate such as the seed, fold or split): a table of mean ± sd per level (within each combination of the
other axes); per split or fold level (an axis of ``replicates`` other than the seed) the same per held-out
part; and each level against the axis's reference level, paired on the replicates both ran (the same seed,
fold, split), with the mean and sd of the paired differences, a paired t-test and a Wilcoxon signed-rank
test, the effect size d_z = mean(diff) / sd(diff) and a plain verdict that says when there are too few pairs
(``compare_<axis>.csv``: every metric). Figures: bars per compared axis; accuracy per split level as a heat
map; accuracy against every numeric axis (e.g. shots), a line a level of the axis it depends on, levels
without it as reference lines; the confusion matrices summed over each condition's runs; the accuracy of a
vial's verdict against the number of particles pooled; learning curves; unsupervised selection scores
(SND, IM) against accuracy.
"""

from __future__ import annotations

import base64
import re
import textwrap
from pathlib import Path

import pandas as pd

from fimvision.plots import save_figure
from fimvision.study import figures
from fimvision.study.compare import (
    MIN_PAIRS,
    PRIMARY,
    RESULT_COLUMNS,
    Design,
    compare_levels,
    paired_comparison,
    summarise,
    verdict,
)

# what scripts import from here (benchmarks/color_transfer.py: paired_comparison)
__all__ = ["MIN_PAIRS", "Design", "Report", "paired_comparison", "summarise", "verdict", "write_report"]

# Conditions beyond this count get no per-condition figures (confusion matrices, vial and learning curves).
MAX_CONDITIONS = 12
MAX_PANELS = 8
SCORES = ("val_snd", "val_im")  # unsupervised model-selection scores, drawn against accuracy when logged


def safe(name: str) -> str:
    """``name`` fit for a file name."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)


def mean_sd(mean: float, sd: float) -> str:
    return f"{mean:.3f} ± {sd:.3f}" if sd == sd else f"{mean:.3f}"


class Report:
    """Builds the report of a study folder from its results.csv (see the module docstring).

    ``design``: the study's axes, replicates and comparisons (default: read from the columns of results.csv).
    """

    def __init__(self, out: str | Path, title: str = "study", design: Design | None = None) -> None:
        self.out, self.title = Path(out), title
        path = self.out / "results.csv"
        columns = pd.read_csv(path, nrows=0).columns
        metric = [c for c in columns if c.startswith(("val_", "test_", "train_")) or c in RESULT_COLUMNS - {"stage"}]
        text = [c for c in columns if c not in metric or (design and c in design.axes)]
        # axis values as written (`1`, not `1.0` when some runs lack the axis)
        self.results = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=dict.fromkeys(text, str))
        self.design = design or Design.infer(self.results)
        self.sections: list[str] = []
        self.figures: list[Path] = []
        self.stage: list[str] = []  # ["stage"] where the tested runs come from several stages

    def build(self) -> Path:
        r = self.results
        self.sections.append(f"# {self.title}\n\n{len(r)} finished runs. Mean ± sample sd (ddof 1) over the runs "
                             "of each row; every table and figure is rebuilt from `results.csv` and the run folders "
                             "(`fimvision-study report DIR`).")
        tested = r.dropna(subset=[PRIMARY]) if PRIMARY in r else r.iloc[:0]
        self.stage = ["stage"] if "stage" in tested and tested["stage"].nunique() > 1 else []
        compared = {a: ref for a, ref in self.design.compare.items() if a in tested and tested[a].notna().any()}
        for axis, reference in compared.items():
            self.comparison(tested, axis, reference)
        if not compared and len(tested):
            by = self.conditions(tested) or ["stage"]
            self.sections.append("## Results\n\n" + markdown(compact(self.design.ordered(summarise(tested, by), by))))
        if len(tested):
            self.condition_figures(tested)
        text = "\n\n".join(self.sections) + "\n"
        (self.out / "report.md").write_text(text)
        self.html(text)
        return self.out / "report.md"

    def figure(self, fig, name: str, caption: str) -> None:
        if fig is None:
            return
        width = fig.get_size_inches()[0]
        fig.suptitle(textwrap.fill(self.title, max(40, int(14 * width))), fontsize=8)  # a figure shared alone says what it shows
        path = save_figure(fig, self.out / name)
        self.figures.append(path)
        self.sections.append(f"![{caption}]({name})\n\n*{caption}*")

    def conditions(self, r: pd.DataFrame, without: str | None = None) -> list[str]:
        """The columns that tell the conditions of ``r`` apart: the stage (when several) and the axes that are
        not replicates, those empty for some rows (applied `when`) last."""
        axes = [a for a in self.design.factors if a != without and a in r and r[a].notna().any()]
        return [*self.stage, *[a for a in axes if r[a].notna().all()], *[a for a in axes if r[a].isna().any()]]

    # -- one compared axis
    def comparison(self, r: pd.DataFrame, axis: str, reference: str) -> None:
        rows = r[r[axis].notna()]
        within = self.conditions(rows, without=axis)
        plain = [k for k in within if rows[k].notna().all()]
        columns = [*plain, axis, *[k for k in within if k not in plain]]
        pairs = [k for k in self.design.replicates if k in rows and rows[k].notna().any()]
        over = " and ".join(pairs) or "runs"
        table = self.design.ordered(summarise(rows, columns), columns)
        section = [f"## {axis}: each level against {reference}",
                   f"Mean ± sd over the runs of each row (their {over}).", markdown(compact(table))]
        for split in self.design.splits:
            if split in rows and rows[split].nunique() > 1:
                section += [f"### Per {split}", f"{PRIMARY}, mean ± sd over the other replicates per level of "
                            f"`{split}`; `all`: pooled.", markdown(self.per_split(rows, columns, split))]
        comparison = compare_levels(self.design.ordered(rows, columns), axis, reference, pair_on=pairs, within=within)
        name = f"compare_{safe(axis)}"
        if comparison.empty:
            section.append(f"No level of {axis} shares a condition with {reference}: nothing to pair.")
        else:
            comparison = self.design.ordered(comparison, columns)
            comparison.to_csv(self.out / f"{name}.csv", index=False)
            section += [f"### Each level - {reference}, paired on the same {over}",
                        f"{PRIMARY}; paired t-test and Wilcoxon signed-rank test over the pairs; d_z = mean / sd of "
                        f"the differences; fewer than {MIN_PAIRS} pairs: no conclusion. Every metric: `{name}.csv`.",
                        markdown(readable(comparison[comparison["metric"] == PRIMARY], columns))]
        self.sections.append("\n\n".join(section))
        groups = [k for k in columns if k != axis]
        bars = table.assign(_level=table[axis], _group=[" / ".join(str(v) for v in row if v == v) or "all"
                                                        for row in table[groups].itertuples(index=False)])
        levels = [lv for lv in self.design.axes.get(axis, []) if lv in set(table[axis])]
        self.figure(figures.bars(bars, levels), f"{name}.png",
                    f"{PRIMARY} per level of {axis} (mean ± sd over the {over})")

    def per_split(self, rows: pd.DataFrame, columns: list[str], split: str) -> pd.DataFrame:
        """Mean ± sd of the primary metric per condition (rows) and level of ``split`` (columns), and pooled."""
        cells = rows.groupby([*columns, split], sort=False, dropna=False)[PRIMARY].agg(["mean", "std"]).reset_index()
        cells["cell"] = [mean_sd(m, s) for m, s in zip(cells["mean"], cells["std"], strict=True)]
        wide = cells.pivot_table(index=columns, columns=split, values="cell", aggfunc="first", dropna=False)
        levels = [lv for lv in self.design.axes.get(split, sorted(cells[split].unique())) if lv in wide.columns]
        pooled = rows.groupby(columns, sort=False, dropna=False)[PRIMARY].agg(["mean", "std"])
        wide = wide[levels].rename(columns=lambda lv: f"{split} {lv}").join(pooled.apply(lambda s: mean_sd(s["mean"], s["std"]), axis=1).rename("all"))
        return self.design.ordered(wide.reset_index().fillna("-"), columns)

    # -- figures over all conditions
    def condition_figures(self, r: pd.DataFrame) -> None:
        columns = self.conditions(r)
        r = self.design.ordered(r, columns)
        labels = pd.Series([" / ".join(str(v) for v in row if v == v) or "all"
                            for row in r[columns].itertuples(index=False)], index=r.index)
        for split in self.design.splits:
            if split in r and r[split].nunique() > 1:
                table = r.pivot_table(index=columns or None, columns=split, values=PRIMARY, aggfunc="mean", sort=False)
                table = table[[lv for lv in self.design.axes[split] if lv in table.columns]]
                names = figures.held_out_names(r.groupby(split)["run_dir"].first().to_dict(), split) if "run_dir" in r else {}
                self.figure(figures.heatmap(table, names, split), f"{safe(split)}_heatmap.png",
                            f"{PRIMARY} per {split} (held-out part), mean over the other replicates")
        runs = {label: list(part["run_dir"]) for label, part in r.groupby(labels, sort=False)} if "run_dir" in r else {}
        if 0 < len(runs) <= MAX_CONDITIONS:
            self.figure(figures.confusions(runs), "confusion_matrices.png",
                        "Confusion matrices summed over each condition's runs (rows: true class)")
            self.figure(figures.vials(runs), "vial_accuracy.png", "Accuracy of a vial's verdict (mean probability) "
                        "against the number of its particles pooled: how many particles a verdict needs")
            self.figure(figures.learning_curves(runs), "learning_curves.png",
                        "Validation loss and accuracy per epoch, mean over each condition's runs")
        for axis in [a for a in columns if self.design.numeric(a) and r[a].nunique() > 1]:
            self.numeric_curves(r, columns, axis)
        scores = [s for s in SCORES if s in r and r[s].notna().any()]
        if scores:
            self.figure(figures.scores_against(r, scores, labels), "selection_scores.png",
                        "Unsupervised model-selection scores against accuracy, a point a run")

    def numeric_curves(self, r: pd.DataFrame, columns: list[str], x: str) -> None:
        """Accuracy against the numeric axis ``x``; a line a level of the axis that decides whether ``x`` applies
        (else of the first other axis); panels for the rest."""
        others = [c for c in columns if c != x and c != "stage" and r[c].nunique() > 1]
        def decides(c: str) -> bool:  # each level of c has x always or never, and some never (x applied `when`)
            given = r[x].notna().groupby(r[c], sort=False)
            return bool((given.all() | ~given.any()).all() and not given.any().all())

        line = next((c for c in others if decides(c)), others[0] if others else None)
        panel_keys = [c for c in columns if c not in (x, line)]
        table = summarise(r, [*panel_keys, *([line] if line else []), x], (PRIMARY,))
        panels = {" / ".join(str(v) for v in key if v == v) if isinstance(key, tuple) else str(key): part
                  for key, part in (table.groupby(panel_keys, sort=False, dropna=False) if panel_keys
                                    else [(r["stage"].iloc[0] if "stage" in r else "all", table)])}
        if len(panels) > MAX_PANELS:
            return
        levels = self.design.axes.get(line, []) if line else []
        self.figure(figures.curves(panels, x, line, levels, self.design.compare.get(line) if line else None),
                    f"accuracy_vs_{safe(x)}.png", f"{PRIMARY} against {x}"
                    + (f", a line a level of {line}; levels without {x} as reference lines" if line else ""))

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


def readable(comparison: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """A :func:`~fimvision.study.compare.compare_levels` table for reading: ``mean ± sd`` cells, p-values to 2
    significant digits."""
    out = comparison[[k for k in keys if k in comparison]].astype(object).fillna("-").replace("", "-")
    out["vs"] = comparison["reference"]
    out["pairs"] = comparison["n_pairs"]
    for name, mean, sd in (("mean ± sd", "mean", "sd"), ("reference", "mean_reference", "sd_reference"),
                           ("difference", "mean_diff", "sd_diff")):
        out[name] = [mean_sd(m, s) for m, s in zip(comparison[mean], comparison[sd], strict=True)]
    out["d_z"] = comparison["d_z"].map(lambda v: f"{v:.2f}" if v == v else "-")
    for column in ("p_ttest", "p_wilcoxon"):
        out[column] = comparison[column].map(lambda v: f"{v:.2g}" if v == v else "-")
    out["verdict"] = comparison["verdict"]
    return out


def compact(table: pd.DataFrame) -> pd.DataFrame:
    """A :func:`summarise` table for reading: each metric as one ``mean ± sd`` column, one ``runs`` column."""
    metrics = [c.removesuffix("_mean") for c in table.columns if c.endswith("_mean")]
    keys = [c for c in table.columns if not c.endswith(("_mean", "_std", "_count"))]
    out = table[keys].astype(object).fillna("-")  # an axis a row lacks (applied `when`)
    for m in metrics:
        out[m] = [mean_sd(mean, sd) for mean, sd in zip(table[f"{m}_mean"], table[f"{m}_std"], strict=True)]
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


def write_report(out: str | Path, title: str = "study", design: Design | None = None) -> Path:
    """report.md, report.html and the figures of the study folder ``out`` (from its results.csv)."""
    return Report(out, title, design).build()
