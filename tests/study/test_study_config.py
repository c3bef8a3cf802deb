"""Study files expand into the documented runs, wrong ones are refused, run locks, and the report's statistics
(checked against scipy) and figures from hand-made results."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from fimtest import CONFIGS, run, study_cmd
from scipy import stats

from fimvision.errors import ConfigError
from fimvision.study.config import expand, load_study
from fimvision.study.report import MIN_PAIRS, paired_comparison, write_report
from fimvision.study.runner import RunLock

STUDIES = CONFIGS / "study"


# ------------------------------------------------------------------------------------------------ grid expansion
def test_a_grid_expands_into_named_runs_with_their_needs(tmp_path):
    study = tmp_path / "studies" / "study.yaml"
    study.parent.mkdir()
    study.write_text(yaml.safe_dump({"name": "g", "stages": {
        "source": {"args": ["--config", "../c.yaml"], "test": False,
                   "axes": {"seed": {"values": [0, 1], "args": ["--seed_everything={}"]}}},
        "adapt": {"args": [], "needs": {"src": "source"}, "axes": {
            "seed": {"values": [0, 1], "args": ["--seed_everything={}"]},
            "method": {"named": {"none": ["test-only", "--ckpt_path={src}"],
                                 "ft": ["--model.init_args.source_checkpoint={src}"], "shot": ["--x=1"]}},
            "shots": {"values": [1, 3], "args": ["--data.init_args.n_shot={}"], "when": {"method": ["ft"]}}}}}},
        sort_keys=False))
    (tmp_path / "c.yaml").write_text("seed_everything: 0\n")
    runs = expand(load_study(study))
    ids = [r.id for r in runs]
    assert ids[:2] == ["source__seed=0", "source__seed=1"]
    adapt = [r for r in runs if r.stage == "adapt"]
    assert len(adapt) == 2 * (1 + 2 + 1)  # shots only where the method is ft; no duplicates elsewhere
    assert "adapt__seed=1__method=ft__shots=3" in ids and "adapt__seed=0__method=shot" in ids
    ft3 = next(r for r in adapt if r.id == "adapt__seed=1__method=ft__shots=3")
    assert ft3.needs == (("src", "source__seed=1"),)  # the source run with the same seed
    assert ft3.args == ("--seed_everything=1", "--model.init_args.source_checkpoint={src}", "--data.init_args.n_shot=3")
    assert next(r for r in adapt if r.id == "adapt__seed=0__method=shot").needs == ()  # no {src}: needs nothing
    none = next(r for r in adapt if r.id == "adapt__seed=0__method=none")
    assert none.test_only and none.axis_values == {"seed": "0", "method": "none", "shots": ""}
    assert runs[0].args[1] == str((tmp_path / "c.yaml").resolve())  # paths relative to the study file


@pytest.mark.parametrize("text, message", [
    ("name: x\nstages: {a: {axes: {s: {values: [1]}}, typo: 1}}", "typo"),
    ("name: x\nstages: {a: {axes: {s: {values: 3}}}}", "stages.axes: expected a list"),
    ("name: x\nstages: {a: {needs: {p: nowhere}, axes: {s: {values: [1]}}}}", "unknown stage"),
    ("name: x\nstages: {a: {axes: {s: {}}}}", "has no values"),
    ("name: x\nstages: {a: {needs: {p: b}, axes: {s: {values: [1]}}}, b: {axes: {s: {values: [1]}}}}", "before it"),
    ("name: x\nsynthetic: {d: {antibodies: 0}}\nstages: {a: {axes: {s: {values: [1]}}}}", "antibodies"),
])
def test_a_wrong_study_file_is_refused_with_what_is_wrong(tmp_path, text, message):
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_study(tmp_path / "s.yaml")


def test_needs_must_tell_runs_apart(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "name: x\nstages:\n  a: {axes: {seed: {values: [0, 1]}}}\n"
        "  b: {args: ['--c={p}'], needs: {p: a}, axes: {fold: {values: [0]}}}\n")
    with pytest.raises(ConfigError, match="2 runs of stage 'a' fit"):
        expand(load_study(tmp_path / "s.yaml"))


def test_the_shipped_studies_expand_as_documented():
    counts = {}
    for path in sorted(STUDIES.glob("*.yaml")):
        runs = expand(load_study(path))
        counts[path.stem] = pd.Series([r.stage for r in runs]).value_counts().to_dict()
    assert counts["color_vs_mono"] == {"main": 3 * 2 * 8 * 3, "pretrain": 2 * 8 * 3}
    assert counts["color_vs_mono-quick"] == {"main": 3 * 2 * 3 * 2, "pretrain": 2 * 3}
    per_seed = 1 + 4 + 4 + 3  # source-only, FT and LP-FT at 1/3/5/10 shots, SHOT, NRC, AaD
    assert counts["fewshot_sfda"] == {"mnist_usps": 2 * 3 * per_seed, "fim_antibody": 2 * 3 * per_seed,
                                      "mnist_usps_source": 6, "fim_antibody_source": 6}
    assert counts["fewshot_sfda-quick"] == {"fim_antibody": 2 * 2 * (1 + 2 + 2 + 3), "fim_antibody_source": 4}
    runs = {r.id: r for r in expand(load_study(STUDIES / "color_vs_mono.yaml"))}
    ssl = runs["main__model=ssl_cnn__modality=mono__fold=3__seed=2"]
    assert ssl.needs == (("ssl", "pretrain__modality=mono__fold=3__seed=2"),)  # the held-out antibody stays unseen
    assert runs["main__model=vit__modality=mono__fold=3__seed=2"].needs == ()
    fewshot = expand(load_study(STUDIES / "fewshot_sfda.yaml"))
    ft = [r for r in fewshot if dict(r.axes).get("method") == "ft"]
    assert all("--model.init_args.steps" not in " ".join(r.args) for r in ft)  # the paper's 1,000 steps (default)



def test_a_held_lock_is_respected_and_a_dead_holders_lock_taken_over(tmp_path):
    lock = RunLock(tmp_path / "a.lock", stale_after=600)
    assert lock.acquire()
    assert not RunLock(tmp_path / "a.lock", stale_after=600).acquire()  # held by a live process
    lock.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "b.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "time": 0}))
    assert RunLock(tmp_path / "b.lock", stale_after=600).acquire()  # its process is gone
    (tmp_path / "c.lock").write_text(json.dumps({"host": "another-machine", "pid": 1, "time": 0}))
    assert not RunLock(tmp_path / "c.lock", stale_after=600).acquire()  # another machine's: heartbeat still fresh
    os.utime(tmp_path / "c.lock", (time.time() - 700, time.time() - 700))
    assert RunLock(tmp_path / "c.lock", stale_after=600).acquire()  # no heartbeat for too long


# ------------------------------------------------------------------------------------------------ the report
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


def test_the_report_statistics_match_scipy(tmp_path):
    results = hand_made_results(np.random.default_rng(0))
    results.to_csv(tmp_path / "results.csv", index=False)
    result = run(study_cmd("report", tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    paired = pd.read_csv(tmp_path / "paired_color_vs_mono.csv")
    for model in ("cnn", "vit"):
        part = results[results["model"] == model]
        color = part[part["modality"] == "color"].set_index(["fold", "seed"])["test_acc"]
        mono = part[part["modality"] == "mono"].set_index(["fold", "seed"])["test_acc"].reindex(color.index)
        diff = color - mono
        row = paired[(paired["model"] == model) & (paired["metric"] == "test_acc")].iloc[0]
        assert row["n_pairs"] == 6
        assert row["mean_color"] == pytest.approx(color.mean()) and row["sd_color"] == pytest.approx(np.std(color, ddof=1))
        assert row["mean_mono"] == pytest.approx(mono.mean()) and row["sd_mono"] == pytest.approx(np.std(mono, ddof=1))
        assert row["mean_diff"] == pytest.approx(diff.mean()) and row["sd_diff"] == pytest.approx(np.std(diff, ddof=1))
        assert row["d_z"] == pytest.approx(diff.mean() / np.std(diff, ddof=1))
        assert row["p_ttest"] == pytest.approx(stats.ttest_rel(color, mono).pvalue)
        assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(color - mono).pvalue)
    cnn = paired[(paired["model"] == "cnn") & (paired["metric"] == "test_acc")].iloc[0]
    assert cnn["verdict"].startswith("color better by") and cnn["p_ttest"] < 0.05
    report = (tmp_path / "report.md").read_text()
    cnn_color = results[(results["model"] == "cnn") & (results["modality"] == "color")]["test_acc"]
    assert f"| cnn | color | {cnn_color.mean():.3f} ± {cnn_color.std():.3f} |" in report
    assert cnn["verdict"] in report
    few = paired_comparison(results[results["fold"] == 0])  # 2 pairs a model
    assert (few["n_pairs"] == 2).all() and few["verdict"].str.startswith(f"too few pairs to conclude (2 < {MIN_PAIRS})").all()
    assert (tmp_path / "fold_heatmap.png").stat().st_size > 1000


def test_adaptation_rows_are_grouped_by_method_and_ordered_by_shots_however_the_grid_grew(tmp_path):
    rows = []
    for shots in (3, 1, 10):  # a grid extended later with 10 shots, then 1
        for seed in (0, 1):
            rows.append({"stage": "fim", "method": "ft", "shots": shots, "seed": seed, "test_acc": 0.5 + shots / 100})
    for method in ("source_only", "shot"):
        for seed in (0, 1):
            rows.append({"stage": "fim", "method": method, "shots": math.nan, "seed": seed, "test_acc": 0.4 + seed / 10})
    results = pd.DataFrame(rows).assign(run=lambda f: [f"r{i}" for i in range(len(f))], run_dir="/nowhere")
    results.to_csv(tmp_path / "results.csv", index=False)
    text = write_report(tmp_path).read_text()
    table = [line for line in text.splitlines() if line.startswith("| fim |")]
    assert [line.split(" | ")[1:3] for line in table] == [["ft", "1"], ["ft", "3"], ["ft", "10"], ["source_only", "0"],
                                                          ["shot", "0"]]
    assert "| fim | source_only | 0 | 0.450 ± 0.071 |" in text
    assert (tmp_path / "accuracy_vs_shots.png").stat().st_size > 1000


def test_accuracy_against_shots_draws_each_method_its_own_colour_and_style(tmp_path, monkeypatch):
    from fimvision.study import report as report_module

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
    assert len(drawn) == 5 and len({colour for colour, _ in drawn.values()}) == 5
    assert len({style for _, style in drawn.values()}) == 5


