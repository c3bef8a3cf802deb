"""Source-free unsupervised adaptation on the unlabelled target part: SHOT, NRC and AaD.

The classifier stays frozen (the source hypothesis); backbone and bottleneck train (SGD by default,
``lr`` on the bottleneck, ``lr x backbone_lr_mult`` on the backbone, SHOT's ``(1 + 10 p) ** -0.75``
decay). Validation runs on the unlabelled part and logs the unsupervised model-selection scores
``val_snd`` and ``val_im``; the checkpoint kept is the last, or the one with the highest score named by
``select_by``. The losses are the pure functions of :mod:`fimvision.losses.adaptation`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fimvision.checkpoints import RunCheckpoint
from fimvision.errors import ConfigError
from fimvision.losses import aad_loss, im_score, nrc_loss, shot_loss, shot_pseudo_labels, snd_score
from fimvision.models.adaptation.network import AdaptedTask
from fimvision.models.optim import OptimizerName, SchedulerName, decay_groups


class SourceFreeTask(AdaptedTask):
    """The arguments and machinery SHOT, NRC and AaD share (see the module docstring).

    Args:
        optimizer: sgd (Nesterov, as in SHOT), adamw, adam or lars.
        lr: learning rate of the bottleneck.
        backbone_lr_mult: the backbone's learning rate as a multiple of ``lr``.
        weight_decay: weight decay.
        scheduler: ``shot`` ((1 + 10 p)^-0.75), ``cosine`` or ``none``.
        select_by: checkpoint kept: ``last``, or the highest ``snd`` or ``im`` score.
        snd_temperature: temperature of the SND score.
        **kwargs: the arguments of :class:`~fimvision.models.adaptation.network.AdaptedTask` (source_checkpoint,
            momentum, and the data-linked num_classes, class_names, in_chans, img_size).
    """

    train_on = "target"

    def __init__(self, optimizer: OptimizerName = "sgd", lr: float = 1e-2, backbone_lr_mult: float = 0.1,
                 weight_decay: float = 1e-3, scheduler: SchedulerName = "shot",
                 select_by: Literal["last", "snd", "im"] = "last", snd_temperature: float = 0.05, **kwargs: Any) -> None:
        super().__init__(optimizer=optimizer, lr=lr, weight_decay=weight_decay, scheduler=scheduler, **kwargs)
        self.net.classifier.requires_grad_(False)
        self._val_probs: list[Tensor] = []

    def param_groups(self) -> list[dict]:
        h = self.hparams
        return [*decay_groups(self.net.backbone, h.weight_decay, lr=h.lr * h.backbone_lr_mult),
                *decay_groups(self.net.bottleneck, h.weight_decay, lr=h.lr)]

    def configure_callbacks(self):
        # Replaces the trainer's checkpoint callback, which monitors the few-shot val_loss these methods lack;
        # none when checkpointing is off (enable_checkpointing=false must not write checkpoints anyway).
        if self.trainer.checkpoint_callback is None:
            return []
        select = self.hparams.select_by
        return [RunCheckpoint(monitor=None if select == "last" else f"val_{select}", mode="max", save_last=True,
                              filename="{epoch}-{step}")]

    @torch.no_grad()
    def pool_outputs(self) -> tuple[Tensor, Tensor, Tensor]:
        """Bottleneck features, softmax scores and domain indices of the whole unlabelled part (eval mode)."""
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "pool_loader"):
            raise ConfigError(f"{type(self).__name__} adapts on an unlabelled target domain: use DomainDataModule "
                              f"(class_path: DomainDataModule), not {type(datamodule).__name__}.")
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

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._val_probs.append(self.evaluate(batch, "val").float().softmax(dim=1))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self._val_probs:
            return
        probs = torch.cat(self._val_probs)
        self._val_probs.clear()
        self.log("val_im", im_score(probs))
        if len(probs) > 1:
            self.log("val_snd", snd_score(probs, self.hparams.snd_temperature))


class SHOT(SourceFreeTask):
    """SHOT (Liang et al. 2020): information maximisation (entropy minus diversity) plus ``beta`` x
    cross-entropy on pseudo-labels from cosine-centroid clustering, refreshed at every epoch start;
    the classifier is frozen.

    Args:
        beta: weight of the pseudo-label cross-entropy (0.3).
        refinements: hard-assignment rounds of the centroid clustering.
        **kwargs: the arguments of :class:`SourceFreeTask` (source_checkpoint, optimizer, lr, backbone_lr_mult,
            select_by, ...).
    """

    def __init__(self, beta: float = 0.3, refinements: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def on_train_epoch_start(self) -> None:
        if self.hparams.beta <= 0:
            return
        feats, probs, index = self.pool_outputs()
        labels = shot_pseudo_labels(feats, probs, self.hparams.refinements)
        self.pseudo = torch.full((int(index.max()) + 1,), -1, dtype=torch.long, device=self.device)
        self.pseudo[index] = labels
        self.log("pseudo_label_change", (labels != probs.argmax(dim=1)).float().mean())

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self(batch["image"])
        pseudo = self.pseudo[batch["index"]] if self.hparams.beta > 0 else None
        loss = shot_loss(logits, pseudo, self.hparams.beta)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(logits))
        return loss


class NeighbourBanks(SourceFreeTask):
    """Source-free methods that look up neighbours in feature and score banks of the whole unlabelled part."""

    def on_train_start(self) -> None:
        feats, probs, index = self.pool_outputs()
        self.slot_of = torch.full((int(index.max()) + 1,), -1, dtype=torch.long, device=self.device)
        self.slot_of[index] = torch.arange(len(index), device=self.device)
        self.feature_bank = F.normalize(feats, dim=1)
        self.score_bank = probs

    def banked_outputs(self, batch: dict) -> tuple[Tensor, Tensor]:
        """The batch's softmax scores and bank slots; the banks take the batch's (detached) outputs."""
        feats = self.net.features(batch["image"])
        probs = self.net.classifier(feats).softmax(dim=1)
        slots = self.slot_of[batch["index"]]
        self.feature_bank[slots] = F.normalize(feats.detach(), dim=1)
        self.score_bank[slots] = probs.detach()
        return probs, slots


class NRC(NeighbourBanks):
    """NRC (Yang et al. 2021): neighbourhood reciprocity clustering with feature and score banks of
    the whole unlabelled target part; ``k`` neighbours (weight 1 when reciprocal, 0.1 otherwise) and
    ``m`` expanded neighbours of each (weight 0.1), plus a diversity term.

    Args:
        k: nearest neighbours.
        m: expanded neighbours per neighbour.
        **kwargs: the arguments of :class:`SourceFreeTask`.
    """

    def __init__(self, k: int = 5, m: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        probs, slots = self.banked_outputs(batch)
        loss = nrc_loss(probs, slots, self.feature_bank, self.score_bank, self.hparams.k, self.hparams.m)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(probs))
        return loss


class AaD(NeighbourBanks):
    """AaD (Yang et al. 2022, attracting and dispersing): attract each prediction to its ``k`` nearest
    bank neighbours, disperse it from the other predictions of the batch with weight
    ``alpha x (1 + 10 p) ** -beta`` (p: training progress).

    Args:
        k: nearest neighbours.
        alpha: initial weight of the dispersion term.
        beta: decay exponent of the dispersion weight.
        **kwargs: the arguments of :class:`SourceFreeTask`.
    """

    def __init__(self, k: int = 5, alpha: float = 1.0, beta: float = 0.75, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def dispersion_weight(self) -> float:
        return self.hparams.alpha * (1 + 10 * self.global_step / self.total_steps) ** (-self.hparams.beta)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        probs, slots = self.banked_outputs(batch)
        alpha = self.dispersion_weight()
        loss = aad_loss(probs, slots, self.feature_bank, self.score_bank, self.hparams.k, alpha)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(probs))
        self.log("alpha", alpha)
        return loss
