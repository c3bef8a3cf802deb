"""ParticleClassifier: supervised training of any timm model on particle images, alone or fused with the
particle's instrument features (see :mod:`fimvision.models.fusion`)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fimvision.errors import ConfigError
from fimvision.models.classification import ClassificationTask
from fimvision.models.fusion import FeatureScaler, feature_encoder


class ParticleClassifier(ClassificationTask):
    """A timm model trained to classify particles (e.g. by stress source), from the image alone or with the
    particle's numeric features (``num_features`` > 0, linked from the data module's ``features``): then
    the image embedding and a small MLP's embedding of the standardised features are joined before the
    classifier (late fusion).

    Args:
        label_smoothing: cross-entropy label smoothing.
        class_weights: per-class loss weights, ``balanced`` (inverse training frequency) or None.
        freeze_backbone: train only the classifier head (linear probe; the backbone, batch-norm
            statistics included, stays fixed); otherwise fine-tune everything.
        features_only: classify from the features alone (no image network): the features-only branch of
            a fused model, for comparisons.
        feature_hidden: width of the features' MLP embedding.
        **kwargs: the arguments of :class:`~fimvision.models.classification.ClassificationTask` (tta, calibrate) and
            :class:`~fimvision.models.base.FimvisionTask` (backbone, starting
            weights, optimizer and schedule, and the data-linked num_classes, class_names, in_chans, img_size,
            num_features, feature_names).
    """

    uses_features = True


    def __init__(self, label_smoothing: float = 0.0, class_weights: list[float] | Literal["balanced"] | None = None,
                 freeze_backbone: bool = False, features_only: bool = False, feature_hidden: int = 64,
                 **kwargs: Any) -> None:
        num_classes = kwargs.get("num_classes", 2)
        if isinstance(class_weights, list) and len(class_weights) != num_classes:
            raise ConfigError(f"class_weights has {len(class_weights)} values for num_classes={num_classes}; give one "
                              "weight per class (in the class order) or `balanced`.")
        if features_only and kwargs.get("num_features", 0) == 0:
            raise ConfigError("features_only needs features: set `features:` on the data module (e.g. "
                              "--data.init_args.features=instrument).")
        super().__init__(**kwargs)

    def network_takes_features(self) -> bool:
        """Whether the network itself sees the features (late fusion); subclasses may route them elsewhere."""
        return self.hparams.num_features > 0

    def configure_models(self) -> None:
        h = self.hparams
        if not self.network_takes_features():  # image only: the timm network with its own head
            self.model = self.build_backbone(num_classes=h.num_classes)
            head = self.model.get_classifier()
        else:
            self.scaler = FeatureScaler(h.num_features)
            self.feature_encoder = feature_encoder(h.num_features, h.feature_hidden)
            width = h.feature_hidden
            if not h.features_only:
                self.model = self.build_backbone(num_classes=0)
                width += self.model.num_features
            self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(width, h.num_classes))
            head = self.head
        if h.freeze_backbone and hasattr(self, "model"):
            trainable = {id(p) for p in head.parameters()}
            for param in self.model.parameters():
                param.requires_grad_(id(param) in trainable)

    def configure_losses(self) -> None:
        weights = self.hparams.class_weights
        fixed = torch.tensor(weights, dtype=torch.float32) if isinstance(weights, list) else None
        self.register_buffer("loss_weight", fixed if fixed is not None else torch.ones(self.hparams.num_classes),
                             persistent=False)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.network_takes_features():
            # Statistics of the training split only; a resumed run gets the checkpoint's back after setup.
            raw = self.trainer.datamodule.train_features()
            if raw.shape[1] != self.hparams.num_features:
                raise ConfigError(f"the data gives {raw.shape[1]} features but the model expects "
                                  f"{self.hparams.num_features}; link them (the CLI does) or set num_features.")
            self.scaler.fit(raw)
        if stage == "fit" and self.hparams.class_weights == "balanced":
            counts = self.trainer.datamodule.class_counts("train").float()
            self.loss_weight = (counts.sum() / (len(counts) * counts.clamp(min=1))).to(self.device)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Lightning restores train mode module by module: re-freeze, so a linear probe keeps the backbone's
        # batch-norm statistics (and dropout off).
        if self.hparams.freeze_backbone and hasattr(self, "model"):
            self.model.eval()
            (self.head if self.network_takes_features() else self.model.get_classifier()).train()

    def forward(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        h = self.hparams
        if not self.network_takes_features():
            return self.model(x)
        if features is None:
            raise ConfigError(f"this model classifies image + {h.num_features} features ({h.feature_names}); the "
                              "batch has no features: set the same `features:` on the data module.")
        parts = [self.feature_encoder(self.scaler(features.float()))]
        if not h.features_only:
            parts.insert(0, self.model(x))
        return self.head(torch.cat([p.to(parts[0].dtype) for p in parts], dim=1))

    def logits(self, batch: dict) -> Tensor:
        return self(batch["image"], batch.get("features"))

    def synthetic_batch(self, batch_size: int, generator: torch.Generator | None = None) -> dict:
        batch = super().synthetic_batch(batch_size, generator)
        if self.hparams.num_features:
            batch["features"] = torch.randn(batch_size, self.hparams.num_features, generator=generator)
        return batch

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, weight=self.loss_weight.to(logits.dtype),
                               label_smoothing=self.hparams.label_smoothing)

    evaluation_loss = loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self.logits(batch)
        loss = self.loss(logits, batch["target"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(logits))
        return loss
