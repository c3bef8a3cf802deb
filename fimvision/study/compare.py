"""The statistics of a study report: which axes a study compares, mean ± sd per level, and every level against a
reference level, paired over the replicate axes (seeds, folds, splits) with a paired t-test, a Wilcoxon
signed-rank test, the effect size d_z = mean(diff) / sd(diff) and a plain verdict.

Nothing here knows an axis's values: a study's axes, their levels and the reference of each compared axis
come from its study file (:meth:`Design.of_study`) or, without one, from the columns of ``results.csv``
(:meth:`Design.infer`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from scipy import stats

from fimvision.study.config import REPLICATES, SEED, StudyConfig, axis_levels

METRICS = ("test_acc", "test_balanced_acc", "test_f1_macro")
PRIMARY = "test_acc"
# Fewer pairs than this: the paired tests are reported, but no conclusion is drawn.
MIN_PAIRS = 5
# Columns of results.csv that are not axes (besides the val_*/test_* metrics).
RESULT_COLUMNS = {"run", "stage", "steps", "checkpoint", "run_dir", "wall_s", "cpu_s", "finished", "best_epoch", "args"}


@dataclass
class Design:
    """The axes of a study as the report sees them.

    Args:
        axes: axis -> its levels in the study's order.
        replicates: the axes a comparison pairs on (seeds, folds, splits); never compared themselves.
        compare: compared axis -> its reference level.
    """

    axes: dict[str, list[str]]
    replicates: tuple[str, ...] = REPLICATES
    compare: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_study(cls, study: StudyConfig) -> Design:
        """The design a study file declares (its ``compare:`` and ``replicates:``)."""
        return cls.with_default_compare(axis_levels(study), tuple(study.replicates), study.compare)

    @classmethod
    def infer(cls, results: pd.DataFrame, compare: dict[str, Any] | None = None,
              replicates: Sequence[str] = REPLICATES) -> Design:
        """The design read from ``results.csv`` alone: every column that is neither a metric nor a known result
        column is an axis, its levels in the order they appear."""
        axes = {c: list(dict.fromkeys(results[c].dropna().astype(str))) for c in results.columns
                if c not in RESULT_COLUMNS and not c.startswith(("val_", "test_", "train_"))}
        for axis, levels in axes.items():
            if cls(axes).numeric(axis):
                levels.sort(key=float)  # a grid extended later (3, then 1 shot) still reads in order
        return cls.with_default_compare(axes, tuple(replicates), compare or {})

    @classmethod
    def with_default_compare(cls, axes: dict[str, list[str]], replicates: tuple[str, ...],
                             compare: dict[str, Any]) -> Design:
        """``compare`` given: those axes (a null reference: the axis's first level); otherwise every axis that is
        not a replicate and has two levels or more, against its first level."""
        if compare:
            chosen = {a: str(ref) if ref is not None else axes[a][0] for a, ref in compare.items() if a in axes}
        else:
            chosen = {a: levels[0] for a, levels in axes.items() if a not in replicates and len(levels) > 1}
        return cls(axes, replicates, chosen)

    @property
    def factors(self) -> list[str]:
        """The axes that are not replicates (each level of them a different condition)."""
        return [a for a in self.axes if a not in self.replicates]

    @property
    def splits(self) -> list[str]:
        """The replicate axes that split the data (folds, held-out groups), i.e. all but the seed."""
        return [a for a in self.replicates if a in self.axes and a != SEED]

    def numeric(self, axis: str) -> bool:
        """Whether every level of ``axis`` is a number (then it is ordered, and drawn as an x axis)."""
        try:
            return bool(self.axes.get(axis)) and all(math.isfinite(float(v)) for v in self.axes[axis])
        except ValueError:
            return False

    def rank(self, axis: str, value: Any) -> float:
        """Sort key of ``value`` of ``axis``: its number for a numeric axis, else its place in the study's order;
        an empty value first."""
        if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
            return -math.inf
        if self.numeric(axis):
            return float(value)
        levels = self.axes.get(axis, [])
        return float(levels.index(str(value))) if str(value) in levels else float(len(levels))

    def ordered(self, frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
        """``frame`` sorted by ``columns`` in the study's order of their levels (other columns: as they come)."""
        keys = [c for c in reversed(columns) if c in frame]
        out = frame
        for column in keys:  # stable sorts, last key first
            if column in self.axes:
                out = out.iloc[out[column].map(lambda v, c=column: self.rank(c, v)).argsort(kind="stable").to_numpy()]
        return out.reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ statistics
def summarise(results: pd.DataFrame, by: list[str], metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Mean, sample standard deviation (ddof 1) and count of each metric per group of ``by``."""
    present = [m for m in metrics if m in results]
    table = results.groupby(by, sort=False, dropna=False)[present].agg(["mean", "std", "count"])
    table.columns = [f"{m}_{s}" for m, s in table.columns]
    return table.reset_index()


def paired_stats(a: pd.Series, b: pd.Series) -> dict[str, float]:
    """``a`` - ``b`` over aligned pairs: their number, mean and sd (ddof 1) of the differences, d_z, and the
    p-values of the paired t-test and the Wilcoxon signed-rank test (NaN where a test is undefined)."""
    diff = a - b
    n = len(diff)
    sd = float(diff.std()) if n > 1 else math.nan
    return {"n_pairs": n, "mean_diff": float(diff.mean()) if n else math.nan, "sd_diff": sd,
            "d_z": float(diff.mean()) / sd if n > 1 and sd > 0 else math.nan,
            "p_ttest": float(stats.ttest_rel(a, b).pvalue) if n > 1 and sd > 0 else math.nan,
            "p_wilcoxon": float(stats.wilcoxon(diff).pvalue) if n > 0 and (diff != 0).any() else math.nan}


def verdict(row: dict, a: str, b: str) -> str:
    """A plain reading of a paired comparison of ``a`` - ``b``: too few pairs, no difference, or which is better."""
    n = row["n_pairs"]
    if n < MIN_PAIRS:
        return f"too few pairs to conclude ({n} < {MIN_PAIRS})"
    p = row["p_ttest"]
    if not p < 0.05:
        return f"no significant difference (paired t-test p = {p:.3g})"
    better = a if row["mean_diff"] > 0 else b
    return f"{better} better by {abs(row['mean_diff']):.3f} (paired t-test p = {p:.3g}, d_z = {row['d_z']:.2f})"


def _groups(frame: pd.DataFrame, keys: list[str]) -> Iterator[tuple[dict[str, Any], pd.DataFrame]]:
    """(key values, rows) per group of ``keys``; an empty value is None."""
    if not keys:
        yield {}, frame
        return
    for values, part in frame.groupby(keys, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        yield {k: (None if pd.isna(v) else v) for k, v in zip(keys, values, strict=True)}, part


def compare_levels(results: pd.DataFrame, axis: str, reference: str, *, pair_on: Sequence[str],
                   within: Sequence[str], metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Every level of ``axis`` against its ``reference`` level within each group of ``within``, paired on the
    values of ``pair_on``: one row a (group, level, metric) with both sides' mean ± sd, the paired statistics
    of level - reference and a verdict.

    An axis that is empty on one side (an axis applied ``when`` some level is chosen, such as the shots of a
    fine-tuning method against a method without shots) matches any value on the other side; the reference's
    values the level lacks are named in the ``reference`` column.
    """
    keys = [k for k in within if k in results and k != axis]
    present = [m for m in metrics if m in results]
    chosen = results[results[axis].notna()]
    base = chosen[chosen[axis].astype(str) == str(reference)]
    rows = []
    for level_keys, part in _groups(chosen[chosen[axis].astype(str) != str(reference)], [*keys, axis]):
        level = str(level_keys.pop(axis))
        for ref_keys, ref_part in _groups(base, keys):
            if any(level_keys[k] is not None and ref_keys[k] is not None and level_keys[k] != ref_keys[k] for k in keys):
                continue
            extra = [f"{k}={v}" for k, v in ref_keys.items() if v is not None and level_keys[k] is None]
            label = f"{reference} ({', '.join(extra)})" if extra else str(reference)
            pairs = [k for k in pair_on if k in results and part[k].notna().any() and ref_part[k].notna().any()]
            for metric in present:
                side = [p.groupby(pairs)[metric].mean() if pairs else pd.Series([p[metric].mean()])
                        for p in (part, ref_part)]
                joined = pd.concat(side, axis=1, keys=["a", "b"], join="inner").dropna()
                row = {**{k: ("" if v is None else v) for k, v in level_keys.items()}, axis: level, "reference": label,
                       "metric": metric, "pair_on": " ".join(pairs), "mean": part[metric].mean(), "sd": part[metric].std(),
                       "mean_reference": ref_part[metric].mean(), "sd_reference": ref_part[metric].std(),
                       **paired_stats(joined["a"], joined["b"])}
                row["verdict"] = verdict(row, level, label)
                rows.append(row)
    return pd.DataFrame(rows)


def paired_comparison(results: pd.DataFrame, *, factor: str, a: str, b: str, pair_on: Sequence[str] = (),
                      within: Sequence[str] = (), metric: str = PRIMARY) -> pd.DataFrame:
    """``a`` against ``b`` of ``factor`` within each group of ``within``, paired on ``pair_on`` (the columns
    ``mean_<a>``, ``sd_<a>``, ``mean_<b>``, ``sd_<b>``, ``mean_diff`` = a - b, ...): :func:`compare_levels`
    for two levels."""
    two = results[results[factor].astype(str).isin([str(a), str(b)])]
    table = compare_levels(two, factor, b, pair_on=pair_on, within=within, metrics=(metric,))
    if table.empty:
        return table
    names = {"mean": f"mean_{a}", "sd": f"sd_{a}", "mean_reference": f"mean_{b}", "sd_reference": f"sd_{b}"}
    return table.drop(columns=[factor, "reference", "pair_on"]).rename(columns=names)
