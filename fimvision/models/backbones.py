"""The one place models come from: any timm CNN or ViT by name.

``pretrained=False`` by default. ``weights`` names a local file (a timm/torchvision state dict or a
Lightning checkpoint) and needs no network; ``pretrained=True`` without ``weights`` downloads timm's
hub weights (opt-in, for users with network access). The input convolution follows ``in_chans``
(timm sums RGB filters for one channel) and a classifier of another size is re-initialised.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import timm
from torch import nn

from fimvision.checkpoints import read_checkpoint
from fimvision.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def check_model_name(name: str) -> None:
    """Refuse a name timm does not know, naming its close matches. Tagged names (``resnet18.a1_in1k``) are
    accepted: the tag selects the pretrained weights."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=6, cutoff=0.6)
    raise ConfigError(f"unknown timm model '{name}'." + (f" Close matches: {', '.join(close)}." if close else "")
                      + " `python -c \"import timm; print(timm.list_models('*resnet*'))\"` lists names by pattern.")


def create_backbone(name: str, *, in_chans: int = 3, num_classes: int = 0, pretrained: bool = False,
                    weights: str | None = None, img_size: int | None = None, **kwargs: Any) -> nn.Module:
    """A timm model ``name`` for ``in_chans``-channel input with ``num_classes`` outputs (0: features).

    ``img_size`` is passed to models that take it (ViTs), so position embeddings fit small crops; use
    ``patch_size`` in ``kwargs`` for a patch size that suits them (e.g. 8 at 64 px).
    """
    check_model_name(name)
    if img_size is not None:
        kwargs["img_size"] = img_size
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointError(f"weights file {path} does not exist.")
        # timm loads a local file through its pretrained path: channel adaptation and classifier reset
        # are then the same as for hub weights.
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    else:
        kwargs["pretrained"] = pretrained
    try:
        return timm.create_model(name, in_chans=in_chans, num_classes=num_classes, **kwargs)
    except TypeError as err:
        # CNNs have no img_size: their constructor refuses it before building anything.
        if "img_size" not in str(err) or "img_size" not in kwargs:
            raise
        del kwargs["img_size"]
        return timm.create_model(name, in_chans=in_chans, num_classes=num_classes, **kwargs)


# Where the backbone sits in each family's checkpoint: SSL methods (backbone.*), SHOT-style networks of
# the adaptation family (net.backbone.*), the classifier (model.*, whose head is not loaded).
BACKBONE_PREFIXES = ("backbone.", "net.backbone.", "model.")


def load_backbone_weights(model: nn.Module, path: str | Path, *, backbone: str, in_chans: int) -> int:
    """Load the backbone weights of a fimvision checkpoint (any family) into the timm ``model``.

    Only the backbone is loaded; the classifier head of ``model`` keeps its initialisation. A
    checkpoint of another architecture, channel count or token grid raises :class:`CheckpointError`
    naming what differs. Returns the number of tensors loaded.
    """
    blob = read_checkpoint(path, what="backbone_checkpoint")
    state, saved = blob["state_dict"], dict(blob.get("hyper_parameters") or {})
    prefix = next((p for p in BACKBONE_PREFIXES if any(k.startswith(p) for k in state)), None)
    if prefix is None:
        raise CheckpointError(f"{path} holds no backbone weights (no {', '.join(BACKBONE_PREFIXES)} tensors): it is "
                              "not a fimvision checkpoint. For other weight files use `weights:` instead of "
                              "`backbone_checkpoint:`.")
    if saved.get("backbone", backbone) != backbone:
        raise CheckpointError(f"{path} was trained with backbone '{saved['backbone']}' (backbone_kwargs "
                              f"{saved.get('backbone_kwargs')}), but this model is '{backbone}'. Set backbone: "
                              f"{saved['backbone']} and the same backbone_kwargs.")
    if saved.get("in_chans", in_chans) != in_chans:
        raise CheckpointError(f"{path} was trained on {saved['in_chans']}-channel input, but the data gives "
                              f"{in_chans} channel(s). Use the modality it was trained on "
                              "(--data.init_args.modality=color|mono, --data.init_args.mono_channels).")
    head = {name for name, _ in model.get_classifier().named_parameters(prefix=_head_prefix(model))}
    weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    weights = {k: v for k, v in weights.items() if k not in head}
    target = {k: v for k, v in model.state_dict().items() if k not in head}
    problems = [f"'{name}' missing from the checkpoint" for name in target if name not in weights]
    problems += [f"'{name}' is not part of this model" for name in weights if name not in target]
    problems += [f"'{name}': checkpoint shape {tuple(weights[name].shape)}, model shape {tuple(tensor.shape)}"
                 for name, tensor in target.items() if name in weights and weights[name].shape != tensor.shape]
    if problems:
        more = f" ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise CheckpointError(f"{path} does not fit backbone '{backbone}' with {in_chans}-channel input: "
                              + "; ".join(problems[:5]) + more + ". Use the backbone, backbone_kwargs (e.g. "
                              "patch_size) and image_size it was trained with.")
    model.load_state_dict(weights, strict=False)
    log.info("loaded %d backbone tensors from %s", len(weights), path)
    return len(weights)


def _head_prefix(model: nn.Module) -> str:
    """The attribute path of a timm model's classifier head (``fc``, ``head``, ``head.fc``, ...)."""
    head = model.get_classifier()
    return next((name for name, module in model.named_modules() if module is head), "")
