"""The SHOT-style network every adaptation method shares, its source training, and loading it back.

:class:`SHOTNet`: a timm backbone, a 256-d bottleneck with batch norm and a weight-normalised linear
classifier. :class:`SourceModel` trains it on the source domain with label-smoothed cross-entropy;
:func:`load_source` rebuilds it from a SourceModel checkpoint for the adaptation methods, which never
see source data.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from fimvision.checkpoints import read_checkpoint
from fimvision.errors import CheckpointError
from fimvision.models.backbones import create_backbone
from fimvision.models.base import class_names_for
from fimvision.models.classification import ClassificationTask
from fimvision.models.optim import OptimizerName, SchedulerName

# Source-model arguments an adapted model must share with the data it adapts on.
SOURCE_CONTRACT = ("num_classes", "class_names", "in_chans", "img_size")


class SHOTNet(nn.Module):
    """timm backbone -> bottleneck (Linear + BatchNorm1d) -> weight-normalised linear classifier."""

    def __init__(self, backbone: nn.Module, num_classes: int, bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        self.bottleneck = nn.Sequential(nn.Linear(backbone.num_features, bottleneck_dim),
                                        nn.BatchNorm1d(bottleneck_dim))
        self.classifier = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, num_classes), dim=0)

    def features(self, x: Tensor) -> Tensor:
        """The bottleneck features (what SHOT clusters and NRC/AaD keep in their banks)."""
        return self.bottleneck(self.backbone(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class SourceModel(ClassificationTask):
    """A SHOT-style network trained on the source domain only (label-smoothed cross-entropy).

    Validation is on held-out source images; ``test`` reports the unadapted model on the target test part
    (the source-only baseline).

    Args:
        bottleneck_dim: width of the bottleneck (256 in SHOT).
        label_smoothing: cross-entropy label smoothing (0.1 as in SHOT).
        **kwargs: the arguments of :class:`~fimvision.models.base.FimvisionTask` (backbone, starting weights,
            optimizer and schedule, and the data-linked num_classes, class_names, in_chans, img_size).
    """

    train_on = "source"

    def __init__(self, bottleneck_dim: int = 256, label_smoothing: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def configure_models(self) -> None:
        self.net = SHOTNet(self.build_backbone(num_classes=0), self.hparams.num_classes, self.hparams.bottleneck_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["target"], label_smoothing=self.hparams.label_smoothing)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(logits))
        return loss


def load_source(path: str | None, num_classes: int, class_names: list[str] | None, in_chans: int,
                img_size: int | None) -> tuple[SHOTNet, dict]:
    """The network of a :class:`SourceModel` checkpoint, checked against the data it will adapt on."""
    if not path:
        raise CheckpointError("source_checkpoint is not set. Train a source model first (`fimvision fit --config "
                              "configs/sfda/<data>.yaml`) and pass its checkpoint with "
                              "--model.init_args.source_checkpoint=PATH.")
    blob = read_checkpoint(path, what="source checkpoint")
    saved, state = dict(blob.get("hyper_parameters") or {}), blob["state_dict"]
    if "bottleneck_dim" not in saved or "backbone" not in saved:
        raise CheckpointError(f"{path} is not a SourceModel checkpoint (hyper-parameters {sorted(saved)[:8]}...). "
                              "Train one with a configs/sfda/<data>.yaml config.")
    now = {"num_classes": num_classes, "class_names": list(class_names) if class_names else None,
           "in_chans": in_chans, "img_size": img_size}
    wrong = [f"{k}: checkpoint {saved.get(k)!r}, data {now[k]!r}" for k in SOURCE_CONTRACT
             if saved.get(k) is not None and now[k] is not None and saved.get(k) != now[k]]
    if wrong:
        raise CheckpointError(f"source checkpoint {path} does not fit this target data: " + "; ".join(wrong)
                              + ". Use the same classes, scenario, in_chans and image_size as the source run, "
                              "or another checkpoint.")
    body = create_backbone(saved["backbone"], in_chans=saved["in_chans"], num_classes=0, img_size=saved.get("img_size"),
                           **(saved.get("backbone_kwargs") or {}))
    net = SHOTNet(body, saved["num_classes"], saved["bottleneck_dim"])
    try:
        net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    except RuntimeError as err:
        raise CheckpointError(f"source checkpoint {path}: weights do not fit the network ({err}).") from err
    return net, saved


class AdaptedTask(ClassificationTask):
    """Base of the adaptation methods: the source network from ``source_checkpoint`` (checked against the
    target data), instead of a fresh backbone.

    Args:
        source_checkpoint: checkpoint of a SourceModel run.
        num_classes: number of classes (linked from the data module).
        class_names: class names (linked from the data module).
        in_chans: input channels (linked from the data module).
        img_size: input side (linked from the data module).
        num_features, feature_names: numeric features of the data (linked; adaptation takes images only, so 0).
        optimizer: adamw, adam, sgd or lars.
        lr: learning rate.
        weight_decay: weight decay.
        momentum: SGD momentum.
        scheduler: ``cosine``, ``shot`` or ``none``.
    """

    # The backbone comes from the source checkpoint: these base arguments do not apply.
    ignored_hparams = ("backbone", "backbone_kwargs", "pretrained", "weights", "backbone_checkpoint", "warmup_epochs")

    def __init__(self, source_checkpoint: str | None = None, num_classes: int = 2, class_names: list[str] | None = None,
                 in_chans: int = 3, img_size: int | None = None, num_features: int = 0,
                 feature_names: list[str] | None = None, optimizer: OptimizerName = "adam", lr: float = 1e-5,
                 weight_decay: float = 0.0, momentum: float = 0.9, scheduler: SchedulerName = "none") -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, img_size=img_size, class_names=class_names,
                         num_features=num_features, feature_names=feature_names, optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum, scheduler=scheduler,
                         warmup_epochs=0.0)

    def configure_models(self) -> None:
        h = self.hparams
        self.net, self.source_hparams = load_source(h.source_checkpoint, h.num_classes, h.class_names, h.in_chans,
                                                    h.img_size)
        if not h.class_names:
            self.class_names = class_names_for(h.num_classes, self.source_hparams.get("class_names"))

    def describe(self) -> str:
        return f"{type(self).__name__} of {self.source_hparams['backbone']}"

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["source_hyper_parameters"] = self.source_hparams
