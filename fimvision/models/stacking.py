"""StackedClassifier: an image network and gradient-boosted trees on the instrument features, stacked.

On real FlowCam exports the instrument's own measurements (size, shape, intensity, colour) classify
at least as well as a network on 24 px crops, and the two make partly different errors. Late fusion
squashes the features through the network's training; stacking keeps each learner where it is
strong: the network sees the pixels, scikit-learn's histogram gradient boosting sees the raw
features (missing values handled natively), and a meta-model with one weight per learner and one
bias per class, ``softmax(w_net * log p_net + w_trees * log p_trees + b)``, is fitted by minimum
log-loss on the validation split only (:func:`fimvision.calibration.fit_combination`).

- The trees are fitted once when training starts: ``booster_val`` on the training split, whose
  validation probabilities are honest inputs for the meta-model, and ``booster`` on training +
  validation (as ``fimvision-baseline`` does), which answers at test and predict time.
- After every validation pass the meta-model is refitted on that pass's network outputs, so each
  checkpoint holds the combination fitted for its own weights; the validation confusion matrix
  (for corrected compositions) is the combination's.
- Validation loss and metrics, which select the checkpoint, are the network's alone (a combination
  scored on the data it was fitted on would look better than it is); ``val_f1_macro_stacked`` is
  logged for information.

The fitted trees are pickled into the checkpoint (``checkpoint["stacking"]``) and unpickled when it
is loaded: load only checkpoints you made yourself (as with any pickle).
"""

from __future__ import annotations

import pickle
from typing import Any, Literal

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import f1_score
from torch import Tensor
from torchmetrics.functional.classification import multiclass_confusion_matrix

from fimvision.calibration import fit_combination
from fimvision.errors import CheckpointError, ConfigError
from fimvision.models.classifier import ParticleClassifier
from fimvision.models.trees import booster_log_probs, fit_booster, need_features, split_features


class StackedClassifier(ParticleClassifier):
    """A timm network on the particle image and gradient-boosted trees on its instrument features, combined
    by per-learner weights and per-class biases fitted on the validation split (see the module docstring).
    Needs features (``features: instrument`` on the data module). The recipe for real exports:
    ``configs/supervised/fim_real.yaml``.

    Args:
        fuse_features: the network also sees the standardised features (late fusion) instead of the image only.
        booster_iter: most boosting iterations of the trees (early stopping on an internal split).
        **kwargs: the arguments of :class:`~fimvision.models.classifier.ParticleClassifier`.
    """

    def __init__(self, fuse_features: bool = False, booster_iter: int = 300, **kwargs: Any) -> None:
        need_features(type(self).__name__, kwargs.get("num_features", 0))
        if kwargs.get("features_only"):
            raise ConfigError("StackedClassifier does not take features_only: for trees on the features alone use "
                              "BoostedTrees (--model=BoostedTrees) or `fimvision-baseline --config ...`.")
        super().__init__(**kwargs)
        self.booster: HistGradientBoostingClassifier | None = None
        self.booster_val: HistGradientBoostingClassifier | None = None
        #: Meta-model: weights of [network, trees] log-probabilities and per-class biases.
        self.combination: tuple[list[float], list[float]] | None = None
        self._val_trees: list[Tensor] = []

    def network_takes_features(self) -> bool:
        return self.hparams.fuse_features

    # --- the trees ----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return
        data, iterations = self.trainer.datamodule, self.hparams.booster_iter
        self.booster_val = fit_booster(*split_features(data, "train"), max_iter=iterations)
        self.booster = fit_booster(*split_features(data, "train", "val"), max_iter=iterations)

    def tree_log_probs(self, batch: dict, booster: HistGradientBoostingClassifier | None) -> Tensor:
        return booster_log_probs(booster, batch.get("features"), self.hparams.num_classes)

    def combine(self, network_logits: Tensor, tree_log_probs: Tensor) -> Tensor:
        """The meta-model's logits (log-probabilities up to a constant)."""
        weights, bias = self.combination or ([0.5, 0.5], [0.0] * self.hparams.num_classes)
        net = network_logits.float().log_softmax(dim=1)
        return weights[0] * net + weights[1] * tree_log_probs.to(net) + torch.tensor(bias, device=net.device)

    # --- evaluation -------------------------------------------------------------------------------------------
    def output_logits(self, batch: dict, stage: Literal["val", "test", "predict"]) -> Tensor:
        network = self.evaluation_logits(batch)
        if stage == "val":
            return network
        return self.combine(network, self.tree_log_probs(batch, self.booster))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate(batch, "val")
        known = batch["target"] >= 0
        if known.any() and not self.trainer.sanity_checking:  # aligned with the base's _val_outputs
            self._val_trees.append(self.tree_log_probs({"features": batch["features"][known]}, self.booster_val))

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._val_trees = []

    def on_validation_epoch_end(self) -> None:
        outputs, trees = self._val_outputs, self._val_trees
        super().on_validation_epoch_end()  # the network's own temperature, confusion and calibration error
        self._val_trees = []
        if not outputs:
            return
        network = self.gather_uneven(torch.cat([o[0] for o in outputs])).cpu()
        target = self.gather_uneven(torch.cat([o[1] for o in outputs])).cpu()
        trees = self.gather_uneven(torch.cat(trees)).cpu()
        self.combination = fit_combination([network.float().log_softmax(dim=1), trees], target)
        predicted = self.combine(network, trees).argmax(dim=1)
        n = self.hparams.num_classes
        # The combination is fitted by log-loss: its probabilities need no temperature of their own.
        self.temperature = 1.0
        self.validation_confusion = multiclass_confusion_matrix(predicted, target, n).numpy()
        predicted = predicted.numpy()
        weights, _ = self.combination
        self.log_dict({"val_f1_macro_stacked": float(f1_score(target.numpy(), predicted, labels=np.arange(n),
                                                              average="macro", zero_division=0)),
                       "val_weight_network": weights[0], "val_weight_trees": weights[1]}, sync_dist=False)

    # --- checkpoints: the trees and the meta-model travel with the weights -------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["stacking"] = {"booster": pickle.dumps(self.booster), "booster_val": pickle.dumps(self.booster_val),
                                  "combination": self.combination}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        stacking = checkpoint.get("stacking")
        if stacking is None:
            raise CheckpointError("this checkpoint holds no trees (not written by StackedClassifier's `fimvision fit`): "
                                  "use the config it was trained with.")
        self.booster = pickle.loads(stacking["booster"])  # the user's own checkpoint: see the module docstring
        self.booster_val = pickle.loads(stacking["booster_val"])
        self.combination = stacking["combination"]
