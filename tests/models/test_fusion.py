"""Image + features (late fusion), features only, test-time augmentation and calibration, through the real
CLI and real checkpoints; the features-only baseline command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fimtest import CONFIGS, fast_args, run_cli, run_main

from fimvision.calibration import dihedral_views
from fimvision.models.classifier import ParticleClassifier
from fimvision.models.fusion import FeatureScaler

FUSED = CONFIGS / "supervised" / "resnet18_color_features.yaml"


def fused_fit(root: Path, out: Path, *extra: str):
    return run_cli(["fit", "--config", FUSED, *fast_args(root, out), "--model.init_args.backbone=test_resnet",
                    "--trainer.max_epochs=2", *extra])


def test_scaler_standardises_with_training_statistics_and_fills_missing_with_the_mean():
    scaler = FeatureScaler(3)
    raw = np.array([[1.0, 10.0, 5.0], [3.0, np.nan, 5.0], [5.0, 30.0, 5.0]], np.float32)
    scaler.fit(raw)
    np.testing.assert_allclose(scaler.mean, [3.0, 20.0, 5.0])
    np.testing.assert_allclose(scaler.std, [math.sqrt(8 / 3), 10.0, 1.0], rtol=1e-6)  # constant column: std 1
    out = scaler(torch.tensor([[3.0, float("nan"), 7.0]]))
    np.testing.assert_allclose(out, [[0.0, 0.0, 2.0]])


def test_fused_model_fits_on_training_statistics_and_its_checkpoint_carries_them(synthetic_root, tmp_path):
    cli = fused_fit(synthetic_root, tmp_path)
    model, dm = cli.model, cli.datamodule
    assert model.hparams.feature_names == dm.feature_names and model.hparams.num_features == dm.num_features > 5
    train = dm.train_features()
    np.testing.assert_allclose(model.scaler.mean.numpy(), np.nanmean(train, axis=0), rtol=1e-5)
    everything = dm._features  # the statistics are not those of all particles (val and test stay out)
    assert not np.allclose(model.scaler.mean.numpy(), np.nanmean(everything, axis=0), rtol=1e-5)
    best = next((Path(cli.trainer.log_dir) / "checkpoints").glob("best*.ckpt"))
    restored = ParticleClassifier.load_from_checkpoint(best)
    assert torch.equal(restored.scaler.mean, model.scaler.mean)
    calibration = torch.load(best, weights_only=False)["calibration"]
    assert calibration["temperature"] > 0 and np.asarray(calibration["validation_confusion"]).shape == (2, 2)
    assert np.asarray(calibration["validation_confusion"]).sum() == len(dm.datasets["val"])
    # The checkpoint refuses data without its features, and says which setting fits.
    code = run_main(["predict", "--config", Path(cli.trainer.log_dir) / "config.yaml", f"--ckpt_path={best}",
                     "--data.init_args.features=null"])
    assert code == 2


def test_features_only_has_no_image_network_and_learns(synthetic_root, tmp_path):
    cli = fused_fit(synthetic_root, tmp_path, "--model.init_args.features_only=true")
    assert not hasattr(cli.model, "model")
    metrics = pd.read_csv(Path(cli.trainer.log_dir) / "metrics.csv")
    assert metrics["val_acc"].dropna().iloc[-1] > 0.5


def test_features_only_without_features_is_a_config_error(synthetic_root, tmp_path):
    assert run_main(["fit", "--config", CONFIGS / "supervised" / "resnet18_color.yaml",
                     *fast_args(synthetic_root, tmp_path), "--model.init_args.features_only=true"]) == 2


def test_tta_averages_the_probabilities_of_the_eight_views():
    model = ParticleClassifier(num_classes=3, backbone="test_resnet", in_chans=3, tta=True).eval()
    batch = {"image": torch.randn(2, 3, 16, 16)}
    expected = torch.stack([model(v).softmax(1) for v in dihedral_views(batch["image"])]).mean(0)
    with torch.no_grad():
        torch.testing.assert_close(model.evaluation_logits(batch).exp(), expected)
    model.hparams.tta = False
    with torch.no_grad():
        torch.testing.assert_close(model.evaluation_logits(batch), model(batch["image"]))


def test_test_reports_calibration_and_tta_changes_nothing_but_the_metrics(synthetic_root, tmp_path):
    cli = run_cli(["fit", "--config", CONFIGS / "supervised" / "resnet18_color.yaml", *fast_args(synthetic_root, tmp_path),
                   "--model.init_args.backbone=test_resnet", "--trainer.max_epochs=2"])
    run_dir = Path(cli.trainer.log_dir)
    best = next((run_dir / "checkpoints").glob("best*.ckpt"))
    metrics = {}
    for tta in ("false", "true"):
        test = run_cli(["test", "--config", run_dir / "config.yaml", f"--ckpt_path={best}",
                        f"--model.init_args.tta={tta}"])
        metrics[tta] = test.trainer.callback_metrics
        # The command's evaluation options win over the checkpoint's saved hyper-parameters.
        assert test.model.hparams.tta is (tta == "true")
        assert test.model.temperature == pytest.approx(torch.load(best, weights_only=False)["calibration"]["temperature"])
    for m in metrics.values():
        assert 0 <= float(m["test_ece"]) <= 1 and 0 <= float(m["test_ece_calibrated"]) <= 1
    predictions = pd.read_csv(run_dir / "test_predictions.csv")
    assert np.allclose(predictions.filter(like="prob_").sum(axis=1), 1.0, atol=1e-5)


def test_baseline_command_scores_features_on_the_same_split(work, monkeypatch, capsys):
    from fimvision.baselines import main

    config = CONFIGS / "supervised" / "fim_real.yaml"  # the recipe's config, as docs/real_data.md runs it
    args = ["--config", str(config), "--data.init_args.root=data", "--data.init_args.image_size=32"]
    out = f"hgb-{config.stem}"
    monkeypatch.chdir(work)  # `fimvision-baseline` in this process (its exit codes as a subprocess: test_entry_points)
    capsys.readouterr()
    code = main([*args, "--out", out])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr[-2000:]
    scores = json.loads((work / out / "baseline_metrics.json").read_text())
    assert f"test_f1_macro={scores['test_f1_macro']:.4f}" in stdout
    # The same trees fitted here on the config's own split (train + val rows) score the same test rows.
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import f1_score

    data = run_cli([*args[:2], f"--data.init_args.root={work / 'data'}", *args[3:]], run=False).datamodule
    split, x, y = data.split_rows(), data.features(), np.asarray(data.manifest.targets())
    fit = np.concatenate([np.flatnonzero(split == "train"), np.flatnonzero(split == "val")])  # its row order
    trees = HistGradientBoostingClassifier(max_iter=300, early_stopping=True, random_state=0).fit(x[fit], y[fit])
    expected = f1_score(y[split == "test"], trees.predict(x[split == "test"]), average="macro")
    assert scores["test_f1_macro"] == pytest.approx(expected, abs=1e-9)
    assert scores["n_test"] == (split == "test").sum() and scores["features"] == data.feature_names
