"""FimvisionTask: the one base of every model family (supervised, self-supervised, adaptation).

Shaped like torchgeo's ``BaseTask``: the constructor saves the hyper-parameters and calls
``configure_models``, ``configure_losses`` and ``configure_metrics``; a family writes those and its
``training_step``. The base owns what every family shares, written once:

- hyper-parameters, with the data-linked ``num_classes``, ``class_names``, ``in_chans`` and
  ``img_size`` (the CLI fills them from the data module);
- the backbone from the timm factory, one path for ``pretrained`` (timm's hub), ``weights`` (a local
  file) and ``backbone_checkpoint`` (the backbone of any fimvision checkpoint): :meth:`build_backbone`;
- one metric collection for every labelled evaluation (accuracy, balanced accuracy, macro F1,
  per-class recall, confusion matrix; target -1 means "unknown class" and is left out);
- the evaluate (validation/test) and predict steps, with optional test-time augmentation over the 8
  dihedral transforms (``tta``) and temperature scaling fitted on every validation pass
  (``calibrate``): each checkpoint keeps the temperature and the validation confusion matrix of its
  own weights, so ``predict`` reports calibrated probabilities and per-sample compositions corrected
  for the classifier's errors;
- one optimizer and schedule set-up (:mod:`fimvision.models.optim`): a family only says which
  parameter groups it trains (:meth:`param_groups`).

The data-model contract: a family says what its training batches are (``train_on``); a data module
says what it serves (``serves``); the CLI checks that they match and tells the data module. Nothing
reaches into the trainer for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn
from torchmetrics.functional.classification import multiclass_confusion_matrix

from fimvision.calibration import dihedral_views, expected_calibration_error, fit_temperature
from fimvision.data.base import TrainOn
from fimvision.errors import ConfigError
from fimvision.models.backbones import create_backbone, load_backbone_weights
from fimvision.models.optim import (
    OptimizerName,
    SchedulerName,
    build_optimizer,
    build_schedule,
    decay_groups,
    step_schedule,
)
from fimvision.plots import confusion_matrix_png


def class_names_for(num_classes: int, class_names: list[str] | None) -> list[str]:
    """The output names of a ``num_classes``-way head: ``class_names``, or "0", "1", ... when not given."""
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
    return list(class_names) if class_names else [str(i) for i in range(num_classes)]


def labelled_metrics(num_classes: int, **options: Any) -> torchmetrics.MetricCollection:
    """Accuracy, balanced accuracy (macro recall) and macro F1; target -1 (unknown class) is ignored.
    ``options`` go to every metric (e.g. ``sync_on_compute``)."""
    kw = {"num_classes": num_classes, "ignore_index": -1, **options}
    return torchmetrics.MetricCollection({
        "acc": torchmetrics.classification.MulticlassAccuracy(average="micro", **kw),
        "balanced_acc": torchmetrics.classification.MulticlassRecall(average="macro", **kw),
        "f1_macro": torchmetrics.classification.MulticlassF1Score(average="macro", **kw),
    })


class FimvisionTask(pl.LightningModule):
    """Base of every fimvision model (see the module docstring).

    Args:
        num_classes: classes (linked from the data module).
        in_chans: input channels (linked from the data module: 3 colour, 1 mono).
        img_size: input side (linked from the data module; used by ViTs for position embeddings).
        class_names: class names in output order (linked from the data module; saved in checkpoints).
        num_features: numeric features beside the image (linked from the data module's ``features``; 0:
            image only). Only families with ``uses_features`` (ParticleClassifier) take them.
        feature_names: the features' names in order (linked from the data module; saved in checkpoints).
        backbone: timm model name (resnet18, resnet50, efficientnet_b0, convnext_tiny, vit_small_patch16_224,
            deit_tiny_patch16_224, a tagged name such as resnet18.a1_in1k, ...).
        backbone_kwargs: extra timm arguments, e.g. ``{patch_size: 8}`` or ``{drop_path_rate: 0.1}``.
        pretrained: load timm's hub weights (needs network; off by default).
        weights: local weights file to start the backbone from (no network needed).
        backbone_checkpoint: a fimvision checkpoint (of any family: self-supervised, classifier, source
            model) whose backbone weights to start from; heads start fresh. Architecture and channels
            must match.
        optimizer: adamw, adam, sgd or lars.
        lr: peak learning rate.
        weight_decay: weight decay (not on biases, norm weights, position embeddings and tokens).
        momentum: SGD/LARS momentum.
        scheduler: per-step schedule: ``cosine`` (after a linear warm-up), ``shot`` ((1 + 10 p)^-0.75) or ``none``.
        warmup_epochs: linear warm-up length in epochs (fractions allowed; ``cosine`` only).
        tta: test-time augmentation: evaluate and predict on the average class probabilities of the 8
            rotations and reflections of each image (8x the evaluation cost).
        calibrate: fit a temperature on each validation pass and report calibrated probabilities
            (``test_ece_calibrated``, ``predict``); predictions themselves do not change.
    """

    #: What this family's training batches are (the data-model contract).
    train_on: ClassVar[TrainOn] = "labelled"
    #: Whether this family can take numeric features beside the image.
    uses_features: ClassVar[bool] = False
    #: Base arguments a family does not use (left out of the saved hyper-parameters).
    ignored_hparams: ClassVar[tuple[str, ...]] = ()
    #: Arguments that say how to evaluate, not what was trained: a command with --ckpt_path may change them.
    evaluation_hparams: ClassVar[tuple[str, ...]] = ("tta", "calibrate")

    def __init__(
        self,
        num_classes: int = 2,
        in_chans: int = 3,
        img_size: int | None = None,
        class_names: list[str] | None = None,
        num_features: int = 0,
        feature_names: list[str] | None = None,
        backbone: str = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        pretrained: bool = False,
        weights: str | None = None,
        backbone_checkpoint: str | None = None,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        scheduler: SchedulerName = "cosine",
        warmup_epochs: float = 1.0,
        tta: bool = False,
        calibrate: bool = True,
    ) -> None:
        super().__init__()
        if num_features and not self.uses_features:
            raise ConfigError(f"{type(self).__name__} does not use numeric features, but the data module gives "
                              f"{num_features} ({feature_names}): leave `features` off the data module, or use "
                              "ParticleClassifier.")
        self.save_hyperparameters(ignore=list(self.ignored_hparams))
        self.class_names = class_names_for(num_classes, class_names)
        #: Softmax temperature fitted on the validation split (1.0: none fitted yet, or calibrate off).
        self.temperature = 1.0
        #: Validation confusion matrix (counts; rows true, columns predicted) of the current weights.
        self.validation_confusion: np.ndarray | None = None
        self._val_outputs: list[tuple[Tensor, Tensor]] = []
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    # --- what a family provides ------------------------------------------------------------------------
    def configure_models(self) -> None:
        """Create the networks (use :meth:`build_backbone` for the timm part)."""
        raise NotImplementedError

    def configure_losses(self) -> None:
        """Create loss modules and buffers (optional)."""

    def configure_metrics(self) -> None:
        """The labelled-evaluation metrics; families without a classifier head may leave them out."""
        n = self.hparams.num_classes
        if n < 2:
            self.val_metrics = self.test_metrics = None
            return
        self.val_metrics = labelled_metrics(n).clone(prefix="val_")
        self.test_metrics = labelled_metrics(n).clone(prefix="test_")
        self.test_recall = torchmetrics.classification.MulticlassRecall(n, average=None, ignore_index=-1)
        self.test_confusion = torchmetrics.classification.MulticlassConfusionMatrix(n, ignore_index=-1)

    def param_groups(self) -> list[dict]:
        """The parameter groups the optimizer trains (each may set its own ``lr``); by default every
        trainable parameter, weight decay split off by timm's rule."""
        return decay_groups(self, self.hparams.weight_decay)

    def trainer_settings(self) -> dict[str, Any]:
        """Trainer arguments this model needs (e.g. a fixed number of steps); the CLI passes them to the
        trainer it builds, over the config's values."""
        return {}

    def evaluation_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """The validation/test loss on labelled rows (cross-entropy by default)."""
        return F.cross_entropy(logits.float(), target)

    def describe(self) -> str:
        """A short name for plot titles and reports."""
        return f"{type(self).__name__} ({self.hparams.backbone})"

    # --- shared machinery ------------------------------------------------------------------------------
    def build_backbone(self, num_classes: int = 0) -> nn.Module:
        """The timm network of ``backbone`` for this input, with a ``num_classes``-way head (0: features),
        started from ``weights``, timm's hub (``pretrained``) or a fimvision ``backbone_checkpoint``."""
        h = self.hparams
        model = create_backbone(h.backbone, in_chans=h.in_chans, num_classes=num_classes, pretrained=h.pretrained,
                                weights=h.weights, img_size=h.img_size, **(h.backbone_kwargs or {}))
        if h.backbone_checkpoint:
            load_backbone_weights(model, h.backbone_checkpoint, backbone=h.backbone, in_chans=h.in_chans)
        return model

    @property
    def total_steps(self) -> int:
        """Optimizer steps the trainer plans (1 without a trainer, e.g. in efficiency measurements)."""
        trainer = self._trainer
        return max(1, int(trainer.estimated_stepping_batches)) if trainer is not None else 1

    def warmup_steps(self) -> int:
        trainer = self._trainer
        epochs = trainer.max_epochs if trainer is not None and trainer.max_epochs and trainer.max_epochs > 0 else 1
        return round(self.hparams.get("warmup_epochs", 0.0) * self.total_steps / epochs)

    def configure_optimizers(self):
        h = self.hparams
        optimizer = build_optimizer(self.param_groups(), h.optimizer, h.lr, h.weight_decay, h.momentum)
        schedule = build_schedule(optimizer, h.scheduler, self.total_steps, self.warmup_steps())
        if schedule is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        step_schedule(scheduler, self.global_step)

    def synthetic_batch(self, batch_size: int, generator: torch.Generator | None = None) -> dict:
        """A training batch of random images shaped as this family's data module serves it (for efficiency
        measurements without a dataset)."""
        size = self.hparams.img_size or 64
        image = torch.randn(batch_size, self.hparams.in_chans, size, size, generator=generator)
        target = torch.randint(0, max(1, self.hparams.num_classes), (batch_size,), generator=generator)
        return {"image": image, "target": target, "index": torch.arange(batch_size)}

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

    def gather_uneven(self, tensor: Tensor) -> Tensor:
        """All processes' rows of ``tensor``, in rank order; the processes may hold different numbers of rows
        (each image of an evaluation set is on exactly one)."""
        if self.trainer.world_size == 1:
            return tensor
        sizes = self.all_gather(torch.tensor(len(tensor), device=tensor.device)).tolist()
        padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[:len(tensor)] = tensor
        gathered = self.all_gather(padded)
        return torch.cat([part[:n] for part, n in zip(gathered, sizes, strict=True)])

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
                self.test_recall.update(logits, target)
                self.test_confusion.update(logits, target)
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

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.evaluate(batch, "test")
        self._test_outputs.append((batch["index"].cpu(), batch["target"].cpu(), logits.float().cpu()))

    def on_test_epoch_start(self) -> None:
        self._test_outputs: list[tuple[Tensor, Tensor, Tensor]] = []

    def on_test_epoch_end(self) -> None:
        if self.test_metrics is None or not self.test_confusion.update_called:
            return
        for name, recall in zip(self.class_names, self.test_recall.compute(), strict=True):
            self.log(f"test_recall_{name}", recall)
        matrix = self.test_confusion.compute().cpu().numpy()
        self.test_confusion_result = (matrix, self.class_names)  # for trackers (fimvision/tracking.py)
        self.test_recall.reset()
        self.test_confusion.reset()
        out = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective call: on every process
        predictions, logits = self._gathered_test_predictions()
        known = predictions["target"].to_numpy() >= 0 if len(predictions) else np.zeros(0, bool)
        if known.any():
            target = torch.as_tensor(predictions["target"].to_numpy()[known])
            self.log_dict({"test_ece": expected_calibration_error(logits[known].softmax(1), target),
                           "test_ece_calibrated": expected_calibration_error(self.calibrated_probs(logits[known]),
                                                                             target)}, sync_dist=False)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            confusion_matrix_png(
                matrix, self.class_names, out / "confusion_matrix.png",
                title=f"{self.describe()}, {self.hparams.in_chans}-channel input: test set")
            pd.DataFrame(matrix, index=self.class_names, columns=self.class_names).rename_axis(
                "true").to_csv(out / "confusion_matrix.csv")  # rows true, columns predicted
            predictions.to_csv(out / "test_predictions.csv", index=False, float_format="%.6g")

    def _gathered_test_predictions(self) -> tuple[pd.DataFrame, Tensor]:
        """One row a test image: its index, target, predicted class, confidence and (calibrated) class
        probabilities, with the manifest's particle id, sample and group where the data module has a
        manifest (all processes'); and the rows' logits."""
        parts = [tuple(torch.cat(column) for column in zip(*self._test_outputs, strict=True))] \
            if self._test_outputs else []
        if self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, parts)
            parts = [p for rank in gathered for p in rank]
        if not parts:
            return pd.DataFrame(), torch.empty(0, self.hparams.num_classes)
        index, target, logits = (torch.cat(c) for c in zip(*parts, strict=True))
        index, first = np.unique(index.numpy(), return_index=True)  # sorted; samplers may repeat rows
        target, logits = target.numpy()[first], logits[first]
        probs = self.calibrated_probs(logits).numpy()
        frame = pd.DataFrame({"index": index, "target": target, "predicted": probs.argmax(axis=1),
                              "confidence": probs.max(axis=1)})
        for i, name in enumerate(self.class_names):
            frame[f"prob_{name}"] = probs[:, i]
        manifest = getattr(getattr(self.trainer, "datamodule", None), "manifest", None)
        if manifest is not None:
            rows = manifest.frame.iloc[index]
            for column in ("particle_id", "sample", "group"):
                if column in rows:
                    frame[column] = rows[column].to_numpy()
        return frame, logits

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"index": batch["index"], "probs": self.calibrated_probs(self.output_logits(batch, "predict"))}
