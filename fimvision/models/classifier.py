"""ParticleClassifier: supervised training of any timm model on particle images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from fimvision.models.backbones import class_names_for, create_backbone
from fimvision.models.optim import OptimizerName, build_optimizer, warmup_cosine_scheduler
from fimvision.models.ssl import load_backbone_weights
from fimvision.plots import confusion_matrix_png


class ParticleClassifier(pl.LightningModule):
    """A timm model trained to classify particles (e.g. by stress source).

    Args:
        backbone: timm model name (resnet18, resnet50, efficientnet_b0, convnext_tiny,
            vit_small_patch16_224, deit_tiny_patch16_224, swin_tiny_patch4_window7_224, ...).
        num_classes: number of classes (linked from the data module by the CLI).
        in_chans: input channels (linked from the data module: 3 colour, 1 mono).
        img_size: input side (linked from the data module; used by ViTs for position embeddings).
        class_names: class names in output order (linked from the data module; saved in checkpoints).
        pretrained: load timm's hub weights (needs network; off by default).
        weights: local weights file to start from (no network needed).
        backbone_kwargs: extra timm arguments, e.g. ``{patch_size: 8}`` or ``{drop_path_rate: 0.1}``.
        optimizer: adamw, adam or sgd.
        lr: peak learning rate.
        weight_decay: weight decay.
        momentum: SGD momentum.
        scheduler: ``cosine`` (per step, after warm-up) or ``none``.
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        label_smoothing: cross-entropy label smoothing.
        class_weights: per-class loss weights, ``balanced`` (inverse training frequency) or None.
        backbone_checkpoint: a self-supervised checkpoint (``fimvision fit`` with an SSL config) whose
            backbone weights to start from; the classifier head starts fresh. Architecture and channels
            must match the checkpoint's.
        freeze_backbone: train only the classifier head (linear probe; the backbone, batch-norm
            statistics included, stays fixed); otherwise fine-tune everything.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 2,
        in_chans: int = 3,
        img_size: int | None = None,
        class_names: list[str] | None = None,
        pretrained: bool = False,
        weights: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        scheduler: Literal["cosine", "none"] = "cosine",
        warmup_epochs: float = 1.0,
        label_smoothing: float = 0.0,
        class_weights: list[float] | Literal["balanced"] | None = None,
        backbone_checkpoint: str | None = None,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names = class_names_for(num_classes, class_names)
        if isinstance(class_weights, list) and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} values for num_classes={num_classes}")
        self.model = self.configure_backbone()
        if backbone_checkpoint:
            load_backbone_weights(self.model, backbone_checkpoint, backbone=backbone, in_chans=in_chans)
        if freeze_backbone:
            head = {id(p) for p in self.model.get_classifier().parameters()}
            for param in self.model.parameters():
                param.requires_grad_(id(param) in head)
        self.register_buffer("loss_weight", torch.ones(num_classes), persistent=False)
        self.configure_metrics()

    def configure_backbone(self) -> nn.Module:
        h = self.hparams
        return create_backbone(h.backbone, in_chans=h.in_chans, num_classes=h.num_classes, pretrained=h.pretrained,
                               weights=h.weights, img_size=h.img_size, **(h.backbone_kwargs or {}))

    def configure_metrics(self) -> None:
        n = self.hparams.num_classes
        metrics = torchmetrics.MetricCollection({
            "acc": torchmetrics.classification.MulticlassAccuracy(n, average="micro"),
            "balanced_acc": torchmetrics.classification.MulticlassRecall(n, average="macro"),
            "f1_macro": torchmetrics.classification.MulticlassF1Score(n, average="macro"),
        })
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")
        self.test_recall = torchmetrics.classification.MulticlassRecall(n, average=None)
        self.test_confusion = torchmetrics.classification.MulticlassConfusionMatrix(n)

    def setup(self, stage: str) -> None:
        weights = self.hparams.class_weights
        if stage == "fit" and weights == "balanced":
            counts = self.trainer.datamodule.class_counts("train").float()
            self.loss_weight = (counts.sum() / (len(counts) * counts.clamp(min=1))).to(self.device)
        elif isinstance(weights, list):
            self.loss_weight = torch.tensor(weights, dtype=torch.float32, device=self.device)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Lightning restores train mode module by module: re-freeze, so a linear probe keeps the backbone's
        # batch-norm statistics (and dropout off).
        if self.hparams.freeze_backbone:
            self.model.eval()
            self.model.get_classifier().train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=self.loss_weight.to(logits.dtype),
                               label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss(logits, batch["target"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def _evaluate(self, batch: dict, stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss(logits, batch["target"])
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=len(logits), sync_dist=True)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(logits, batch["target"])
        self.log_dict(metrics, prog_bar=stage == "val", batch_size=len(logits))
        return logits

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits = self._evaluate(batch, "test")
        self.test_recall.update(logits, batch["target"])
        self.test_confusion.update(logits, batch["target"])

    def on_test_epoch_end(self) -> None:
        for name, recall in zip(self.class_names, self.test_recall.compute(), strict=True):
            self.log(f"test_recall_{name}", recall)
        matrix = self.test_confusion.compute().cpu().numpy()
        self.test_recall.reset()
        self.test_confusion.reset()
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            out = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            self.confusion_matrix_path = confusion_matrix_png(
                matrix, self.class_names, out / "confusion_matrix.png",
                title=f"{self.hparams.backbone}, {self.hparams.in_chans}-channel input: test set")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"index": batch["index"], "probs": self(batch["image"]).float().softmax(dim=1)}

    def configure_optimizers(self):
        h = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, h.optimizer, h.lr, h.weight_decay, h.momentum)
        if h.scheduler == "none":
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": warmup_cosine_scheduler(optimizer, self.trainer, h.warmup_epochs)}
