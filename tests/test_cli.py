"""The real `fimvision` CLI: every supervised config, bad input, checkpoints, resume and prediction."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from fimtest import (
    CONFIGS,
    assert_learns,
    assert_logged,
    fast_args,
    fit_on_one_batch,
    rewrite_manifest,
    run_cli,
    run_main,
)

from fimvision.composition import adjusted_fractions, misclassification_matrix

SUPERVISED = sorted(p for p in (CONFIGS / "supervised").glob("*.yaml"))


def metrics_of(out):
    """The last logged value of each metric in the CSVLogger file(s) under ``out``."""
    frames = [pd.read_csv(p) for p in sorted(out.rglob("metrics.csv"))]
    return pd.concat(frames).ffill().iloc[-1]


def test_there_are_colour_and_mono_twins():
    names = {p.stem for p in SUPERVISED}
    assert {"resnet18_color", "resnet18_mono", "vit_color", "vit_mono"} <= names
    for stem in ("resnet18", "vit"):
        color, mono = ([line for line in (CONFIGS / "supervised" / f"{stem}_{m}.yaml").read_text().splitlines()
                        if not line.startswith("#")] for m in ("color", "mono"))
        differ = [(a, b) for a, b in zip(color, mono, strict=True) if a != b]
        assert differ == [("data: data/synthetic_color.yaml", "data: data/synthetic_mono.yaml")]


# timm's tiny test models stand in for each config's backbone: the config's own settings, a fast network.
TINY = {"resnet18": "test_resnet", "vit": "test_vit", "fim": "test_resnet"}  # fim_real: a ResNet-18 stack


@pytest.mark.parametrize("config", SUPERVISED, ids=lambda p: p.stem)
def test_supervised_config_learns_and_logs_its_metrics(config, synthetic_root, tmp_path):
    tiny = [f"--model.init_args.backbone={TINY[config.stem.split('_')[0]]}"]
    if config.stem.startswith("vit"):
        tiny.append("--model.init_args.backbone_kwargs={}")  # test_vit's own patch size
    cli, metrics = fit_on_one_batch(["--config", config, *fast_args(synthetic_root, tmp_path), *tiny], tmp_path)
    assert_learns(metrics)
    assert_logged(metrics, "train_loss", "val_loss", "val_acc", "val_balanced_acc", "val_f1_macro", "lr-AdamW/pg1")
    if config.stem == "fim_real":  # the recipe also fits its combination on every validation pass
        assert_logged(metrics, "val_f1_macro_stacked", "val_weight_network", "val_weight_trees")
    assert cli.model.hparams.in_chans == (1 if "mono" in config.stem else 3)


def expect_exit(args, capsys, message):
    assert run_main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.strip().splitlines()[-1].startswith("error: ")


def fit_args(root, out):
    return ["fit", "--config", CONFIGS / "supervised" / "resnet18_color.yaml", *fast_args(root, out),
            "--trainer.fast_dev_run=true"]


def test_missing_column_exits_2(dataset_copy, tmp_path, capsys):
    rewrite_manifest(dataset_copy, lambda f: f.rename(columns={"image": "filename"}))
    expect_exit(fit_args(dataset_copy, tmp_path), capsys, "missing required column(s) ['image']")


def test_missing_file_exits_2(dataset_copy, tmp_path, capsys):
    frame = rewrite_manifest(dataset_copy, lambda f: f)
    (dataset_copy / frame["image"][7]).unlink()
    expect_exit(fit_args(dataset_copy, tmp_path), capsys, f"line 9, column 'image': file '{frame['image'][7]}' not found")


def test_corrupt_image_exits_2(dataset_copy, tmp_path, capsys):
    frame = rewrite_manifest(dataset_copy, lambda f: f)
    (dataset_copy / frame["image"][3]).write_bytes(b"\x89PNG truncated")
    expect_exit(fit_args(dataset_copy, tmp_path), capsys, "line 5, column 'image': cannot decode")


def test_unknown_label_exits_2(dataset_copy, tmp_path, capsys):
    rewrite_manifest(dataset_copy, lambda f: f.assign(label=f["label"].where(f.index != 0, "freeze-thaw")))
    expect_exit([*fit_args(dataset_copy, tmp_path), "--data.init_args.classes=[heat,mechanical]"], capsys,
                "line 2, column 'label': 'freeze-thaw' is not one of classes ['heat', 'mechanical']")


def test_empty_split_exits_2(dataset_copy, tmp_path, capsys):
    rewrite_manifest(dataset_copy, lambda f: f.assign(split=["train", "val"] * (len(f) // 2)))
    expect_exit([*fit_args(dataset_copy, tmp_path), "--data.init_args.split=predefined"], capsys,
                "split 'predefined' (fold 0) left the 'test' set empty")


def newest(out, name="last.ckpt"):
    return max(out.rglob(name), key=lambda p: p.stat().st_mtime)


def train(root, out, *extra):
    run_cli(["fit", "--config", CONFIGS / "supervised" / "resnet18_color.yaml", *fast_args(root, out),
             "--trainer.max_epochs=1", "--data.init_args.augment=false", *extra])
    return newest(out)


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    return train(synthetic_root, out, "--trainer.limit_train_batches=4"), out


def test_test_and_validate_write_into_the_runs_folder(trained, synthetic_root, tmp_path):
    ckpt, _ = trained
    run = ckpt.parent.parent
    config = CONFIGS / "supervised" / "resnet18_color.yaml"
    for _ in range(2):
        run_cli(["test", "--config", config, *fast_args(synthetic_root, tmp_path / "elsewhere"), f"--ckpt_path={ckpt}"])
    # Validating the saved checkpoint gives the validation scores logged when it was saved.
    run_cli(["validate", "--config", config, *fast_args(synthetic_root, tmp_path / "elsewhere"), f"--ckpt_path={ckpt}"])
    assert not (tmp_path / "elsewhere").exists()  # no second version_N folder
    assert sorted(p.name for p in run.glob("config*.yaml")) == [
        "config.yaml", "config_test.yaml", "config_test_2.yaml", "config_validate.yaml"]
    assert (run / "confusion_matrix.png").stat().st_size > 1000
    rows = pd.read_csv(run / "metrics.csv")
    tests = rows.dropna(subset=["test_acc"])
    assert len(tests) == 2
    for key in ("test_acc", "test_balanced_acc", "test_f1_macro", "test_loss", "test_recall_heat"):
        assert tests[key].iloc[0] == pytest.approx(tests[key].iloc[1], abs=1e-6), key
    vals = rows.dropna(subset=["val_loss"])
    assert len(vals) == 2  # the fit's epoch and the validate run, appended
    for key in ("val_acc", "val_loss", "val_f1_macro"):
        assert vals[key].iloc[-1] == pytest.approx(vals[key].iloc[0], abs=1e-6), key


def test_interrupted_fit_resumes_from_last_checkpoint(synthetic_root, tmp_path):
    out = tmp_path / "run"
    # A first run stopped by the time limit after its first epoch, as an interruption would stop it.
    last = train(synthetic_root, out, "--trainer.limit_train_batches=3")
    first = torch.load(last, weights_only=False)
    assert first["epoch"] == 0 and first["global_step"] == 3
    run_cli(["fit", "--config", CONFIGS / "supervised" / "resnet18_color.yaml", *fast_args(synthetic_root, out),
             "--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--data.init_args.augment=false",
             f"--ckpt_path={last}"])
    resumed = torch.load(newest(out), weights_only=False)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 6  # continued, not restarted


def test_predict_writes_particles_and_sample_verdicts(trained, dataset_copy, tmp_path):
    ckpt, _ = trained
    # New data without labels: the class names come from the checkpoint.
    root = dataset_copy
    truth = rewrite_manifest(root, lambda f: f)
    rewrite_manifest(root, lambda f: f.drop(columns=["label"]))
    cli = run_cli(["predict", "--config", CONFIGS / "supervised" / "resnet18_color.yaml", *fast_args(root, tmp_path),
                   f"--ckpt_path={ckpt}", f"--prediction_writer.output_dir={tmp_path / 'pred'}"])
    particles = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    samples = pd.read_csv(tmp_path / "pred" / "samples.csv")
    assert len(particles) == len(truth)
    assert particles["particle_id"].tolist() == truth["particle_id"].astype(int).tolist()
    assert {"prob_heat", "prob_mechanical", "predicted"} <= set(particles.columns)
    assert (particles[["prob_heat", "prob_mechanical"]].sum(axis=1) - 1).abs().max() < 1e-5
    assert set(samples["sample"]) == set(truth["sample"])
    one = samples.iloc[0]
    mine = particles[particles["sample"] == one["sample"]]
    assert one["n_particles"] == len(mine)
    assert one["confidence"] == pytest.approx(mine[["prob_heat", "prob_mechanical"]].mean().max(), abs=1e-5)
    assert one["verdict"] == mine[["prob_heat", "prob_mechanical"]].mean().idxmax().removeprefix("prob_")
    assert one["count_heat"] == (mine["predicted"] == "heat").sum()
    assert one["fraction_mechanical"] == pytest.approx((mine["predicted"] == "mechanical").mean(), abs=1e-6)
    assert not any(c.startswith(("per_ml", "total_per_ml", "adjusted_per_ml")) for c in samples)  # no volumes
    # The checkpoint carries its validation confusion matrix, and the compositions are adjusted with it.
    confusion = cli.model.validation_confusion
    assert confusion.shape == (2, 2) and confusion.sum() > 0
    raw = samples[["fraction_heat", "fraction_mechanical"]].to_numpy()
    np.testing.assert_allclose(samples[["adjusted_fraction_heat", "adjusted_fraction_mechanical"]].to_numpy(),
                               adjusted_fractions(misclassification_matrix(confusion), raw), atol=1e-5)
    assert (tmp_path / "pred" / "samples.png").read_bytes()[:4] == b"\x89PNG"


class SetValidationConfusion(pl.Callback):
    """Gives the model a validation confusion matrix (or none, as an older checkpoint) once it is restored."""

    def __init__(self, matrix: np.ndarray | None) -> None:
        self.matrix = matrix

    def on_predict_start(self, trainer, pl_module) -> None:
        pl_module.validation_confusion = self.matrix


def predict_with_confusion(ckpt, root, out, confusion):
    """`fimvision predict` of ``ckpt`` on ``root`` with the model's validation confusion set to ``confusion``;
    returns (samples.csv, predictions.csv) as frames."""
    cli = run_cli(["--config", CONFIGS / "supervised" / "resnet18_color.yaml", *fast_args(root, out),
                   f"--prediction_writer.output_dir={out / 'pred'}", "--prediction_writer.bootstrap=200"], run=False)
    cli.trainer.callbacks.append(SetValidationConfusion(confusion))
    cli.trainer.predict(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    assert (out / "pred" / "samples.png").stat().st_size > 5000
    return pd.read_csv(out / "pred" / "samples.csv"), pd.read_csv(out / "pred" / "predictions.csv")


def test_predict_adjusts_compositions_and_counts_per_ml(trained, dataset_copy, tmp_path):
    frame = rewrite_manifest(dataset_copy, lambda f: f.drop(columns=["volume_imaged_ml"], errors="ignore"))
    names = sorted(set(frame["sample"]))
    volume = {s: "" if k == 0 else f"{0.1 * k:g}" for k, s in enumerate(names)}  # the first sample's is unknown
    rewrite_manifest(dataset_copy, lambda f: f.assign(volume_imaged_ml=f["sample"].map(volume)))
    confusion = np.array([[30, 10], [5, 35]])
    samples, particles = predict_with_confusion(trained[0], dataset_copy, tmp_path, confusion)
    assert samples["sample"].tolist() == names
    classes = ["heat", "mechanical"]
    for c in classes:
        counts = particles.groupby("sample")["predicted"].apply(lambda p, c=c: (p == c).sum())
        assert samples[f"count_{c}"].tolist() == counts.reindex(names).tolist()
        assert ((samples[f"adjusted_fraction_{c}_low"] <= samples[f"adjusted_fraction_{c}"] + 1e-6)
                & (samples[f"adjusted_fraction_{c}"] <= samples[f"adjusted_fraction_{c}_high"] + 1e-6)).all()
    raw = samples[[f"fraction_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(samples[[f"adjusted_fraction_{c}" for c in classes]].to_numpy(),
                               adjusted_fractions(misclassification_matrix(confusion), raw), atol=1e-5)
    first, known = samples.iloc[0], samples.iloc[1:]
    volumes = known["sample"].map(volume).astype(float)
    np.testing.assert_allclose(known["total_per_ml"], known["n_particles"] / volumes, rtol=1e-5)
    np.testing.assert_allclose(known["per_ml_heat"], known["count_heat"] / volumes, rtol=1e-5)
    np.testing.assert_allclose(known["adjusted_per_ml_mechanical"],
                               known["n_particles"] * known["adjusted_fraction_mechanical"] / volumes, rtol=1e-5)
    assert (known["adjusted_per_ml_heat_low"] <= known["adjusted_per_ml_heat_high"]).all()
    assert first[["total_per_ml", "per_ml_heat", "adjusted_per_ml_heat", "adjusted_per_ml_heat_high"]].isna().all()


def test_predict_without_validation_confusion_says_why_once(trained, dataset_copy, tmp_path, caplog):
    rewrite_manifest(dataset_copy, lambda f: f.drop(columns=["volume_imaged_ml"], errors="ignore"))
    with caplog.at_level(logging.WARNING, logger="fimvision"):
        samples, _ = predict_with_confusion(trained[0], dataset_copy, tmp_path, None)
    assert [c for c in samples if c.startswith(("adjusted", "per_ml", "total_per_ml"))] == []
    assert {"count_heat", "fraction_mechanical", "verdict", "mean_prob_heat"} <= set(samples.columns)
    assert caplog.text.count("no validation confusion matrix") == 1


def test_unusable_volumes_exit_2_before_predicting(trained, dataset_copy, tmp_path, capsys):
    ckpt, _ = trained
    args = ["predict", "--config", CONFIGS / "supervised" / "resnet18_color.yaml", *fast_args(dataset_copy, tmp_path),
            f"--ckpt_path={ckpt}", f"--prediction_writer.output_dir={tmp_path / 'pred'}"]
    frame = rewrite_manifest(dataset_copy, lambda f: f.assign(volume_imaged_ml=["0.5"] * len(f)))
    first = frame.index[frame["sample"] == frame["sample"][0]]
    rewrite_manifest(dataset_copy, lambda f: f.assign(volume_imaged_ml=f["volume_imaged_ml"].where(
        f.index != first[1], "0.25 mL")))
    expect_exit(args, capsys, f"line {first[1] + 2}, column 'volume_imaged_ml': '0.25 mL' is not a volume in mL")
    rewrite_manifest(dataset_copy, lambda f: f.assign(volume_imaged_ml=f["volume_imaged_ml"].where(
        f.index != first[1], "0.25")))
    expect_exit(args, capsys, f"sample '{frame['sample'][0]}' has volume 0.25 mL here and 0.5 mL on line 2")
    assert not (tmp_path / "pred").exists()


def test_checkpoint_mismatch_is_explained(trained, synthetic_root, tmp_path, capsys):
    ckpt, _ = trained
    expect_exit(["test", "--config", CONFIGS / "supervised" / "resnet18_mono.yaml",
                 *fast_args(synthetic_root, tmp_path), f"--ckpt_path={ckpt}"], capsys,
                "in_chans: checkpoint 3, now 1")


def test_limit_batches_int_means_batches_and_float_a_fraction(synthetic_root, tmp_path):
    base = ["--config", CONFIGS / "supervised" / "resnet18_color.yaml", *fast_args(synthetic_root, tmp_path)]
    one = run_cli([*base, "--trainer.limit_val_batches=1"], run=False).trainer.limit_val_batches
    all_ = run_cli([*base, "--trainer.limit_val_batches=1.0"], run=False).trainer.limit_val_batches
    assert (one, type(one), all_, type(all_)) == (1, int, 1.0, float)


def test_options_are_not_abbreviated(synthetic_root, tmp_path, capsys):
    assert run_main(["fit", "--config", CONFIGS / "supervised" / "resnet18_color.yaml",
                     *fast_args(synthetic_root, tmp_path), "--trainer.max_epoch=3"]) == 2
    assert "unknown option --trainer.max_epoch. Did you mean --trainer.max_epochs" in capsys.readouterr().err


def test_progress_bar_on_a_terminal_one_line_per_epoch_elsewhere(synthetic_root, tmp_path, monkeypatch):
    from pytorch_lightning.callbacks import TQDMProgressBar

    from fimvision.callbacks import EpochLines

    base = ["--config", CONFIGS / "supervised" / "resnet18_color.yaml", *fast_args(synthetic_root, tmp_path)]

    def bar(terminal: bool, *extra):
        monkeypatch.setattr("sys.stdout.isatty", lambda: terminal, raising=False)
        return run_cli([*base, *extra], run=False).trainer.progress_bar_callback

    assert type(bar(True, "--trainer.enable_progress_bar=true")) is TQDMProgressBar
    assert type(bar(False, "--trainer.enable_progress_bar=true")) is EpochLines
    assert bar(False) is None  # switched off: no line either
