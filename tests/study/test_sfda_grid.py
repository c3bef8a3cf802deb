"""The sfda grid runner: planning, summary statistics, resuming, and both grid configs end to end."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from fimtest import CONFIGS, write_digits

from fimvision.study.sfda import load_grid, main, markdown_table, plan_runs, summarise

GRIDS = CONFIGS / "sfda" / "grid"


def test_plan_runs_shots_only_for_fewshot_methods():
    config = load_grid(GRIDS / "mnist_usps.yaml")
    runs = plan_runs(config)
    per_seed = {"source_only": 1, "ft": 4, "lp_ft": 4, "shot": 1, "nrc": 1, "aad": 1}
    assert len(runs) == 3 * sum(per_seed.values())
    assert {r.n_shot for r in runs if r.method == "ft"} == {1, 3, 5, 10}
    assert {r.n_shot for r in runs if r.method in ("shot", "source_only")} == {0}
    assert len(set(runs)) == len(runs)


def test_summary_mean_and_sample_std():
    rows = [dict(source="A", target="B", scenario="standard", method="ft", n_shot=3, seed=s, test_acc=a,
                 test_balanced_acc=a, cpu_min=1.0) for s, a in enumerate((0.8, 0.9, 1.0))]
    summary = summarise(pd.DataFrame(rows))
    assert summary.loc[0, "test_acc_mean"] == pytest.approx(0.9)
    assert summary.loc[0, "test_acc_std"] == pytest.approx(0.1)  # ddof 1
    assert "| ft (3-shot) | 90.0 ± 10.0 (n=3) | 1.00 |" in markdown_table(summary)


def test_mnist_usps_grid_runs_resumes_and_reports(tmp_path, capsys):
    root = write_digits(tmp_path / "MNIST_vs_USPS.mat")
    args = ["--config", GRIDS / "mnist_usps.yaml", "--out", tmp_path / "out", "--root", root, "--seeds", "0", "1",
            "--shots", "1", "--methods", "source_only", "ft", "shot", "--fast-dev-run"]
    main([str(a) for a in args])
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(results) == 6 and set(results["method"]) == {"source_only", "ft", "shot"}
    assert results["test_acc"].between(0, 1).all() and (results["n_test"] == 20).all()
    assert results.loc[results["method"] == "shot", "val_snd"].notna().all()
    assert len(list((tmp_path / "out" / "sources").rglob("source.ckpt"))) == 2  # one source model per seed
    assert results["test_f1_macro"].between(0, 1).all() and results["run_dir"].notna().all()
    main([str(a) for a in args])  # everything done: nothing reruns, nothing is duplicated
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == 6
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "ft (1-shot)" in summary and "(n=2)" in summary and "MNIST → USPS" in summary
    assert (tmp_path / "out" / "accuracy_vs_shots.png").stat().st_size > 0
    assert "results:" in capsys.readouterr().out


def test_fim_grid_runs(tmp_path):
    from fimvision.data.synthetic import SyntheticConfig, write_dataset

    root = tmp_path / "synthetic"
    write_dataset(root, SyntheticConfig(antibodies=8, per_class=6, particles_per_vial=3, seed=0), progress=False)
    main([str(a) for a in ["--config", GRIDS / "fim_antibody.yaml", "--out", tmp_path / "out", "--root", root,
                           "--seeds", "0", "--shots", "1", "--fast-dev-run"]])
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert set(results["method"]) == {"source_only", "ft", "lp_ft", "shot", "nrc", "aad"}
    assert (results["target"] == "group=ab8").all()


@pytest.mark.parametrize("text, message", [
    (f"config: {GRIDS.parent / 'mnist_usps.yaml'}\npairs: [[A, B]]\nsource: {{}}\nmethods: {{x: {{model: nope.yaml}}}}\n",
     "key 'x.model'"),
    ("config: missing.yaml\npairs: [[A, B]]\nsource: {}\nmethods: {}\n", "key 'config'"),
    ("config: x.yaml\npairs: [[A, B]]\nsource: {}\nmethods: {}\nsteps: 3\n", "steps"),
    ("config: x.yaml\npairs: [[A, B]]\nsource: {}\nmethods: {}\nseeds: [one]\n", "seeds"),
])
def test_grid_config_errors(tmp_path, capsys, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert main(["--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}") and message in err


def test_a_grid_run_saves_the_config_of_the_equivalent_fit(tmp_path):
    from fimtest import run_cli

    root = write_digits(tmp_path / "MNIST_vs_USPS.mat")
    limits = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
              f"--data.init_args.root={root}", "--data.init_args.image_size=16"]
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "config": str(GRIDS.parent / "mnist_usps.yaml"), "pairs": [["MNIST", "USPS"]], "seeds": [0], "shots": [1],
        "source": {"model": str(GRIDS.parent / "models" / "source_small_cnn.yaml"), "args": limits},
        "methods": {"shot": {"model": str(GRIDS.parent / "models" / "shot.yaml"), "args": limits}}}))
    assert main(["--config", str(grid), "--out", str(tmp_path / "out")]) == 0
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    run_dir = Path(results.loc[0, "run_dir"])
    source = next((tmp_path / "out" / "sources").rglob("source.ckpt"))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    run_cli(["fit", "--config", GRIDS.parent / "mnist_usps.yaml", "--model", GRIDS.parent / "models" / "shot.yaml",
             "--seed_everything=0", "--data.init_args.source=MNIST", "--data.init_args.target=USPS",
             "--data.init_args.seed=0", "--data.init_args.n_shot=1", f"--trainer.logger.init_args.save_dir={tmp_path / 'by_hand'}",
             "--trainer.logger.init_args.name=", "--trainer.logger.init_args.version=shot0_seed0",
             f"--trainer.default_root_dir={tmp_path / 'by_hand' / 'shot0_seed0'}",
             "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *limits,
             f"--model.init_args.source_checkpoint={source}"])
    by_hand = yaml.safe_load((tmp_path / "by_hand" / "shot0_seed0" / "config.yaml").read_text())
    for config in (saved, by_hand):
        config["trainer"]["logger"]["init_args"].pop("save_dir")
        config["trainer"].pop("default_root_dir")
    assert saved == by_hand
