"""Self-supervised pretraining on particle images (SimCLR, MoCo, BYOL, DINO) with lightly and timm.

Every method is a small subclass of :class:`SSLModule`, which gives it, as solo-learn does:

- the backbone: any timm CNN or ViT from :func:`fimvision.models.backbones.create_backbone`
  (features only), colour or mono input; saved as ``backbone.*`` in the checkpoint, the weights a
  :class:`~fimvision.models.classifier.ParticleClassifier` loads with ``backbone_checkpoint``;
- the optimizers (SGD, LARS, AdamW; no weight decay on biases, norms and position embeddings) and a
  per-step cosine schedule with linear warm-up;
- a momentum (EMA) teacher update on a cosine schedule from ``ema_base`` to ``ema_end`` for methods
  that have a teacher (MoCo, BYOL, DINO);
- online evaluation: a weighted kNN classifier on normalised backbone features of the labelled
  validation particles against a bank of labelled training particles (``val_knn_acc``), and a collapse
  monitor, ``train_z_std`` / ``val_feature_std``: the std of L2-normalised embeddings per dimension
  times sqrt(dim), 1 when embeddings spread over the sphere evenly, 0 when they have collapsed.

A method implements ``build_heads`` and ``ssl_loss(views) -> (loss, embedding)``, and lists its
momentum pairs in ``ema_pairs``.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules import (
    BYOLPredictionHead,
    BYOLProjectionHead,
    DINOProjectionHead,
    MoCoProjectionHead,
    SimCLRProjectionHead,
)
from lightly.models.utils import batch_shuffle, batch_unshuffle, deactivate_requires_grad, update_momentum
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from fimvision.data.ssl_data import SSLDataModule  # noqa: F401  (their data module: registers its short name)
from fimvision.errors import CheckpointError
from fimvision.models.backbones import class_names_for, create_backbone
from fimvision.models.optim import build_optimizer, warmup_cosine_scheduler

log = logging.getLogger(__name__)

SSLOptimizerName = Literal["sgd", "lars", "adamw"]


# ---------------------------------------------------------------------------------------------------------
# Online evaluation


def weighted_knn_scores(query: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int = 20,
                        temperature: float = 0.07, exclude_self: bool = False, chunk: int = 1024) -> Tensor:
    """Class scores (Q, C) of the weighted kNN classifier of InstDisc (Wu et al. 2018) and solo-learn.

    ``query`` (Q, D) and ``bank`` (N, D) must be L2-normalised. Each query's ``k`` most cosine-similar
    bank entries vote for their class with weight ``exp(sim / temperature)``. ``exclude_self`` (query
    and bank are the same set) leaves each entry out of its own neighbours.
    """
    if exclude_self and query.shape[0] != bank.shape[0]:
        raise ValueError("exclude_self needs the query and the bank to be the same set")
    k = min(k, bank.shape[0] - int(exclude_self))
    if k < 1:
        raise ValueError("the kNN bank needs at least one entry besides the query")
    scores = []
    for start in range(0, query.shape[0], chunk):
        sim = query[start:start + chunk] @ bank.T
        if exclude_self:
            rows = torch.arange(sim.shape[0], device=sim.device)
            sim[rows, rows + start] = -math.inf
        top_sim, top_index = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device, dtype=sim.dtype)
        scores.append(votes.scatter_add_(1, bank_labels[top_index], (top_sim / temperature).exp()))
    return torch.cat(scores)


def embedding_std(z: Tensor) -> Tensor:
    """Collapse monitor: mean per-dimension std of L2-normalised embeddings (B, D), times sqrt(D).

    About 1 for embeddings spread evenly over the unit sphere, 0 for collapsed ones (all equal).
    """
    z = F.normalize(z.detach().float(), dim=1)
    return z.std(dim=0).mean() * math.sqrt(z.shape[1])


# ---------------------------------------------------------------------------------------------------------
# The base


class SSLModule(pl.LightningModule):
    """Base of the self-supervised methods: backbone, optimizers, schedules, EMA and online kNN.

    Args:
        backbone: timm model name (resnet18, resnet50, vit_small_patch16_224, vit_tiny_patch16_224, ...).
        num_classes: monitoring classes (linked from the data module; 0 turns the kNN monitor off).
        in_chans: input channels (linked from the data module: 3 colour, 1 mono).
        img_size: input side (linked from the data module; used by ViTs).
        class_names: monitoring class names (linked from the data module).
        backbone_kwargs: extra timm arguments, e.g. ``{patch_size: 8}`` or ``{dynamic_img_size: true}``
            (a ViT that takes DINO's smaller local views).
        optimizer: ``lars`` (SimCLR/BYOL at large batch), ``sgd`` or ``adamw`` (ViTs, DINO).
        lr: peak learning rate.
        weight_decay: weight decay (not on biases, norms, position embeddings and tokens).
        momentum: SGD/LARS momentum.
        scheduler: ``cosine`` (per step, after warm-up) or ``none``.
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        ema_base: teacher momentum at the start (methods with a teacher).
        ema_end: teacher momentum at the end of training (cosine schedule).
        knn_k: neighbours of the kNN monitor.
        knn_t: temperature of the kNN monitor's ``exp(sim / t)`` weights.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 0,
        in_chans: int = 3,
        img_size: int | None = None,
        class_names: list[str] | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        optimizer: SSLOptimizerName = "lars",
        lr: float = 0.3,
        weight_decay: float = 1e-6,
        momentum: float = 0.9,
        scheduler: Literal["cosine", "none"] = "cosine",
        warmup_epochs: float = 1.0,
        ema_base: float = 0.99,
        ema_end: float = 1.0,
        knn_k: int = 20,
        knn_t: float = 0.07,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names = class_names_for(num_classes, class_names)
        self.backbone = create_backbone(backbone, in_chans=in_chans, num_classes=0, img_size=img_size,
                                        **(backbone_kwargs or {}))
        self.feature_dim: int = self.backbone.num_features
        self.build_heads()
        self._val_features: dict[int, list[tuple[Tensor, Tensor]]] = {}

    # --- what a method provides ------------------------------------------------------------------------

    def build_heads(self) -> None:
        """Create the method's heads, losses and teacher networks."""
        raise NotImplementedError

    def ssl_loss(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The method's loss on a list of view batches, and an embedding (B, D) for the collapse monitor."""
        raise NotImplementedError

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, teacher) module pairs updated by EMA before every training step; none by default."""
        return []

    # --- shared machinery ------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """Backbone features (B, feature_dim)."""
        return self.backbone(x)

    @property
    def total_steps(self) -> int:
        trainer = getattr(self, "_trainer", None)
        return max(1, int(trainer.estimated_stepping_batches)) if trainer is not None else 1

    def ema_momentum(self) -> float:
        """Teacher momentum at the current step: cosine from ``ema_base`` to ``ema_end``."""
        h = self.hparams
        return cosine_schedule(min(self.global_step, self.total_steps), self.total_steps, h.ema_base, h.ema_end)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        views = batch["image"]
        if not isinstance(views, (list, tuple)) or len(views) < 2:
            raise ValueError("self-supervised training needs batches of two or more views; use SSLDataModule "
                             "(class_path: SSLDataModule) as the data module")
        pairs = self.ema_pairs()
        if pairs:
            m = self.ema_momentum()
            for online, teacher in pairs:
                update_momentum(online, teacher, m)
            self.log("ema_momentum", m, batch_size=len(views[0]))
        loss, z = self.ssl_loss(list(views))
        batch_size = len(views[0])
        self.log("train_loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train_z_std", embedding_std(z), prog_bar=True, batch_size=batch_size)
        return loss

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        features = F.normalize(self.backbone(batch["image"]).float(), dim=1)
        self._val_features.setdefault(dataloader_idx, []).append((features, batch["target"]))

    def _gathered(self, index: int) -> tuple[Tensor, Tensor]:
        features = torch.cat([f for f, _ in self._val_features[index]])
        targets = torch.cat([t for _, t in self._val_features[index]])
        if self.trainer.world_size > 1:  # every rank scores the whole validation set
            features = self.all_gather(features).flatten(0, 1)
            targets = self.all_gather(targets).flatten(0, 1)
        return features, targets

    def on_validation_epoch_end(self) -> None:
        if not self._val_features:
            return
        loaders = sorted(self._val_features)
        query, query_labels = self._gathered(loaders[-1])
        self.log("val_feature_std", embedding_std(query), sync_dist=False)
        if self.hparams.num_classes > 0:
            if len(loaders) > 1:  # [bank, query]
                bank, bank_labels = self._gathered(loaders[0])
                scores = weighted_knn_scores(query, bank, bank_labels, self.hparams.num_classes,
                                             self.hparams.knn_k, self.hparams.knn_t)
            else:  # validation labels only: leave-one-out within the validation set
                scores = weighted_knn_scores(query, query, query_labels, self.hparams.num_classes,
                                             self.hparams.knn_k, self.hparams.knn_t, exclude_self=True)
            accuracy = (scores.argmax(dim=1) == query_labels).float().mean()
            self.log("val_knn_acc", accuracy, prog_bar=True)
        self._val_features.clear()

    def _param_groups(self) -> list[dict]:
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            plain = param.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "reg_token"))
            (no_decay if plain else decay).append(param)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self):
        h = self.hparams
        groups = self._param_groups()
        if h.optimizer == "lars":
            optimizer = LARS(groups, lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)
        else:
            optimizer = build_optimizer(groups, h.optimizer, h.lr, h.weight_decay, h.momentum)
        if h.scheduler == "none":
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": warmup_cosine_scheduler(optimizer, self.trainer, h.warmup_epochs)}


def _teacher(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` updated only by EMA."""
    teacher = copy.deepcopy(module)
    deactivate_requires_grad(teacher)
    return teacher


# ---------------------------------------------------------------------------------------------------------
# The methods


class SimCLR(SSLModule):
    """SimCLR (Chen et al. 2020): NT-Xent between two views' projections, the batch as negatives.

    Args:
        temperature: NT-Xent temperature.
        proj_hidden_dim: projection head hidden width.
        proj_output_dim: projection output dimension.
        **kwargs: the arguments of :class:`SSLModule` (backbone, optimizer, kNN monitor, ...).
    """

    def __init__(self, temperature: float = 0.2, proj_hidden_dim: int = 512, proj_output_dim: int = 128,
                 **kwargs: Any) -> None:
        self.temperature = temperature
        self.proj_dims = (proj_hidden_dim, proj_output_dim)
        super().__init__(**kwargs)

    def build_heads(self) -> None:
        self.projection = SimCLRProjectionHead(self.feature_dim, *self.proj_dims)
        self.criterion = NTXentLoss(temperature=self.temperature)

    def ssl_loss(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        # Both views in one pass: one batch-norm statistic over 2B images, as in SimCLR, and faster.
        z0, z1 = self.projection(self.backbone(torch.cat(views[:2]))).chunk(2)
        return self.criterion(z0, z1), z0


class MoCo(SSLModule):
    """MoCo v2 (Chen et al. 2020): a momentum key encoder and a queue of negatives (lightly's memory bank),
    symmetric loss as in MoCo v3. Keys are computed on a shuffled batch so batch norm cannot cheat.

    Args:
        temperature: InfoNCE temperature.
        queue_size: negatives kept in the memory bank.
        proj_hidden_dim: projection head hidden width.
        proj_output_dim: projection output dimension.
        **kwargs: the arguments of :class:`SSLModule`.
    """

    def __init__(self, temperature: float = 0.2, queue_size: int = 4096, proj_hidden_dim: int = 512,
                 proj_output_dim: int = 128, **kwargs: Any) -> None:
        self.temperature, self.queue_size = temperature, queue_size
        self.proj_dims = (proj_hidden_dim, proj_output_dim)
        super().__init__(**kwargs)

    def build_heads(self) -> None:
        self.projection = MoCoProjectionHead(self.feature_dim, *self.proj_dims)
        self.backbone_key = _teacher(self.backbone)
        self.projection_key = _teacher(self.projection)
        self.criterion = NTXentLoss(temperature=self.temperature, memory_bank_size=(self.queue_size, self.proj_dims[1]))

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.backbone_key), (self.projection, self.projection_key)]

    def on_fit_start(self) -> None:
        # A queue longer than the pretraining set holds stale keys of each query's own particle as negatives.
        data = getattr(self.trainer, "datamodule", None)
        train = getattr(data, "datasets", {}).get("train")
        if train is not None and self.queue_size >= len(train):
            log.warning("MoCo queue_size %d is not smaller than the %d pretraining particles: negatives then "
                        "include old keys of each particle itself. Use a queue_size well below the set size.",
                        self.queue_size, len(train))

    @torch.no_grad()
    def _keys(self, x: Tensor) -> Tensor:
        x, shuffle = batch_shuffle(x)
        return batch_unshuffle(self.projection_key(self.backbone_key(x)), shuffle).detach()

    def ssl_loss(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        q0, q1 = self.projection(self.backbone(torch.cat(views[:2]))).chunk(2)
        k0, k1 = self._keys(views[0]), self._keys(views[1])
        # One call for both directions: the memory bank enqueues after each call, so a second call would
        # find this batch's own keys (near-copies of its queries) among the negatives.
        return self.criterion(torch.cat([q0, q1]), torch.cat([k1, k0])), q0


class BYOL(SSLModule):
    """BYOL (Grill et al. 2020): an online network predicts a momentum target's projection of the other view.

    Args:
        proj_hidden_dim: projection and prediction head hidden width.
        proj_output_dim: projection output dimension.
        **kwargs: the arguments of :class:`SSLModule`.
    """

    def __init__(self, proj_hidden_dim: int = 1024, proj_output_dim: int = 256, **kwargs: Any) -> None:
        self.proj_dims = (proj_hidden_dim, proj_output_dim)
        super().__init__(**kwargs)

    def build_heads(self) -> None:
        hidden, out = self.proj_dims
        self.projection = BYOLProjectionHead(self.feature_dim, hidden, out)
        self.prediction = BYOLPredictionHead(out, hidden, out)
        self.backbone_target = _teacher(self.backbone)
        self.projection_target = _teacher(self.projection)
        self.criterion = NegativeCosineSimilarity()

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.backbone_target), (self.projection, self.projection_target)]

    def ssl_loss(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        x = torch.cat(views[:2])
        z = self.projection(self.backbone(x))
        p0, p1 = self.prediction(z).chunk(2)
        with torch.no_grad():
            t0, t1 = self.projection_target(self.backbone_target(x)).chunk(2)
        return 0.5 * (self.criterion(p0, t1) + self.criterion(p1, t0)), z.chunk(2)[0]


class DINO(SSLModule):
    """DINO (Caron et al. 2021): self-distillation of a momentum teacher's centred, sharpened output.

    The teacher sees the global views (those of the first view's size), the student every view
    (multi-crop: ``n_local`` in :class:`~fimvision.data.ssl_data.SSLDataModule`; a ViT needs
    ``backbone_kwargs: {dynamic_img_size: true}`` for the smaller local views).

    Args:
        proj_hidden_dim: head hidden width.
        bottleneck_dim: head bottleneck dimension.
        output_dim: prototypes (head output dimension).
        student_temp: student softmax temperature.
        teacher_temp: teacher softmax temperature after warm-up.
        warmup_teacher_temp: teacher temperature at the start.
        warmup_teacher_temp_epochs: epochs of the linear teacher-temperature warm-up.
        freeze_last_layer_epochs: epochs during which the head's last layer is not updated.
        **kwargs: the arguments of :class:`SSLModule`.
    """

    def __init__(self, proj_hidden_dim: int = 1024, bottleneck_dim: int = 128, output_dim: int = 2048,
                 student_temp: float = 0.1, teacher_temp: float = 0.04, warmup_teacher_temp: float = 0.04,
                 warmup_teacher_temp_epochs: int = 0, freeze_last_layer_epochs: int = 1, **kwargs: Any) -> None:
        self.head_dims = (proj_hidden_dim, bottleneck_dim, output_dim)
        self.temps = (student_temp, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs)
        self.freeze_last_layer_epochs = freeze_last_layer_epochs
        super().__init__(**kwargs)

    def build_heads(self) -> None:
        self.head = DINOProjectionHead(self.feature_dim, *self.head_dims,
                                       freeze_last_layer=self.freeze_last_layer_epochs)
        self.backbone_teacher = _teacher(self.backbone)
        # A weight-normed head cannot be deep-copied: build the teacher's and copy the weights.
        self.head_teacher = DINOProjectionHead(self.feature_dim, *self.head_dims)
        self.head_teacher.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.head_teacher)
        student_temp, teacher_temp, _, _ = self.temps
        self.criterion = DINOLoss(output_dim=self.head_dims[2], student_temp=student_temp, teacher_temp=teacher_temp,
                                  warmup_teacher_temp=teacher_temp, warmup_teacher_temp_epochs=1)

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.backbone_teacher), (self.head, self.head_teacher)]

    def teacher_temperature(self) -> float:
        """Linear warm-up from ``warmup_teacher_temp`` to ``teacher_temp`` over the warm-up epochs."""
        _, teacher_temp, warmup_temp, warmup_epochs = self.temps
        if self.current_epoch >= warmup_epochs:
            return teacher_temp
        return warmup_temp + (teacher_temp - warmup_temp) * self.current_epoch / warmup_epochs

    def ssl_loss(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        n_global = sum(v.shape[-2:] == views[0].shape[-2:] for v in views)
        global_views, local_views = views[:n_global], views[n_global:]
        with torch.no_grad():
            teacher = list(self.head_teacher(self.backbone_teacher(torch.cat(global_views))).chunk(n_global))
        student = list(self.head(self.backbone(torch.cat(global_views))).chunk(n_global))
        if local_views:
            student += list(self.head(self.backbone(torch.cat(local_views))).chunk(len(local_views)))
        loss = self.criterion(teacher, student, teacher_temp=self.teacher_temperature())
        return loss, student[0]

    def on_after_backward(self) -> None:
        self.head.cancel_last_layer_gradients(self.current_epoch)


# ---------------------------------------------------------------------------------------------------------
# Downstream: the pretrained backbone in a classifier


def load_backbone_weights(model: nn.Module, path: str | Path, *, backbone: str, in_chans: int) -> int:
    """Load the ``backbone.*`` weights of a self-supervised checkpoint into the timm ``model``.

    Only the backbone is loaded; the classifier head of ``model`` keeps its initialisation. A
    checkpoint of another architecture, channel count or token grid raises :class:`CheckpointError`
    naming what differs. Returns the number of tensors loaded.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"backbone_checkpoint {path} does not exist. Give the last.ckpt (or another "
                              "checkpoint) of a self-supervised run, e.g. runs/ssl/.../checkpoints/last.ckpt.")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"cannot read backbone_checkpoint {path} ({type(err).__name__}: {err}).") from err
    state = blob.get("state_dict", {}) if isinstance(blob, dict) else {}
    saved = (blob.get("hyper_parameters") or {}) if isinstance(blob, dict) else {}
    weights = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}
    if not weights:
        raise CheckpointError(f"{path} holds no 'backbone.*' weights: it is not a fimvision self-supervised "
                              "checkpoint. For other weight files use `weights:` instead of `backbone_checkpoint:`.")
    if saved.get("backbone", backbone) != backbone:
        raise CheckpointError(f"{path} was pretrained with backbone '{saved['backbone']}' "
                              f"(backbone_kwargs {saved.get('backbone_kwargs')}), but this model is '{backbone}'. "
                              f"Set backbone: {saved['backbone']} and the same backbone_kwargs.")
    if saved.get("in_chans", in_chans) != in_chans:
        raise CheckpointError(f"{path} was pretrained on {saved['in_chans']}-channel input, but the data gives "
                              f"{in_chans} channel(s). Use the modality it was pretrained on "
                              "(--data.init_args.modality=color|mono, --data.init_args.mono_channels).")
    head = {id(p) for p in model.get_classifier().parameters()} if hasattr(model, "get_classifier") else set()
    target = {name: tensor for name, tensor in model.state_dict(keep_vars=True).items() if id(tensor) not in head}
    problems = [f"'{name}' missing from the checkpoint" for name in target if name not in weights]
    problems += [f"'{name}' is not part of this model" for name in weights if name not in target]
    problems += [f"'{name}': checkpoint shape {tuple(weights[name].shape)}, model shape {tuple(tensor.shape)}"
                 for name, tensor in target.items() if name in weights and weights[name].shape != tensor.shape]
    if problems:
        more = f" ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise CheckpointError(f"{path} does not fit backbone '{backbone}' with {in_chans}-channel input: "
                              + "; ".join(problems[:5]) + more + ". Use the backbone, backbone_kwargs (e.g. "
                              "patch_size) and image_size it was pretrained with.")
    model.load_state_dict(weights, strict=False)
    log.info("loaded %d backbone tensors from %s", len(weights), path)
    return len(weights)
