"""The one place models come from: any timm CNN or ViT by name.

``pretrained=False`` by default. ``weights`` names a local file (a timm/torchvision state dict or a
Lightning checkpoint) and needs no network; ``pretrained=True`` without ``weights`` downloads timm's
hub weights (opt-in, for users with network access). The input convolution follows ``in_chans``
(timm sums RGB filters for one channel) and a classifier of another size is re-initialised.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from fimvision.errors import CheckpointError, ConfigError


def class_names_for(num_classes: int, class_names: list[str] | None) -> list[str]:
    """The output names of a ``num_classes``-way head: ``class_names``, or "0", "1", ... when not given."""
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
    return list(class_names) if class_names else [str(i) for i in range(num_classes)]


def check_model_name(name: str) -> None:
    """Refuse a name timm does not know, naming its close matches. Tagged names (``resnet18.a1_in1k``) are
    accepted: the tag selects the pretrained weights."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=6, cutoff=0.6)
    raise ConfigError(f"unknown timm model '{name}'." + (f" Close matches: {', '.join(close)}." if close else "")
                      + " `python -c \"import timm; print(timm.list_models('*resnet*'))\"` lists names by pattern.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a plain, timm or Lightning checkpoint file."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"cannot read weights file {path} ({type(err).__name__}: {err}).") from err
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(blob, dict) and key in blob and isinstance(blob[key], dict):
            blob = blob[key]
            break
    if not isinstance(blob, dict):
        raise CheckpointError(f"{path} holds no state dict.")
    return blob


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
