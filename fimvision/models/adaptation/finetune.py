"""Few-shot fine-tuning of a source model on n labelled target images per class: FT, LP and LP-FT, with SAM."""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fimvision.models.adaptation.network import AdaptedTask
from fimvision.models.optim import decay_groups

log = logging.getLogger(__name__)


class FewShotFinetune(AdaptedTask):
    """Fine-tuning the source model on ``n_shot`` labelled target images per class.

    ``adapt``: ``all`` (every layer, lr ``lr``), ``classifier`` (the linear classifier only, lr
    ``classifier_lr``; the rest stays in eval mode) or ``lp-ft`` (the classifier for the first
    ``lp_fraction`` of the steps at ``classifier_lr``, then every layer at ``lr``). ``steps`` optimizer
    steps on batches the data module draws with replacement from the few-shot set (its
    ``fewshot_batch_size``; validation on one image per class every ``fewshot_batches`` steps), keeping
    the checkpoint with the lowest ``val_loss``. The CLI runs the trainer for exactly ``steps`` steps.

    Args:
        adapt: ``all``, ``classifier`` or ``lp-ft``.
        classifier_lr: learning rate of the classifier stage.
        steps: optimisation steps.
        lp_fraction: LP-FT: share of ``steps`` spent on the classifier alone.
        label_smoothing: cross-entropy label smoothing.
        sam_rho: sharpness-aware minimisation radius (0: plain optimizer steps).
        **kwargs: the arguments of :class:`~fimvision.models.adaptation.network.AdaptedTask`
            (source_checkpoint, optimizer (Adam), lr (1e-5, all-layer and LP-FT's second stage), weight
            decay, and the data-linked num_classes, class_names, in_chans, img_size).
    """

    train_on = "fewshot"

    def __init__(self, adapt: Literal["all", "classifier", "lp-ft"] = "all", classifier_lr: float = 1e-4,
                 steps: int = 1000, lp_fraction: float = 0.5, label_smoothing: float = 0.0, sam_rho: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self._stage: str | None = None

    def trainer_settings(self) -> dict[str, Any]:
        return {"max_steps": self.hparams.steps, "max_epochs": -1}

    def param_groups(self) -> list[dict]:
        h = self.hparams
        body = [*decay_groups(self.net.backbone, h.weight_decay, role="body"),
                *decay_groups(self.net.bottleneck, h.weight_decay, role="body")]
        return body + decay_groups(self.net.classifier, h.weight_decay, role="classifier", lr=h.classifier_lr)

    def stage_at(self, step: int) -> Literal["classifier", "all"]:
        """Which parameters train at ``step``."""
        h = self.hparams
        if h.adapt == "classifier" or (h.adapt == "lp-ft" and step < round(h.lp_fraction * h.steps)):
            return "classifier"
        return "all"

    def _enter(self, stage: str) -> None:
        for module in (self.net.backbone, self.net.bottleneck):
            module.requires_grad_(stage == "all")
            module.train(stage == "all")  # a frozen body keeps its source BN statistics
        head_lr = self.hparams.classifier_lr if stage == "classifier" else self.hparams.lr
        optimizer = self.optimizers()
        for group in getattr(optimizer, "optimizer", optimizer).param_groups:
            group["lr"] = head_lr if group["role"] == "classifier" else self.hparams.lr
        self._stage = stage
        log.info("FewShotFinetune: step %d, training %s", self.global_step, stage)

    def on_train_epoch_start(self) -> None:
        if self._stage is not None:  # Lightning put every module back in train mode
            self._enter(self._stage)

    def _loss(self, batch: dict) -> Tensor:
        return F.cross_entropy(self(batch["image"]), batch["target"], label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        stage = self.stage_at(self.global_step)
        if stage != self._stage:
            self._enter(stage)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss = self._loss(batch)
        self.manual_backward(loss)
        if self.hparams.sam_rho > 0:
            self._sam_second_step(batch)
        optimizer.step()
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["target"]))
        return loss

    def _sam_second_step(self, batch: dict) -> None:
        """SAM: move to the worst point within ``sam_rho``, take the gradient there, move back."""
        params = [p for p in self.net.parameters() if p.requires_grad and p.grad is not None]
        norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
        with torch.no_grad():
            shifts = [p.grad * (self.hparams.sam_rho / (norm + 1e-12)) for p in params]
            for p, e in zip(params, shifts, strict=True):
                p.add_(e)
        self.optimizers().zero_grad()
        self.manual_backward(self._loss(batch))
        with torch.no_grad():
            for p, e in zip(params, shifts, strict=True):
                p.sub_(e)
