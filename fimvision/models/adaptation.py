"""Source training and source-free adaptation: few-shot fine-tuning (FT, LP, LP-FT), SHOT, NRC and AaD.

Every module shares one SHOT-style network (:class:`SHOTNet`): a timm backbone, a 256-d bottleneck
with batch norm and a weight-normalised linear classifier. :class:`SourceModel` trains it on the
source domain with label-smoothed cross-entropy; the adaptation modules start from its checkpoint
(``source_checkpoint``) and never see source data. They pair with
:class:`fimvision.data.domains.DomainDataModule`, whose loaders follow each module's ``train_on``.

The losses are plain functions of tensors (``im_loss``, ``shot_loss``, ``nrc_loss``, ``aad_loss``,
``snd_score``, ``im_score``), so they can be checked on hand-made batches.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from fimvision.checkpoints import RunCheckpoint
from fimvision.errors import CheckpointError
from fimvision.models.backbones import class_names_for, create_backbone
from fimvision.models.optim import OptimizerName, build_optimizer, warmup_cosine_scheduler

log = logging.getLogger(__name__)

EPS = 1e-5
# Source-model arguments an adapted model must share with the data it adapts on.
SOURCE_CONTRACT = ("num_classes", "class_names", "in_chans", "img_size")


# ------------------------------------------------------------------------------------------ network
class SHOTNet(nn.Module):
    """timm backbone -> bottleneck (Linear + BatchNorm1d) -> weight-normalised linear classifier."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        self.bottleneck = nn.Sequential(nn.Linear(num_features, bottleneck_dim), nn.BatchNorm1d(bottleneck_dim))
        self.classifier = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, num_classes), dim=0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck features (what SHOT clusters and NRC/AaD keep in their banks)."""
        return self.bottleneck(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_net(backbone: str, num_classes: int, in_chans: int, img_size: int | None, bottleneck_dim: int = 256,
              pretrained: bool = False, weights: str | None = None,
              backbone_kwargs: dict[str, Any] | None = None) -> SHOTNet:
    body = create_backbone(backbone, in_chans=in_chans, num_classes=0, pretrained=pretrained, weights=weights,
                           img_size=img_size, **(backbone_kwargs or {}))
    return SHOTNet(body, body.num_features, num_classes, bottleneck_dim)


# ------------------------------------------------------------------------------------------ losses
def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-row entropy of probability rows (nats)."""
    return -(probs * torch.log(probs + EPS)).sum(dim=1)


def im_loss(probs: torch.Tensor) -> torch.Tensor:
    """Information-maximisation loss: mean entropy minus the entropy of the mean prediction (minimise)."""
    return entropy(probs).mean() - entropy(probs.mean(dim=0, keepdim=True)).squeeze(0)


def im_score(probs: torch.Tensor) -> torch.Tensor:
    """IM model-selection score (higher is better): the mutual information between inputs and predictions."""
    return -im_loss(probs)


