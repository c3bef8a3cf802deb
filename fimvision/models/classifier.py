"""ParticleClassifier: supervised training of any timm model on particle images."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fimvision.errors import ConfigError
from fimvision.models.base import FimvisionTask


class ParticleClassifier(FimvisionTask):
    """A timm model trained to classify particles (e.g. by stress source).

    Args:
        label_smoothing: cross-entropy label smoothing.
        class_weights: per-class loss weights, ``balanced`` (inverse training frequency) or None.
        freeze_backbone: train only the classifier head (linear probe; the backbone, batch-norm
            statistics included, stays fixed); otherwise fine-tune everything.
        **kwargs: the arguments of :class:`~fimvision.models.base.FimvisionTask` (backbone, starting
            weights, optimizer and schedule, and the data-linked num_classes, class_names, in_chans, img_size).
    """


    def __init__(self, label_smoothing: float = 0.0, class_weights: list[float] | Literal["balanced"] | None = None,
                 freeze_backbone: bool = False, **kwargs: Any) -> None:
        num_classes = kwargs.get("num_classes", 2)
        if isinstance(class_weights, list) and len(class_weights) != num_classes:
            raise ConfigError(f"class_weights has {len(class_weights)} values for num_classes={num_classes}; give one "
                              "weight per class (in the class order) or `balanced`.")
        super().__init__(**kwargs)

    def configure_models(self) -> None:
        self.model = self.build_backbone(num_classes=self.hparams.num_classes)
        if self.hparams.freeze_backbone:
            head = {id(p) for p in self.model.get_classifier().parameters()}
            for param in self.model.parameters():
                param.requires_grad_(id(param) in head)

    def configure_losses(self) -> None:
        weights = self.hparams.class_weights
        fixed = torch.tensor(weights, dtype=torch.float32) if isinstance(weights, list) else None
        self.register_buffer("loss_weight", fixed if fixed is not None else torch.ones(self.hparams.num_classes),
                             persistent=False)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.class_weights == "balanced":
            counts = self.trainer.datamodule.class_counts("train").float()
            self.loss_weight = (counts.sum() / (len(counts) * counts.clamp(min=1))).to(self.device)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Lightning restores train mode module by module: re-freeze, so a linear probe keeps the backbone's
        # batch-norm statistics (and dropout off).
        if self.hparams.freeze_backbone:
            self.model.eval()
            self.model.get_classifier().train()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, weight=self.loss_weight.to(logits.dtype),
                               label_smoothing=self.hparams.label_smoothing)

    evaluation_loss = loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self(batch["image"])
        loss = self.loss(logits, batch["target"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(logits))
        return loss
