"""Self-supervised pretraining on particle images (SimCLR, MoCo, BYOL, DINO) with lightly and timm.

Every method is a small subclass of :class:`SSLModule`, which gives it, as solo-learn does:

- the backbone: any timm CNN or ViT from :func:`fimvision.models.backbones.create_backbone`
  (features only), colour or mono input; saved as ``backbone.*`` in the checkpoint, the weights a
  :class:`~fimvision.models.classifier.ParticleClassifier` loads with ``backbone_checkpoint``;
- the optimizers and schedules of every fimvision model (:class:`~fimvision.models.base.FimvisionTask`;
  LARS by default here);
- a momentum (EMA) teacher update on a cosine schedule from ``ema_base`` to ``ema_end`` for methods
  that have a teacher (MoCo, BYOL, DINO);
- online evaluation: lightly's weighted kNN classifier on normalised backbone features of the labelled
  validation particles against a bank of labelled training particles (``val_knn_acc``,
  ``val_knn_balanced_acc``, ``val_knn_f1_macro``), and a collapse
  monitor, ``train_z_std`` / ``val_feature_std``: the std of L2-normalised embeddings per dimension
  times sqrt(dim), 1 when embeddings spread over the sphere evenly, 0 when they have collapsed.

A method implements ``build_heads`` and ``ssl_loss(views) -> (loss, embedding)``, and lists its
momentum pairs in ``ema_pairs``.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss, NTXentLoss
from lightly.models.modules import (
    BYOLPredictionHead,
    BYOLProjectionHead,
    DINOProjectionHead,
    MoCoProjectionHead,
    SimCLRProjectionHead,
)
from lightly.models.utils import batch_shuffle, batch_unshuffle, deactivate_requires_grad, update_momentum
from lightly.utils.benchmarking import knn_predict
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from fimvision.data.ssl_data import SSLDataModule  # noqa: F401  (their data module: registers its short name)
from fimvision.errors import ConfigError
from fimvision.losses import embedding_std, symmetric_byol_loss
from fimvision.models.base import FimvisionTask
from fimvision.models.classification import labelled_metrics
from fimvision.models.optim import OptimizerName

log = logging.getLogger(__name__)



def knn_predictions(query: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int, temperature: float
                    ) -> Tensor:
    """Class of each query row by lightly's weighted kNN (InstDisc's ``exp(sim / t)`` votes of the ``k`` most
    cosine-similar bank rows); ``query`` and ``bank`` L2-normalised."""
    return knn_predict(query, bank.T.contiguous(), bank_labels, num_classes, knn_k=min(k, len(bank)),
                       knn_t=temperature)[:, 0]


class SSLModule(FimvisionTask):
    """Base of the self-supervised methods: backbone, EMA teacher schedule and the online kNN monitor.

    Args:
        optimizer: ``lars`` (SimCLR/BYOL at large batch), ``sgd`` or ``adamw`` (ViTs, DINO).
        lr: peak learning rate.
        weight_decay: weight decay (not on biases, norms, position embeddings and tokens).
        ema_base: teacher momentum at the start (methods with a teacher).
        ema_end: teacher momentum at the end of training (cosine schedule).
        knn_k: neighbours of the kNN monitor.
        knn_t: temperature of the kNN monitor's ``exp(sim / t)`` weights.
        **kwargs: the arguments of :class:`~fimvision.models.base.FimvisionTask` (backbone, starting
            weights, momentum, schedule, and the data-linked num_classes, class_names, in_chans, img_size;
            num_classes 0 turns the kNN monitor off).
    """

    train_on = "views"
    evaluation_hparams = ("knn_k", "knn_t")

    def __init__(self, optimizer: OptimizerName = "lars", lr: float = 0.3, weight_decay: float = 1e-6,
                 ema_base: float = 0.99, ema_end: float = 1.0, knn_k: int = 20, knn_t: float = 0.07,
                 **kwargs: Any) -> None:
        kwargs.setdefault("num_classes", 0)
        super().__init__(optimizer=optimizer, lr=lr, weight_decay=weight_decay, **kwargs)
        self._val_features: dict[int, list[tuple[Tensor, Tensor]]] = {}

    # --- what a method provides ------------------------------------------------------------------------
    def configure_models(self) -> None:
        self.backbone = self.build_backbone(num_classes=0)
        self.feature_dim: int = self.backbone.num_features
        self.build_heads()

    def build_heads(self) -> None:
        """Create the method's heads, losses and teacher networks."""
        raise NotImplementedError

    def ssl_loss(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The method's loss on a list of view batches, and an embedding (B, D) for the collapse monitor."""
        raise NotImplementedError

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, teacher) module pairs updated by EMA before every training step; none by default."""
        return []

    def configure_metrics(self) -> None:
        n = self.hparams.num_classes
        # Every process scores the whole gathered validation set: nothing to synchronise.
        self.knn_metrics = labelled_metrics(n, sync_on_compute=False).clone(prefix="val_knn_") if n >= 2 else None

    # --- shared machinery ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Backbone features (B, feature_dim)."""
        return self.backbone(x)

    def synthetic_batch(self, batch_size: int, generator: torch.Generator | None = None) -> dict:
        batch = super().synthetic_batch(batch_size, generator)
        x = batch["image"]
        batch["image"] = [x, x.flip(-1) + 0.1 * torch.randn(x.shape, generator=generator)]
        return batch

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
            features, targets = self.gather_uneven(features), self.gather_uneven(targets)
        return features, targets

    def on_validation_epoch_end(self) -> None:
        if not self._val_features:
            return
        loaders = sorted(self._val_features)
        query, query_labels = self._gathered(loaders[-1])
        self.log("val_feature_std", embedding_std(query), sync_dist=False)
        if self.knn_metrics is not None and len(loaders) > 1:  # [bank, query]
            bank, bank_labels = self._gathered(loaders[0])
            predicted = knn_predictions(query, bank, bank_labels, self.hparams.num_classes, self.hparams.knn_k,
                                        self.hparams.knn_t)
            self.knn_metrics.update(predicted, query_labels)
            self.log_dict(self.knn_metrics.compute(), prog_bar=True)
            self.knn_metrics.reset()
        self._val_features.clear()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        raise ConfigError(f"{type(self).__name__} is a self-supervised model without a classifier: test a linear "
                          "probe or fine-tuned classifier of it (configs/ssl/linear_probe_*.yaml, "
                          "--model.init_args.backbone_checkpoint=...).")

    predict_step = test_step


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
        super().__init__(**kwargs)

    def build_heads(self) -> None:
        h = self.hparams
        self.projection = SimCLRProjectionHead(self.feature_dim, h.proj_hidden_dim, h.proj_output_dim)
        self.criterion = NTXentLoss(temperature=h.temperature)

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
        super().__init__(**kwargs)

    def build_heads(self) -> None:
        h = self.hparams
        self.projection = MoCoProjectionHead(self.feature_dim, h.proj_hidden_dim, h.proj_output_dim)
        self.backbone_key = _teacher(self.backbone)
        self.projection_key = _teacher(self.projection)
        self.criterion = NTXentLoss(temperature=h.temperature, memory_bank_size=(h.queue_size, h.proj_output_dim))

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.backbone_key), (self.projection, self.projection_key)]

    def on_fit_start(self) -> None:
        # A queue longer than the pretraining set holds stale keys of each query's own particle as negatives.
        data = getattr(self.trainer, "datamodule", None)
        train = getattr(data, "datasets", {}).get("train")
        if train is not None and self.hparams.queue_size >= len(train):
            log.warning("MoCo queue_size %d is not smaller than the %d pretraining particles: negatives then "
                        "include old keys of each particle itself. Use a queue_size well below the set size.",
                        self.hparams.queue_size, len(train))

    @torch.no_grad()
    def _keys(self, x: Tensor) -> Tensor:
        # On several processes the shuffle spans all of them, so batch norm cannot use the batch's own
        # pairing on any of them (MoCo's shuffling BN).
        distributed = self._trainer is not None and self.trainer.world_size > 1
        x, shuffle = batch_shuffle(x, distributed=distributed)
        return batch_unshuffle(self.projection_key(self.backbone_key(x)), shuffle, distributed=distributed).detach()

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
        super().__init__(**kwargs)

    def build_heads(self) -> None:
        hidden, out = self.hparams.proj_hidden_dim, self.hparams.proj_output_dim
        self.projection = BYOLProjectionHead(self.feature_dim, hidden, out)
        self.prediction = BYOLPredictionHead(out, hidden, out)
        self.backbone_target = _teacher(self.backbone)
        self.projection_target = _teacher(self.projection)

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.backbone_target), (self.projection, self.projection_target)]

    def ssl_loss(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        x = torch.cat(views[:2])
        z = self.projection(self.backbone(x))
        p0, p1 = self.prediction(z).chunk(2)
        with torch.no_grad():
            t0, t1 = self.projection_target(self.backbone_target(x)).chunk(2)
        return symmetric_byol_loss(p0, p1, t0, t1), z.chunk(2)[0]


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
        super().__init__(**kwargs)

    def build_heads(self) -> None:
        h = self.hparams
        dims = (h.proj_hidden_dim, h.bottleneck_dim, h.output_dim)
        self.head = DINOProjectionHead(self.feature_dim, *dims, freeze_last_layer=h.freeze_last_layer_epochs)
        self.backbone_teacher = _teacher(self.backbone)
        # A weight-normed head cannot be deep-copied: build the teacher's and copy the weights.
        self.head_teacher = DINOProjectionHead(self.feature_dim, *dims)
        self.head_teacher.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.head_teacher)
        self.criterion = DINOLoss(output_dim=h.output_dim, student_temp=h.student_temp, teacher_temp=h.teacher_temp,
                                  warmup_teacher_temp=h.teacher_temp, warmup_teacher_temp_epochs=1)

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.backbone_teacher), (self.head, self.head_teacher)]

    def teacher_temperature(self) -> float:
        """Linear warm-up from ``warmup_teacher_temp`` to ``teacher_temp`` over the warm-up epochs."""
        h = self.hparams
        teacher_temp, warmup_temp, warmup_epochs = h.teacher_temp, h.warmup_teacher_temp, h.warmup_teacher_temp_epochs
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