def snd_score(probs: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Soft neighbourhood density (Saito et al. 2021; higher is better): the mean entropy of each sample's
    softmax over its similarity to the others, on L2-normalised predictions."""
    z = F.normalize(probs, dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(float("-inf"))
    return entropy(F.softmax(sim / temperature, dim=1)).mean()


def shot_pseudo_labels(features: torch.Tensor, probs: torch.Tensor, rounds: int = 1) -> torch.Tensor:
    """SHOT's self-supervised pseudo-labels: cosine nearest centroid, centroids weighted by the
    predictions, then ``rounds`` refinements with hard assignments."""
    f = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype, device=features.device)], dim=1)
    f = F.normalize(f, dim=1)
    weights = probs
    labels = probs.argmax(dim=1)
    for _ in range(rounds + 1):
        centroids = F.normalize(weights.T @ f / (weights.sum(dim=0)[:, None] + 1e-8), dim=1)
        present = weights.sum(dim=0) > 0
        sim = f @ centroids.T
        sim[:, ~present] = float("-inf")
        labels = sim.argmax(dim=1)
        weights = F.one_hot(labels, probs.shape[1]).to(f.dtype)
    return labels


def shot_loss(logits: torch.Tensor, pseudo_labels: torch.Tensor, beta: float = 0.3) -> torch.Tensor:
    """SHOT: information maximisation plus ``beta`` x cross-entropy on the pseudo-labels."""
    probs = logits.softmax(dim=1)
    loss = im_loss(probs)
    if beta > 0:
        loss = loss + beta * F.cross_entropy(logits, pseudo_labels)
    return loss


def nrc_loss(probs: torch.Tensor, slots: torch.Tensor, feature_bank: torch.Tensor, score_bank: torch.Tensor,
             k: int = 5, m: int = 5, expanded_weight: float = 0.1) -> torch.Tensor:
    """NRC (Yang et al. 2021): agree with the ``k`` nearest bank neighbours (weight 1 when reciprocal,
    ``expanded_weight`` otherwise) and with their ``m`` nearest neighbours (``expanded_weight``), plus
    the diversity term sum(mean p * log mean p). ``slots`` are the batch's rows in the banks, which
    already hold the batch's (detached) features and scores."""
    with torch.no_grad():
        k = min(k, len(feature_bank) - 1)
        m = min(m, len(feature_bank) - 1)
        dist = feature_bank[slots] @ feature_bank.T
        near = dist.topk(k + 1, dim=1).indices[:, 1:]  # B x K, self left out
        near_dist = feature_bank[near] @ feature_bank.T  # B x K x N
        near_near = near_dist.topk(m + 1, dim=2).indices[:, :, 1:]  # B x K x M
        reciprocal = (near_near == slots[:, None, None]).sum(dim=2).float()
        weight = torch.where(reciprocal > 0, reciprocal, torch.full_like(reciprocal, expanded_weight))
        score_near = score_bank[near]  # B x K x C
        score_near_near = score_bank[near_near].flatten(1, 2)  # B x KM x C
    # KL(p_neighbour || p) in the original code equals -<p, p_neighbour> up to a constant
    loss = -(weight * (probs[:, None, :] * score_near).sum(dim=2)).sum(dim=1).mean()
    loss = loss - expanded_weight * (probs[:, None, :] * score_near_near).sum(dim=2).sum(dim=1).mean()
    mean = probs.mean(dim=0)
    return loss + (mean * torch.log(mean + EPS)).sum()


def aad_loss(probs: torch.Tensor, slots: torch.Tensor, feature_bank: torch.Tensor, score_bank: torch.Tensor,
             k: int = 5, alpha: float = 1.0) -> torch.Tensor:
    """AaD (Yang et al. 2022): attract each prediction to its ``k`` nearest bank neighbours' scores and
    disperse it from the other predictions of the batch (weight ``alpha``)."""
    with torch.no_grad():
        k = min(k, len(feature_bank) - 1)
        near = (feature_bank[slots] @ feature_bank.T).topk(k + 1, dim=1).indices[:, 1:]
        score_near = score_bank[near]
    attract = -(probs[:, None, :] * score_near).sum(dim=2).sum(dim=1).mean()
    dot = probs @ probs.T
    disperse = (dot.sum(dim=1) - dot.diagonal()).mean()
    return attract + alpha * disperse


# ------------------------------------------------------------------------------------------ modules
class _Evaluated(pl.LightningModule):
    """Validation/test metrics on labelled target (or source) images; target -1 (unknown class) is ignored."""

    net: SHOTNet

    def configure_metrics(self, num_classes: int) -> None:
        metrics = torchmetrics.MetricCollection({
            "acc": torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro", ignore_index=-1),
            "balanced_acc": torchmetrics.classification.MulticlassRecall(num_classes, average="macro",
                                                                          ignore_index=-1),
        })
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _evaluate(self, batch: dict, stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        target = batch["target"]
        known = target >= 0
        if known.any():
            loss = F.cross_entropy(logits[known], target[known])
            self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=int(known.sum()))
            metrics = self.val_metrics if stage == "val" else self.test_metrics
            metrics.update(logits, target)
            self.log_dict(metrics, prog_bar=stage == "val", batch_size=int(known.sum()))
        return logits

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"index": batch["index"], "probs": self(batch["image"]).float().softmax(dim=1)}


