"""FimvisionTask: the thin base of every model family (supervised, self-supervised, adaptation).

Shaped like torchgeo's ``BaseTask``: the constructor saves the hyper-parameters and calls
``configure_models``, ``configure_losses`` and ``configure_metrics``; a family writes those and its
``training_step``. The base owns only what every family shares:

- hyper-parameters, with the data-linked ``num_classes``, ``class_names``, ``in_chans``, ``img_size`` and
  features (the CLI fills them from the data module);
- the backbone from the timm factory, one path for ``pretrained`` (timm's hub), ``weights`` (a local
  file) and ``backbone_checkpoint`` (the backbone of any fimvision checkpoint): :meth:`build_backbone`;
- one optimizer and schedule set-up from timm's factories (:mod:`fimvision.models.optim`): a family only
  says which parameter groups it trains (:meth:`param_groups`);
- the data-model contract: a family says what its training batches are (``train_on``); a data module
  says what it serves (``serves``); the CLI checks that they match and tells the data module.

Labelled evaluation (metrics, TTA, calibration, confusion matrices, test and predict steps) is a piece of its
own, :class:`~fimvision.models.classification.ClassificationTask`, which the classifiers and adaptation models
build on and self-supervised models do not. A model never reads the trainer's data module for its
evaluation; what it needs comes through the contract, and the test files are written by a callback
(:class:`~fimvision.prediction.TestOutputWriter`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics.utilities.distributed import gather_all_tensors

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


def class_names_for(num_classes: int, class_names: list[str] | None) -> list[str]:
    """The output names of a ``num_classes``-way head: ``class_names``, or "0", "1", ... when not given."""
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
    return list(class_names) if class_names else [str(i) for i in range(num_classes)]


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
    """

    #: What this family's training batches are (the data-model contract).
    train_on: ClassVar[TrainOn] = "labelled"
    #: Whether this family can take numeric features beside the image.
    uses_features: ClassVar[bool] = False
    #: Base arguments a family does not use (left out of the saved hyper-parameters).
    ignored_hparams: ClassVar[tuple[str, ...]] = ()
    #: Arguments that say how to evaluate, not what was trained: a command with --ckpt_path may change them.
    evaluation_hparams: ClassVar[tuple[str, ...]] = ()

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
    ) -> None:
        super().__init__()
        if num_features and not self.uses_features:
            raise ConfigError(f"{type(self).__name__} does not use numeric features, but the data module gives "
                              f"{num_features} ({feature_names}): leave `features` off the data module, or use "
                              "ParticleClassifier.")
        self.save_hyperparameters(ignore=list(self.ignored_hparams))
        self.class_names = class_names_for(num_classes, class_names)
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
        """The family's metrics (optional)."""

    def param_groups(self) -> list[dict]:
        """The parameter groups the optimizer trains (each may set its own ``lr``); by default every
        trainable parameter, weight decay split off by timm's rule."""
        return decay_groups(self, self.hparams.weight_decay)

    def trainer_settings(self) -> dict[str, Any]:
        """Trainer arguments this model needs (e.g. a fixed number of steps); the CLI passes them to the
        trainer it builds, over the config's values."""
        return {}

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

    def gather_uneven(self, tensor: Tensor) -> Tensor:
        """All processes' rows of ``tensor``, in rank order; the processes may hold different numbers of rows
        (each image of an evaluation set is on exactly one)."""
        return torch.cat(gather_all_tensors(tensor)) if self.trainer.world_size > 1 else tensor
