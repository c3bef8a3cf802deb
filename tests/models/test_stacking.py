"""The real-data recipe (configs/supervised/fim_real.yaml, StackedClassifier) through the real CLI and real
checkpoints: the trees and the combination are fitted where the docs say, saved with the checkpoint, and what
`test` and `predict` answer is that combination."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fimtest import CONFIGS, fast_args, run_cli, run_main

from fimvision.calibration import fit_combination
from fimvision.models.stacking import StackedClassifier
from fimvision.models.trees import booster_log_probs

RECIPE = CONFIGS / "supervised" / "fim_real.yaml"


@pytest.fixture(scope="module")
def stacked(synthetic_root, tmp_path_factory):
    """A stacked model fitted for 2 epochs on the tiny synthetic set; (cli, best checkpoint, run folder)."""
    out = tmp_path_factory.mktemp("stacked")
    cli = run_cli(["fit", "--config", RECIPE, *fast_args(synthetic_root, out), "--model.init_args.backbone=test_resnet",
                   "--trainer.max_epochs=2"])
    run_dir = Path(cli.trainer.log_dir)
    return cli, next((run_dir / "checkpoints").glob("best*.ckpt")), run_dir


def network_and_trees(model: StackedClassifier, dataset, booster) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The network's evaluation logits (with the model's TTA), the trees' log-probabilities and the targets of
    every particle of ``dataset``, computed here without the Lightning loop."""
    batch = {k: torch.stack([dataset[i][k] for i in range(len(dataset))]) for k in ("image", "features")}
    with torch.no_grad():
        network = model.eval().evaluation_logits(batch)
    return network, booster_log_probs(booster, batch["features"], model.hparams.num_classes), torch.as_tensor(
        dataset.targets)


def test_combination_is_fitted_on_the_validation_split_with_the_checkpoints_own_weights(stacked):
    cli, best, _ = stacked
    model = StackedClassifier.load_from_checkpoint(best, weights_only=False)
    assert model.combination is not None and model.booster is not None and model.booster_val is not None
    data = cli.datamodule
    network, trees, target = network_and_trees(model, data.datasets["val"], model.booster_val)
    weights, bias = fit_combination([network.log_softmax(1), trees], target)
    assert model.combination[0] == pytest.approx(weights, abs=1e-3)
    assert model.combination[1] == pytest.approx(bias, abs=1e-3)
    # The answering trees saw training + validation particles (as fimvision-baseline's), the others training only.
    train, val = data.datasets["train"], data.datasets["val"]
    assert model.booster_val.n_features_in_ == model.booster.n_features_in_ == data.features().shape[1]
    assert model.booster.n_iter_ >= 1
    raw = data.features()
    refit = type(model.booster)(**model.booster.get_params()).fit(
        raw[np.concatenate([train.positions, val.positions])], np.concatenate([train.targets, val.targets]))
    np.testing.assert_allclose(refit.predict_proba(raw[:20]), model.booster.predict_proba(raw[:20]))


def test_test_and_predict_answer_the_combination_of_network_and_trees(stacked, tmp_path):
    cli, best, run_dir = stacked
    model = StackedClassifier.load_from_checkpoint(best, weights_only=False)
    network, trees, target = network_and_trees(model, cli.datamodule.datasets["test"], model.booster)
    (w_net, w_trees), bias = model.combination
    expected = (w_net * network.log_softmax(1) + w_trees * trees + torch.tensor(bias)).softmax(1).numpy()

    test = run_cli(["test", "--config", run_dir / "config.yaml", f"--ckpt_path={best}"])
    predictions = pd.read_csv(run_dir / "test_predictions.csv")
    probs = predictions[[f"prob_{c}" for c in model.class_names]].to_numpy()
    np.testing.assert_allclose(probs, expected, atol=2e-4)
    f1 = test.trainer.callback_metrics["test_f1_macro"]
    from sklearn.metrics import f1_score
    assert float(f1) == pytest.approx(f1_score(target, expected.argmax(1), average="macro"), abs=1e-5)

    run_cli(["predict", "--config", run_dir / "config.yaml", f"--ckpt_path={best}",
             f"--prediction_writer.output_dir={tmp_path / 'pred'}"])
    particles = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    rows = cli.datamodule.datasets["test"].rows
    ids = cli.datamodule.manifest.frame["particle_id"].iloc[rows].astype(str).to_numpy()
    mine = particles.set_index(particles["particle_id"].astype(str)).loc[ids]
    np.testing.assert_allclose(mine[[f"prob_{c}" for c in model.class_names]].to_numpy(), expected, atol=2e-4)
    samples = pd.read_csv(tmp_path / "pred" / "samples.csv")
    assert any(c.startswith("adjusted_fraction_") for c in samples.columns)  # the combination's confusion matrix


def test_the_recipe_without_features_is_a_config_error(synthetic_root, tmp_path, capsys):
    assert run_main(["fit", "--config", RECIPE, *fast_args(synthetic_root, tmp_path),
                     "--model.init_args.backbone=test_resnet", "--data.init_args.features=null"]) == 2
    assert "features: instrument" in capsys.readouterr().err


def test_boosted_trees_model_scores_exactly_as_the_baseline_command_on_the_same_split(synthetic_root, tmp_path):
    from fimvision.baselines import features_baseline

    args = ["--config", RECIPE, *fast_args(synthetic_root, tmp_path),
            f"--model={CONFIGS / 'supervised' / 'models' / 'boosted_trees.yaml'}"]
    fit = run_cli(["fit", *args])
    run_dir = Path(fit.trainer.log_dir)
    best = next((run_dir / "checkpoints").glob("best*.ckpt"))
    test = run_cli(["test", "--config", run_dir / "config.yaml", f"--ckpt_path={best}"])
    baseline = features_baseline(run_cli(args, run=False).datamodule, seed=0)
    assert float(test.trainer.callback_metrics["test_f1_macro"]) == pytest.approx(baseline["test_f1_macro"], abs=1e-6)
    assert float(test.trainer.callback_metrics["test_acc"]) == pytest.approx(baseline["test_acc"], abs=1e-6)


def test_trees_fit_with_a_class_of_one_particle():
    from fimvision.models.trees import fit_booster

    rng = np.random.default_rng(0)
    features, targets = rng.normal(size=(60, 3)), np.r_[np.zeros(59, int), 1]  # one protist in the training run
    booster = fit_booster(features, targets, max_iter=20)
    assert not booster.do_early_stopping_ and booster.predict_proba(features).shape == (60, 2)
    assert fit_booster(features, np.arange(60) % 2, max_iter=20).do_early_stopping_