class SourceModel(_Evaluated):
    """A SHOT-style network trained on the source domain only (label-smoothed cross-entropy).

    Validation is on held-out source images; ``test`` reports the unadapted model on the target test part
    (the source-only baseline).

    Args:
        backbone: timm model name (resnet18, resnet50, resnet10t, test_resnet, vit_small_patch16_224, ...).
        num_classes: number of classes (linked from the data module).
        class_names: class names in output order (linked from the data module; saved in checkpoints).
        in_chans: input channels (linked from the data module).
        img_size: input side (linked from the data module; used by ViTs).
        bottleneck_dim: width of the bottleneck (256 in SHOT).
        pretrained: load timm's hub weights (needs network; off by default).
        weights: local weights file for the backbone (no network needed).
        backbone_kwargs: extra timm arguments.
        optimizer: adamw, adam or sgd.
        lr: peak learning rate.
        weight_decay: weight decay.
        momentum: SGD momentum.
        warmup_epochs: linear warm-up before the cosine decay (fractions allowed).
        label_smoothing: cross-entropy label smoothing (0.1 as in SHOT).
    """

    train_on = "source"

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 2,
        class_names: list[str] | None = None,
        in_chans: int = 3,
        img_size: int | None = None,
        bottleneck_dim: int = 256,
        pretrained: bool = False,
        weights: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        warmup_epochs: float = 1.0,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names = class_names_for(num_classes, class_names)
        self.net = build_net(backbone, num_classes, in_chans, img_size, bottleneck_dim, pretrained, weights,
                             backbone_kwargs)
        self.configure_metrics(num_classes)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["target"], label_smoothing=self.hparams.label_smoothing)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def configure_optimizers(self):
        h = self.hparams
        optimizer = build_optimizer(self.parameters(), h.optimizer, h.lr, h.weight_decay, h.momentum)
        return {"optimizer": optimizer, "lr_scheduler": warmup_cosine_scheduler(optimizer, self.trainer, h.warmup_epochs)}


def load_source(path: str | None, num_classes: int, class_names: list[str] | None, in_chans: int,
                img_size: int | None) -> tuple[SHOTNet, dict]:
    """The network of a :class:`SourceModel` checkpoint, checked against the data it will adapt on."""
    if not path:
        raise CheckpointError("source_checkpoint is not set. Train a source model first (`fimvision fit --config "
                              "configs/sfda/<name>_source.yaml`) and pass its checkpoint with "
                              "--model.init_args.source_checkpoint=PATH.")
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"source checkpoint {file} does not exist. Give the .ckpt a SourceModel run wrote "
                              "(under its checkpoints/ folder).")
    try:
        blob = torch.load(file, map_location="cpu", weights_only=False)
        saved, state = dict(blob["hyper_parameters"]), blob["state_dict"]
    except Exception as err:
        raise CheckpointError(f"cannot read source checkpoint {file} ({type(err).__name__}: {err}); it must be a "
                              "Lightning checkpoint of a SourceModel.") from err
    if "bottleneck_dim" not in saved or "backbone" not in saved:
        raise CheckpointError(f"{file} is not a SourceModel checkpoint (hyper-parameters {sorted(saved)[:8]}...). "
                              "Train one with a configs/sfda/*_source.yaml config.")
    now = {"num_classes": num_classes, "class_names": list(class_names) if class_names else None,
           "in_chans": in_chans, "img_size": img_size}
    wrong = [f"{k}: checkpoint {saved.get(k)!r}, data {now[k]!r}" for k in SOURCE_CONTRACT
             if saved.get(k) is not None and now[k] is not None and saved.get(k) != now[k]]
    if wrong:
        raise CheckpointError(f"source checkpoint {file} does not fit this target data: " + "; ".join(wrong)
                              + ". Use the same classes, scenario, in_chans and image_size as the source run, "
                              "or another checkpoint.")
    net = build_net(saved["backbone"], saved["num_classes"], saved["in_chans"], saved.get("img_size"),
                    saved["bottleneck_dim"], backbone_kwargs=saved.get("backbone_kwargs"))
    net_state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    try:
        net.load_state_dict(net_state)
    except RuntimeError as err:
        raise CheckpointError(f"source checkpoint {file}: weights do not fit the network ({err}).") from err
    return net, saved


class _Adapted(_Evaluated):
    """Shared part of the adaptation modules: the source network from ``source_checkpoint``."""

    def _init_source(self, source_checkpoint: str | None, num_classes: int, class_names: list[str] | None,
                     in_chans: int, img_size: int | None) -> None:
        self.net, self.source_hparams = load_source(source_checkpoint, num_classes, class_names, in_chans, img_size)
        self.class_names = list(class_names) if class_names else self.source_hparams.get("class_names")
        self.configure_metrics(num_classes)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["source_hyper_parameters"] = self.source_hparams


