"""ClassificationTask: labelled evaluation, the piece every classifier shares (the supervised classifiers and the
domain-adaptation models; not the self-supervised ones).

- one metric collection for every labelled evaluation (accuracy, balanced accuracy, macro F1, per-class
  recall, confusion matrix, calibration error; target -1 means "unknown class" and is left out);
- the evaluate (validation/test) and predict steps, with optional test-time augmentation over the 8
  dihedral transforms (``tta``) and temperature scaling fitted on every validation pass (``calibrate``):
  each checkpoint keeps the temperature and the validation confusion matrix of its own weights, so
  ``predict`` reports calibrated probabilities and per-sample compositions corrected for the classifier's errors.

The test step returns each batch's rows (index, target, logits); the files a test writes (confusion matrix,
test_predictions.csv) are the :class:`~fimvision.prediction.TestOutputWriter` callback's.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor
from torchmetrics.classification import (
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassRecall,
)
from torchmetrics.functional.classification import multiclass_confusion_matrix

from fimvision.calibration import ECE_BINS, dihedral_views, expected_calibration_error, fit_temperature
from fimvision.models.base import FimvisionTask


def labelled_metrics(num_classes: int, **options: Any) -> torchmetrics.MetricCollection:
    """Accuracy, balanced accuracy (macro recall) and macro F1; target -1 (unknown class) is ignored.
    ``options`` go to every metric (e.g. ``sync_on_compute``)."""
    kw = {"num_classes": num_classes, "ignore_index": -1, **options}
    return torchmetrics.MetricCollection({
        "acc": torchmetrics.classification.MulticlassAccuracy(average="micro", **kw),
        "balanced_acc": torchmetrics.classification.MulticlassRecall(average="macro", **kw),
        "f1_macro": torchmetrics.classification.MulticlassF1Score(average="macro", **kw),
    })


class ClassificationTask(FimvisionTask):
    """A model with a classifier head, evaluated on labelled particles (see the module docstring).

    Args:
        tta: test-time augmentation: evaluate and predict on the average class probabilities of the 8
            rotations and reflections of each image (8x the evaluation cost).
        calibrate: fit a temperature on each validation pass and report calibrated probabilities
            (``test_ece_calibrated``, ``predict``); predictions themselves do not change.
        **kwargs: the arguments of :class:`~fimvision.models.base.FimvisionTask`.
    """

    evaluation_hparams: ClassVar[tuple[str, ...]] = ("tta", "calibrate")

    def __init__(self, tta: bool = False, calibrate: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: Softmax temperature fitted on the validation split (1.0: none fitted yet, or calibrate off).
        self.temperature = 1.0
        #: Validation confusion matrix (counts; rows true, columns predicted) of the current weights.
        self.validation_confusion: np.ndarray | None = None
        self._val_outputs: list[tuple[Tensor, Tensor]] = []

    def configure_metrics(self) -> None:
        n = self.hparams.num_classes
        if n < 2:
            self.val_metrics = self.test_metrics = None
            return
        self.val_metrics = labelled_metrics(n).clone(prefix="val_")
        self.test_metrics = labelled_metrics(n).clone(prefix="test_")
        self.test_recall = MulticlassRecall(n, average=None, ignore_index=-1)
        self.test_confusion = MulticlassConfusionMatrix(n, ignore_index=-1)
        self.test_ece = MulticlassCalibrationError(n, n_bins=ECE_BINS, norm="l1", ignore_index=-1)
        self.test_ece_calibrated = MulticlassCalibrationError(n, n_bins=ECE_BINS, norm="l1", ignore_index=-1)

    def evaluation_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """The validation/test loss on labelled rows (cross-entropy by default)."""
        return F.cross_entropy(logits.float(), target)

    def logits(self, batch: dict) -> Tensor:
        """The network's logits for a batch (families with inputs besides the image override this)."""
        return self(batch["image"])

    def evaluation_logits(self, batch: dict) -> Tensor:
        """Logits for evaluation and prediction: with ``tta``, the log of the class probabilities averaged
        over the 8 dihedral views of each image."""
        if not self.hparams.get("tta"):
            return self.logits(batch)
        probs = torch.stack([self.logits({**batch, "image": view}).float().softmax(dim=1)
                             for view in dihedral_views(batch["image"])]).mean(dim=0)
        return probs.clamp_min(1e-12).log()

    def output_logits(self, batch: dict, stage: Literal["val", "test", "predict"]) -> Tensor:
        """What this model answers for ``stage``: the network's evaluation logits; a family that adds a
        second stage fitted on validation predictions (stacking) answers differently in test and predict."""
        return self.evaluation_logits(batch)

    def calibrated_probs(self, logits: Tensor) -> Tensor:
        """Class probabilities with the validation temperature (``calibrate``) applied."""
        return (logits.float() / self.temperature).softmax(dim=1)

    def evaluate(self, batch: dict, stage: Literal["val", "test"]) -> Tensor:
        """Logits of a labelled batch; logs the loss and metrics of its known-class rows (target >= 0)."""
        logits = self.output_logits(batch, stage)
        target = batch["target"]
        known = target >= 0
        if stage == "val" and known.any() and not self.trainer.sanity_checking:
            self._val_outputs.append((logits[known].detach().float(), target[known]))
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        if known.any() and metrics is not None:
            size = int(known.sum())
            self.log(f"{stage}_loss", self.evaluation_loss(logits[known], target[known]), prog_bar=True,
                     batch_size=size, sync_dist=True)
            metrics.update(logits, target)
            self.log_dict(metrics, prog_bar=stage == "val", batch_size=size)
            if stage == "test":
                probs = logits.float().softmax(dim=1)
                for metric in (self.test_recall, self.test_confusion, self.test_ece):
                    metric.update(probs, target)
                self.test_ece_calibrated.update(self.calibrated_probs(logits), target)
        return logits

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def on_validation_epoch_end(self) -> None:
        """Fit the temperature and record the confusion matrix on this validation pass (before the
        checkpoint of these weights is saved), and log the calibration error before and after."""
        if not self._val_outputs or self.val_metrics is None:
            return
        logits = self.gather_uneven(torch.cat([o[0] for o in self._val_outputs])).cpu()
        target = self.gather_uneven(torch.cat([o[1] for o in self._val_outputs])).cpu()
        self._val_outputs = []
        self.temperature = fit_temperature(logits, target) if self.hparams.get("calibrate", True) else 1.0
        n = self.hparams.num_classes
        self.validation_confusion = multiclass_confusion_matrix(logits.argmax(1), target, n).numpy()
        self.log_dict({"val_ece": expected_calibration_error(logits.softmax(1), target),
                       "val_ece_calibrated": expected_calibration_error(self.calibrated_probs(logits), target),
                       "val_temperature": self.temperature}, sync_dist=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        confusion = self.validation_confusion
        checkpoint["calibration"] = {"temperature": self.temperature,
                                     "validation_confusion": None if confusion is None else confusion.tolist()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        calibration = checkpoint.get("calibration") or {}  # absent in checkpoints of older versions
        self.temperature = float(calibration.get("temperature", 1.0))
        confusion = calibration.get("validation_confusion")
        self.validation_confusion = None if confusion is None else np.asarray(confusion, dtype=np.int64)

    def on_test_epoch_start(self) -> None:
        self.test_confusion_result: tuple[np.ndarray, list[str]] | None = None

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        """Logs the batch's metrics; returns its rows (for :class:`~fimvision.prediction.TestOutputWriter`)."""
        logits = self.evaluate(batch, "test")
        return {"index": batch["index"], "target": batch["target"], "logits": logits}

    def on_test_epoch_end(self) -> None:
        if self.test_metrics is None or not self.test_confusion.update_called:
            return
        for name, recall in zip(self.class_names, self.test_recall.compute(), strict=True):
            self.log(f"test_recall_{name}", recall)
        self.log_dict({"test_ece": self.test_ece.compute(), "test_ece_calibrated": self.test_ece_calibrated.compute()})
        #: The test confusion matrix (counts; rows true, columns predicted) and the class names: for the test files
        #: and trackers (fimvision/prediction.py, fimvision/tracking.py).
        self.test_confusion_result = (self.test_confusion.compute().cpu().numpy(), self.class_names)
        for metric in (self.test_recall, self.test_confusion, self.test_ece, self.test_ece_calibrated):
            metric.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"index": batch["index"], "probs": self.calibrated_probs(self.output_logits(batch, "predict"))}
