"""Gradient-boosted trees on the particle's instrument features: the strongest simple baseline on real
FlowCam exports, as a fimvision model (``BoostedTrees``) and as the pieces the stacked recipe reuses.

scikit-learn's histogram gradient boosting takes the raw features (missing values handled natively,
no scaling), stops early on an internal split, and is fitted on the training and validation particles,
exactly as ``fimvision-baseline`` fits it. As a model it trains in one pass over nothing (the trees are
fitted when training starts), so a study can put it beside the networks as one more level, and
``test`` / ``predict`` treat it like any checkpoint. The fitted trees are pickled into the checkpoint:
load only checkpoints you made yourself.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from torch import Tensor

from fimvision.errors import CheckpointError, ConfigError
from fimvision.models.classification import ClassificationTask

# Probability floor before the log: trees say 0 for a class they never saw.
MIN_PROB = 1e-6


def fit_booster(features: np.ndarray, targets: np.ndarray, *, max_iter: int = 300, seed: int | None = None
                ) -> HistGradientBoostingClassifier:
    """Histogram gradient boosting on raw features (N x F, NaN allowed), early stopping on an internal 10 %
    split stratified by class, where every class can be split (2 particles or more, one per class in 10 %);
    otherwise all ``max_iter`` iterations. ``seed`` None: torch's, which follows seed_everything."""
    if seed is None:
        seed = int(torch.initial_seed()) % 2**32
    counts = np.bincount(np.asarray(targets))
    stratifiable = counts[counts > 0].min() >= 2 and 0.1 * len(targets) >= (counts > 0).sum()
    booster = HistGradientBoostingClassifier(max_iter=max_iter, early_stopping=bool(stratifiable), random_state=seed)
    return booster.fit(features, targets)


def booster_log_probs(booster: HistGradientBoostingClassifier | None, features: Tensor | None,
                      num_classes: int) -> Tensor:
    """Log class probabilities (N x K) of ``booster`` on raw ``features``; a class it never saw gets
    :data:`MIN_PROB`."""
    if booster is None:
        raise CheckpointError("these trees were never fitted: evaluate a checkpoint written by `fimvision fit` (the "
                              "trees are saved in it), not a freshly built model.")
    if features is None:
        raise ConfigError("the batch has no features: set the `features:` the model was trained with on the data "
                          "module (e.g. --data.init_args.features=instrument).")
    probs = np.full((len(features), num_classes), MIN_PROB)
    if len(features):
        probs[:, booster.classes_] = np.maximum(booster.predict_proba(features.detach().float().cpu().numpy()),
                                                MIN_PROB)
    probs /= probs.sum(axis=1, keepdims=True)
    return torch.as_tensor(np.log(probs), dtype=torch.float32, device=features.device)


def split_features(datamodule, *splits: str) -> tuple[np.ndarray, np.ndarray]:
    """The raw features and targets of the data module's ``splits`` (e.g. "train", "val"), in that order."""
    raw = datamodule.features()
    positions = np.concatenate([datamodule.datasets[s].positions for s in splits])
    return raw[positions], np.concatenate([datamodule.datasets[s].targets for s in splits])


def need_features(name: str, num_features: int) -> None:
    if num_features == 0:
        raise ConfigError(f"{name} uses the particles' instrument features, but the data module gives none: set "
                          "`features: instrument` (or a list of columns) on the data module.")


class BoostedTrees(ClassificationTask):
    """Gradient-boosted trees on the instrument features alone (no image), fitted on the training and validation
    particles like ``fimvision-baseline``. Validation scores are therefore in-sample (they select nothing here).

    Args:
        booster_iter: most boosting iterations (early stopping on an internal split).
        calibrate: fit a temperature on validation (off: the trees have seen the validation particles).
        **kwargs: the data-linked arguments of :class:`~fimvision.models.base.FimvisionTask` (num_classes,
            class_names, num_features, feature_names, ...); its network and optimizer arguments are unused.
    """

    uses_features = True
    ignored_hparams = ("backbone", "backbone_kwargs", "pretrained", "weights", "backbone_checkpoint", "optimizer",
                       "lr", "weight_decay", "momentum", "scheduler", "warmup_epochs", "tta")

    def __init__(self, booster_iter: int = 300, calibrate: bool = False, **kwargs: Any) -> None:
        need_features(type(self).__name__, kwargs.get("num_features", 0))
        super().__init__(calibrate=calibrate, **kwargs)
        self.automatic_optimization = False  # nothing to step: the trees are fitted in setup
        self.booster: HistGradientBoostingClassifier | None = None

    def configure_models(self) -> None:
        # Lightning's checkpoint callback saves only after an optimizer step: one no-op step over this frozen
        # placeholder is counted, so the fitted trees get a best checkpoint like any model.
        self.step_counter = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def trainer_settings(self) -> dict[str, Any]:
        return {"max_epochs": 1, "limit_train_batches": 1, "num_sanity_val_steps": 0}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.step_counter], lr=0.0)

    def describe(self) -> str:
        return "BoostedTrees (instrument features)"

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.booster = fit_booster(*split_features(self.trainer.datamodule, "train", "val"),
                                       max_iter=self.hparams.booster_iter)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        self.optimizers().step()  # updates nothing (see configure_models)

    def logits(self, batch: dict) -> Tensor:
        return booster_log_probs(self.booster, batch.get("features"), self.hparams.num_classes)

    def evaluation_logits(self, batch: dict) -> Tensor:
        return self.logits(batch)  # no test-time augmentation: features do not rotate

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["trees"] = {"booster": pickle.dumps(self.booster)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "trees" not in checkpoint:
            raise CheckpointError("this checkpoint holds no trees (not written by BoostedTrees' `fimvision fit`).")
        self.booster = pickle.loads(checkpoint["trees"]["booster"])  # the user's own file: see the module docstring