class FewShotFinetune(_Adapted):
    """Fine-tuning the source model on ``n_shot`` labelled target images per class.

    ``adapt``: ``all`` (every layer, lr ``lr``), ``classifier`` (the linear classifier only, lr
    ``classifier_lr``; the rest stays in eval mode) or ``lp-ft`` (the classifier for the first
    ``lp_fraction`` of the steps at ``classifier_lr``, then every layer at ``lr``). Adam, ``steps``
    steps of ``fewshot_batch_size`` images drawn with replacement from the few-shot set, validation on one
    image per class every ``val_every`` steps (select the checkpoint with the lowest ``val_loss``).
    ``steps`` sets the trainer's length (its max_epochs/max_steps are overridden, except under
    fast_dev_run).

    Args:
        source_checkpoint: checkpoint of a SourceModel run.
        num_classes: number of classes (linked from the data module).
        class_names: class names (linked from the data module).
        in_chans: input channels (linked from the data module).
        img_size: input side (linked from the data module).
        adapt: ``all``, ``classifier`` or ``lp-ft``.
        lr: learning rate of all-layer fine-tuning and of LP-FT's second stage.
        classifier_lr: learning rate of the classifier stage.
        steps: optimisation steps.
        lp_fraction: LP-FT: share of ``steps`` spent on the classifier alone.
        fewshot_batch_size: few-shot batch size (drawn with replacement).
        val_every: steps between validations (one few-shot "epoch").
        weight_decay: Adam weight decay.
        label_smoothing: cross-entropy label smoothing.
        sam_rho: sharpness-aware minimisation radius (0: plain Adam).
    """

    train_on = "fewshot"

    def __init__(
        self,
        source_checkpoint: str | None = None,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        in_chans: int = 3,
        img_size: int | None = None,
        adapt: Literal["all", "classifier", "lp-ft"] = "all",
        lr: float = 1e-5,
        classifier_lr: float = 1e-4,
        steps: int = 1000,
        lp_fraction: float = 0.5,
        fewshot_batch_size: int = 32,
        val_every: int = 50,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
        sam_rho: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self._init_source(source_checkpoint, num_classes, class_names, in_chans, img_size)
        self._stage: str | None = None

    @property
    def fewshot_batches(self) -> int:
        return min(self.hparams.val_every, self.hparams.steps)

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        if stage == "fit" and not trainer.fast_dev_run:
            trainer.fit_loop.epoch_loop.max_steps = self.hparams.steps
            trainer.fit_loop.max_epochs = math.ceil(self.hparams.steps / self.fewshot_batches)

    def stage_at(self, step: int) -> Literal["classifier", "all"]:
        """Which parameters train at ``step``."""
        h = self.hparams
        if h.adapt == "classifier" or (h.adapt == "lp-ft" and step < round(h.lp_fraction * h.steps)):
            return "classifier"
        return "all"

    def _enter(self, stage: str) -> None:
        body = [self.net.backbone, self.net.bottleneck]
        for module in body:
            module.requires_grad_(stage == "all")
            module.train(stage == "all")  # a frozen body keeps its source BN statistics
        head_lr = self.hparams.classifier_lr if stage == "classifier" else self.hparams.lr
        optimizer = self.optimizers().optimizer if hasattr(self.optimizers(), "optimizer") else self.optimizers()
        optimizer.param_groups[0]["lr"] = self.hparams.lr
        optimizer.param_groups[1]["lr"] = head_lr
        self._stage = stage
        log.info("FewShotFinetune: step %d, training %s", self.global_step, stage)

    def on_train_epoch_start(self) -> None:
        if self._stage is not None:  # Lightning put every module back in train mode
            self._enter(self._stage)

    def _loss(self, batch: dict) -> torch.Tensor:
        logits = self(batch["image"])
        return F.cross_entropy(logits, batch["target"], label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
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

    def configure_optimizers(self):
        h = self.hparams
        body = [*self.net.backbone.parameters(), *self.net.bottleneck.parameters()]
        return torch.optim.Adam([{"params": body, "lr": h.lr},
                                 {"params": list(self.net.classifier.parameters()), "lr": h.classifier_lr}],
                                lr=h.lr, weight_decay=h.weight_decay)


class _SourceFree(_Adapted):
    """Source-free unsupervised adaptation on the unlabelled target part.

    The classifier stays frozen (the source hypothesis); backbone and bottleneck train with SGD
    (``lr`` on the bottleneck, ``lr x backbone_lr_mult`` on the backbone) and SHOT's decay
    ``(1 + 10 p) ** -0.75``. Validation runs on the unlabelled part and logs the unsupervised
    model-selection scores ``val_snd`` and ``val_im``; the checkpoint kept is the last, or the one with
    the highest score named by ``select_by``.
    """

    train_on = "target"

    def _init_sfda(self) -> None:
        self.net.classifier.requires_grad_(False)
        self._val_probs: list[torch.Tensor] = []

    def configure_callbacks(self):
        # Replaces the trainer's ModelCheckpoint (which monitors the few-shot val_loss these methods lack).
        select = self.hparams.select_by
        return [RunCheckpoint(monitor=None if select == "last" else f"val_{select}", mode="max", save_last=True,
                              filename="{epoch}-{step}")]

    def configure_optimizers(self):
        h = self.hparams
        groups = [{"params": list(self.net.backbone.parameters()), "lr": h.lr * h.backbone_lr_mult},
                  {"params": list(self.net.bottleneck.parameters()), "lr": h.lr}]
        optimizer = torch.optim.SGD(groups, lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay, nesterov=True)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (1 + 10 * step / total) ** -0.75)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @torch.no_grad()
    def pool_outputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bottleneck features, softmax scores and domain indices of the whole unlabelled part (eval mode)."""
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "pool_loader"):
            raise TypeError(f"{type(self).__name__} needs a DomainDataModule (with pool_loader()), got "
                            f"{type(datamodule).__name__}")
        was_training = self.net.training
        self.net.eval()
        feats, probs, index = [], [], []
        for batch in datamodule.pool_loader():
            f = self.net.features(batch["image"].to(self.device))
            feats.append(f)
            probs.append(self.net.classifier(f).softmax(dim=1))
            index.append(batch["index"].to(self.device))
        self.net.train(was_training)
        return torch.cat(feats), torch.cat(probs), torch.cat(index)

    def _slots(self, index: torch.Tensor) -> torch.Tensor:
        return self.slot_of[index]

    def _init_banks(self) -> None:
        feats, probs, index = self.pool_outputs()
        self.slot_of = torch.full((int(index.max()) + 1,), -1, dtype=torch.long, device=self.device)
        self.slot_of[index] = torch.arange(len(index), device=self.device)
        self.feature_bank = F.normalize(feats, dim=1)
        self.score_bank = probs

    def _update_banks(self, slots: torch.Tensor, feats: torch.Tensor, probs: torch.Tensor) -> None:
        self.feature_bank[slots] = F.normalize(feats.detach(), dim=1)
        self.score_bank[slots] = probs.detach()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self._evaluate(batch, "val")
        self._val_probs.append(logits.float().softmax(dim=1))

    def on_validation_epoch_end(self) -> None:
        if not self._val_probs:
            return
        probs = torch.cat(self._val_probs)
        self._val_probs.clear()
        self.log("val_im", im_score(probs))
        if len(probs) > 1:
            self.log("val_snd", snd_score(probs, self.hparams.snd_temperature))


_SFDA_ARGS_DOC = """
        source_checkpoint: checkpoint of a SourceModel run.
        num_classes: number of classes (linked from the data module).
        class_names: class names (linked from the data module).
        in_chans: input channels (linked from the data module).
        img_size: input side (linked from the data module).
        lr: SGD learning rate of the bottleneck.
        backbone_lr_mult: the backbone's learning rate as a multiple of ``lr``.
        momentum: SGD (Nesterov) momentum.
        weight_decay: weight decay.
        select_by: checkpoint kept: ``last``, or the highest ``snd`` or ``im`` score.
        snd_temperature: temperature of the SND score."""


class SHOT(_SourceFree):
    __doc__ = f"""SHOT (Liang et al. 2020): information maximisation (entropy minus diversity) plus ``beta`` x
    cross-entropy on pseudo-labels from cosine-centroid clustering, refreshed at every epoch start;
    the classifier is frozen.

    Args:{_SFDA_ARGS_DOC}
        beta: weight of the pseudo-label cross-entropy (0.3).
        refinements: hard-assignment rounds of the centroid clustering.
    """

    def __init__(
        self,
        source_checkpoint: str | None = None,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        in_chans: int = 3,
        img_size: int | None = None,
        lr: float = 1e-2,
        backbone_lr_mult: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-3,
        select_by: Literal["last", "snd", "im"] = "last",
        snd_temperature: float = 0.05,
        beta: float = 0.3,
        refinements: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._init_source(source_checkpoint, num_classes, class_names, in_chans, img_size)
        self._init_sfda()

    def on_train_epoch_start(self) -> None:
        if self.hparams.beta <= 0:
            return
        feats, probs, index = self.pool_outputs()
        labels = shot_pseudo_labels(feats, probs, self.hparams.refinements)
        self.pseudo = torch.full((int(index.max()) + 1,), -1, dtype=torch.long, device=self.device)
        self.pseudo[index] = labels
        self.log("pseudo_label_change", (labels != probs.argmax(dim=1)).float().mean())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        pseudo = self.pseudo[batch["index"]] if self.hparams.beta > 0 else None
        loss = shot_loss(logits, pseudo, self.hparams.beta)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(logits))
        return loss


class _NeighbourBanks(_SourceFree):
    """Source-free methods that look up neighbours in feature and score banks of the whole unlabelled part."""

    def on_train_start(self) -> None:
        self._init_banks()


class NRC(_NeighbourBanks):
    __doc__ = f"""NRC (Yang et al. 2021): neighbourhood reciprocity clustering with feature and score banks of
    the whole unlabelled target part; ``k`` neighbours (weight 1 when reciprocal, 0.1 otherwise) and
    ``m`` expanded neighbours of each (weight 0.1), plus a diversity term.

    Args:{_SFDA_ARGS_DOC}
        k: nearest neighbours.
        m: expanded neighbours per neighbour.
    """

    def __init__(
        self,
        source_checkpoint: str | None = None,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        in_chans: int = 3,
        img_size: int | None = None,
        lr: float = 1e-2,
        backbone_lr_mult: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-3,
        select_by: Literal["last", "snd", "im"] = "last",
        snd_temperature: float = 0.05,
        k: int = 5,
        m: int = 5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._init_source(source_checkpoint, num_classes, class_names, in_chans, img_size)
        self._init_sfda()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        feats = self.net.features(batch["image"])
        probs = self.net.classifier(feats).softmax(dim=1)
        slots = self._slots(batch["index"])
        self._update_banks(slots, feats, probs)
        loss = nrc_loss(probs, slots, self.feature_bank, self.score_bank, self.hparams.k, self.hparams.m)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(probs))
        return loss


class AaD(_NeighbourBanks):
    __doc__ = f"""AaD (Yang et al. 2022, attracting and dispersing): attract each prediction to its ``k`` nearest
    bank neighbours, disperse it from the other predictions of the batch with weight
    ``alpha x (1 + 10 p) ** -beta`` (p: training progress).

    Args:{_SFDA_ARGS_DOC}
        k: nearest neighbours.
        alpha: initial weight of the dispersion term.
        beta: decay exponent of the dispersion weight.
    """

    def __init__(
        self,
        source_checkpoint: str | None = None,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        in_chans: int = 3,
        img_size: int | None = None,
        lr: float = 1e-2,
        backbone_lr_mult: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-3,
        select_by: Literal["last", "snd", "im"] = "last",
        snd_temperature: float = 0.05,
        k: int = 5,
        alpha: float = 1.0,
        beta: float = 0.75,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._init_source(source_checkpoint, num_classes, class_names, in_chans, img_size)
        self._init_sfda()

    def dispersion_weight(self) -> float:
        progress = self.global_step / max(1, int(self.trainer.estimated_stepping_batches))
        return self.hparams.alpha * (1 + 10 * progress) ** (-self.hparams.beta)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        feats = self.net.features(batch["image"])
        probs = self.net.classifier(feats).softmax(dim=1)
        slots = self._slots(batch["index"])
        self._update_banks(slots, feats, probs)
        alpha = self.dispersion_weight()
        loss = aad_loss(probs, slots, self.feature_bank, self.score_bank, self.hparams.k, alpha)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(probs))
        self.log("alpha", alpha)
        return loss
