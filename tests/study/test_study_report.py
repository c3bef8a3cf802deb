"""The study report from hand-made results (no training): every compared axis's levels against its reference,
paired over the replicates, checked against scipy; per-split tables; figures generic over levels."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fimtest import run, study_cmd
from scipy import stats

from fimvision.study import report as report_module
from fimvision.study.compare import MIN_PAIRS, Design, paired_comparison
from fimvision.study.config import load_study
from fimvision.study.report import write_report


def write_copy(folder: Path, axes: dict[str, list], **keys) -> None:
    """The study file a study folder keeps (study.yaml): one stage with these axes, plus ``keys``."""
    stage = {"axes": {name: {"values": values} for name, values in axes.items()}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.yaml").write_text(yaml.safe_dump({"name": "hand", "stages": {"main": stage}, **keys}))


def hand_made_results(rng) -> pd.DataFrame:
    rows = []
    for model, shift in (("cnn", 0.05), ("vit", 0.0)):
        for fold in range(3):
            for seed in range(2):
                base = rng.uniform(0.6, 0.8)
                for modality in ("color", "mono"):
                    acc = base + (shift + rng.normal(0, 0.02) if modality == "color" else 0)
                    rows.append({"run": f"{model}-{modality}-{fold}-{seed}", "stage": "main", "model": model,
                                 "modality": modality, "fold": fold, "seed": seed, "test_acc": acc,
                                 "test_balanced_acc": acc - 0.01, "test_f1_macro": acc - 0.02, "run_dir": "/nowhere"})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ colour vs mono
def test_colour_against_mono_is_a_comparison_like_any_other_and_matches_scipy(tmp_path):
    results = hand_made_results(np.random.default_rng(0))
    results.to_csv(tmp_path / "results.csv", index=False)
    write_copy(tmp_path, {"model": ["cnn", "vit"], "modality": ["color", "mono"], "fold": [0, 1, 2], "seed": [0, 1]},
               compare={"modality": "mono"})
    result = run(study_cmd("report", tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    paired = pd.read_csv(tmp_path / "compare_modality.csv")
    assert set(paired["modality"]) == {"color"} and set(paired["reference"]) == {"mono"}  # mono: the reference
    assert set(paired["metric"]) == {"test_acc", "test_balanced_acc", "test_f1_macro"}
    for model in ("cnn", "vit"):
        part = results[results["model"] == model]
        color = part[part["modality"] == "color"].set_index(["fold", "seed"])["test_acc"]
        mono = part[part["modality"] == "mono"].set_index(["fold", "seed"])["test_acc"].reindex(color.index)
        diff = color - mono
        row = paired[(paired["model"] == model) & (paired["metric"] == "test_acc")].iloc[0]
        assert row["n_pairs"] == 6 and row["pair_on"] == "seed fold"
        assert row["mean"] == pytest.approx(color.mean()) and row["sd"] == pytest.approx(np.std(color, ddof=1))
        assert row["mean_reference"] == pytest.approx(mono.mean())
        assert row["sd_reference"] == pytest.approx(np.std(mono, ddof=1))
        assert row["mean_diff"] == pytest.approx(diff.mean()) and row["sd_diff"] == pytest.approx(np.std(diff, ddof=1))
        assert row["d_z"] == pytest.approx(diff.mean() / np.std(diff, ddof=1))
        assert row["p_ttest"] == pytest.approx(stats.ttest_rel(color, mono).pvalue)
        assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(color - mono).pvalue)
    cnn = paired[(paired["model"] == "cnn") & (paired["metric"] == "test_acc")].iloc[0]
    assert cnn["verdict"].startswith("color better by") and cnn["p_ttest"] < 0.05
    report = (tmp_path / "report.md").read_text()
    assert "## modality: each level against mono" in report
    assert "## model:" not in report  # compare: names the axes compared
    cnn_color = results[(results["model"] == "cnn") & (results["modality"] == "color")]["test_acc"]
    assert f"| cnn | color | {cnn_color.mean():.3f} ± {cnn_color.std():.3f} |" in report
    assert cnn["verdict"] in report
    for png in ("fold_heatmap.png", "compare_modality.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_too_few_pairs_give_no_conclusion():
    results = hand_made_results(np.random.default_rng(0))
    few = paired_comparison(results[results["fold"] == 0], factor="modality", a="color", b="mono",
                            pair_on=("fold", "seed"), within=("model",))  # 2 pairs a model
    assert list(few["model"]) == ["cnn", "vit"] and (few["n_pairs"] == 2).all()
    assert few["verdict"].str.startswith(f"too few pairs to conclude (2 < {MIN_PAIRS})").all()
    part = results[(results["fold"] == 0) & (results["model"] == "cnn")]
    color, mono = (part[part["modality"] == m].set_index("seed")["test_acc"] for m in ("color", "mono"))
    assert few["mean_color"].iloc[0] == pytest.approx(color.mean())
    assert few["mean_diff"].iloc[0] == pytest.approx((color - mono).mean())


# ------------------------------------------------------------------------------------------------ any axis
BASE = [0.60, 0.62, 0.65, 0.58, 0.70]  # features_only, per seed
OFFSET = {"image": [0.10, 0.12, 0.08, 0.11, 0.09], "fused": [0.15, 0.13, 0.16, 0.14, 0.17],
          "recipe": [0.01, -0.02, 0.00, 0.02, -0.01]}


def input_results() -> pd.DataFrame:
    rows = []
    for level in ("image", "features_only", "fused", "recipe"):
        for seed in range(5):
            acc = BASE[seed] + (OFFSET[level][seed] if level in OFFSET else 0.0)
            rows.append({"run": f"{level}-{seed}", "stage": "main", "input": level, "seed": seed, "test_acc": acc,
                         "test_balanced_acc": acc, "test_f1_macro": acc, "run_dir": "/nowhere"})
    return pd.DataFrame(rows)


def test_an_input_axis_over_five_seeds_compares_every_level_with_the_chosen_reference(tmp_path):
    input_results().to_csv(tmp_path / "results.csv", index=False)
    write_copy(tmp_path, {"input": ["image", "features_only", "fused", "recipe"], "seed": [0, 1, 2, 3, 4]},
               compare={"input": "features_only"})
    assert run(study_cmd("report", tmp_path), tmp_path).returncode == 0
    table = pd.read_csv(tmp_path / "compare_input.csv")
    table = table[table["metric"] == "test_acc"].set_index("input")
    assert list(table.index) == ["image", "fused", "recipe"] and set(table["reference"]) == {"features_only"}
    base = np.array(BASE)
    for level, offset in OFFSET.items():
        row, diff = table.loc[level], np.array(offset)
        assert row["n_pairs"] == 5 and row["pair_on"] == "seed"
        assert row["mean_diff"] == pytest.approx(diff.mean()) and row["sd_diff"] == pytest.approx(diff.std(ddof=1))
        assert row["d_z"] == pytest.approx(diff.mean() / diff.std(ddof=1))
        assert row["p_ttest"] == pytest.approx(stats.ttest_rel(base + diff, base).pvalue)
        assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(base + diff - base).pvalue)
    assert table.loc["image", "mean_diff"] == pytest.approx(0.10)
    assert table.loc["image", "verdict"] == (f"image better by 0.100 (paired t-test p = {table.loc['image', 'p_ttest']:.3g}"
                                             f", d_z = {table.loc['image', 'd_z']:.2f})")
    assert table.loc["fused", "verdict"].startswith("fused better by 0.150")
    assert table.loc["recipe", "verdict"].startswith("no significant difference")
    report = (tmp_path / "report.md").read_text()
    assert "## input: each level against features_only" in report
    assert "### Each level - features_only, paired on the same seed" in report
    means = input_results().groupby("input")["test_acc"].agg(["mean", "std"])
    for level in ("image", "features_only", "fused", "recipe"):  # a row a level, mean ± sd over the seeds
        assert f"| {level} | {means.loc[level, 'mean']:.3f} ± {means.loc[level, 'std']:.3f} |" in report
    assert f"| image | features_only | 5 | {means.loc['image', 'mean']:.3f} ± " in report


def test_without_compare_every_axis_but_the_replicates_is_compared_with_its_first_level(tmp_path):
    results = input_results()
    results.to_csv(tmp_path / "results.csv", index=False)
    write_report(tmp_path)  # no study file: the columns tell the axes
    table = pd.read_csv(tmp_path / "compare_input.csv")
    assert set(table["reference"]) == {"image"} and list(dict.fromkeys(table["input"])) == ["features_only", "fused",
                                                                                              "recipe"]
    fo = table[(table["input"] == "features_only") & (table["metric"] == "test_acc")].iloc[0]
    assert fo["mean_diff"] == pytest.approx(-np.mean(OFFSET["image"]))
    assert fo["verdict"].startswith("image better by 0.100")
    assert not (tmp_path / "compare_seed.csv").exists()  # a replicate is paired on, not compared


# ------------------------------------------------------------------------------------------------ per split
def test_a_split_axis_gets_a_table_per_split_level(tmp_path):
    rows = []
    for i, split in enumerate(("stratified", "run0_out", "run1_out")):
        for seed in range(3):
            for level, gain in (("image", 0.0), ("fused", 0.05)):
                acc = 0.5 + 0.1 * i + gain + 0.01 * seed
                rows.append({"run": f"{split}-{level}-{seed}", "stage": "main", "input": level, "split": split,
                             "seed": seed, "test_acc": acc, "run_dir": "/nowhere"})
    results = pd.DataFrame(rows)
    results.to_csv(tmp_path / "results.csv", index=False)
    write_copy(tmp_path, {"input": ["image", "fused"], "split": ["stratified", "run0_out", "run1_out"],
                          "seed": [0, 1, 2]})
    text = write_report(tmp_path, design=Design.of_study(load_study(tmp_path / "study.yaml"))).read_text()
    assert "### Per split" in text
    assert "| input | split stratified | split run0_out | split run1_out | all |" in text
    cells = results.groupby(["input", "split"])["test_acc"].agg(["mean", "std"])
    pooled = results.groupby("input")["test_acc"].agg(["mean", "std"])
    for level in ("image", "fused"):
        expected = " | ".join(f"{cells.loc[(level, s), 'mean']:.3f} ± {cells.loc[(level, s), 'std']:.3f}"
                              for s in ("stratified", "run0_out", "run1_out"))
        assert f"| {level} | {expected} | {pooled.loc[level, 'mean']:.3f} ± {pooled.loc[level, 'std']:.3f} |" in text
    fused = pd.read_csv(tmp_path / "compare_input.csv").iloc[0]
    assert fused["n_pairs"] == 9 and fused["pair_on"] == "seed split" and fused["mean_diff"] == pytest.approx(0.05)
    assert (tmp_path / "split_heatmap.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------ adaptation
def adaptation_results() -> pd.DataFrame:
    rows = []
    for shots in ("3", "1", "10"):  # a grid extended later with 10 shots, then 1
        for seed in (0, 1):
            rows.append({"stage": "fim", "method": "ft", "shots": shots, "seed": seed, "test_acc": 0.5 + int(shots) / 100})
    for method in ("source_only", "shot"):
        for seed in (0, 1):
            rows.append({"stage": "fim", "method": method, "shots": "", "seed": seed, "test_acc": 0.4 + seed / 10})
    return pd.DataFrame(rows).assign(run=lambda f: [f"r{i}" for i in range(len(f))], run_dir="/nowhere")


def test_a_when_axis_is_ordered_and_a_level_without_it_is_paired_with_each_of_its_values(tmp_path):
    adaptation_results().to_csv(tmp_path / "results.csv", index=False)
    design = Design.infer(pd.read_csv(tmp_path / "results.csv", dtype=str), compare={"method": "source_only"})
    text = write_report(tmp_path, design=design).read_text()
    section = text[text.index("## method"):]
    table = [line for line in section.splitlines() if line.startswith("| ") and "±" in line and "vs" not in line]
    assert [line.split(" | ")[:2] for line in table[:5]] == [["| ft", "1"], ["| ft", "3"], ["| ft", "10"],
                                                             ["| source_only", "-"], ["| shot", "-"]]
    assert "| source_only | - | 0.450 ± 0.071 | 2 |" in text
    paired = pd.read_csv(tmp_path / "compare_method.csv").fillna("")
    ft = paired[paired["method"] == "ft"]
    assert list(ft["shots"].astype(int)) == [1, 3, 10] and set(ft["reference"]) == {"source_only"}
    assert list(ft["mean_diff"]) == pytest.approx([0.51 - 0.45, 0.53 - 0.45, 0.60 - 0.45])
    shot = paired[paired["method"] == "shot"]
    assert list(shot["reference"]) == ["source_only"] and shot["mean_diff"].iloc[0] == pytest.approx(0)
    assert (tmp_path / "accuracy_vs_shots.png").stat().st_size > 1000


def test_accuracy_against_shots_draws_each_method_its_own_colour_and_style(tmp_path, monkeypatch):
    rows = [{"stage": "s", "method": m, "shots": k, "seed": 0, "test_acc": 0.5, "run": f"{m}{k}", "run_dir": "/x"}
            for m, shots in (("source_only", [math.nan]), ("shot", [math.nan]), ("nrc", [math.nan]),
                             ("aad", [math.nan]), ("ft", [1, 3])) for k in shots]
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    drawn = {}
    real = report_module.Report.figure

    def keep(self, fig, name, caption):
        if name == "accuracy_vs_shots.png":
            for handle, label in zip(*fig.axes[0].get_legend_handles_labels(), strict=True):
                line = handle.lines[0] if hasattr(handle, "lines") else handle  # an errorbar's data line
                drawn[label] = (line.get_color(), str(line._unscaled_dash_pattern))  # the dash pattern drawn
        return real(self, fig, name, caption)

    monkeypatch.setattr(report_module.Report, "figure", keep)
    write_report(tmp_path)
    assert set(drawn) == {"source_only (no shots)", "shot (no shots)", "nrc (no shots)", "aad (no shots)", "ft"}
    assert len({colour for colour, _ in drawn.values()}) == 5 and len({style for _, style in drawn.values()}) == 5


def test_the_report_knows_no_axis_value():
    for module in ("report.py", "compare.py", "figures.py"):
        source = (Path(report_module.__file__).parent / module).read_text()
        assert not re.findall(r"[\"'](color|colour|mono|source_only|ft|shot|modality|method|shots)[\"']", source), module
