"""The efficiency target: the LightningModule of a `fimvision fit` config, built as the CLI builds it, and its batches.

The config is parsed by :class:`fimvision.cli.FimvisionCLI` itself (same parser, same short class names, same
overrides such as ``--model.init_args.backbone=...`` or ``--model FILE``); only the model is instantiated, with
the data-linked arguments ``num_classes``, ``class_names``, ``in_chans`` and ``img_size`` filled in as the CLI's
links would. When the data module's dataset (its ``root``) exists, the data module is instantiated too, supplies
them and serves the model's kind of training batch (``serve(module.train_on)``); otherwise they come from the
data section of the config (``image_size``, the data module's own ``in_chans`` rule or ``channels``,
``classes``) and batches are the model's own ``synthetic_batch``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytorch_lightning as pl
import torch
from jsonargparse import ArgumentParser, Namespace

from fimvision.cli import DATA_TO_MODEL, parse_config
from fimvision.errors import FimvisionError
from fimvision.models.base import class_names_for

log = logging.getLogger(__name__)


@dataclass
class EfficiencyTarget:
    """A built LightningModule, its data module (None: synthetic batches) and the config it came from."""

    module: pl.LightningModule
    datamodule: pl.LightningDataModule | None
    config: str
    tracking: Any = None  # WandbTracking when the config turns W&B on (drift logs its runs there)
    resolved: dict | None = None  # the parsed config as plain data

    @property
    def name(self) -> str:
        """A short name: the backbone (or class) and the input size."""
        hp = self.module.hparams
        return f"{hp.get('backbone', type(self.module).__name__)}@{hp.get('img_size')}px/{hp.get('in_chans')}ch"

    def batch(self, batch_size: int, seed: int = 0) -> dict:
        """A training batch of ``batch_size`` as the model trains on it: drawn from the data module's training
        loader's dataset when there is a dataset, else the model's ``synthetic_batch``; seeded."""
        generator = torch.Generator().manual_seed(seed)
        if self.datamodule is None:
            return self.module.synthetic_batch(batch_size, generator)
        dataset = self.datamodule.train_dataloader().dataset
        sampler = torch.utils.data.RandomSampler(dataset, replacement=len(dataset) < batch_size,
                                                 num_samples=batch_size, generator=generator)
        return next(iter(torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler)))


def images_of(batch: dict) -> torch.Tensor:
    """The image tensor of a batch: ``image``, or its first (global) view in a multi-view batch."""
    image = batch["image"]
    return image[0] if isinstance(image, (list, tuple)) else image


def _parse(config: str | Path, overrides: list[str]) -> Namespace:
    if not Path(config).is_file():
        raise FimvisionError(f"config file {config} does not exist.")
    return parse_config(["--config", str(config), *overrides])


def _instantiate(group: str, base: type, section: Namespace):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, group, required=True)
    return parser.instantiate_classes(Namespace(**{group: section}))[group]


def _data_fields(section: Namespace, num_classes: int) -> tuple[int, int, int, list[str]]:
    """image_size, in_chans, num_classes, class names from the data config, without its dataset."""
    args = section.init_args.as_dict() if "init_args" in section else {}
    module, _, name = section.class_path.rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    try:
        image_size = int(args["image_size"])
        if args.get("channels"):  # a data module told its channels (DomainDataModule)
            in_chans = int(args["channels"])
        else:  # the data module's own rule for channels (e.g. colour 3, mono 1 or 3), applied to its arguments
            in_chans = int(cls.in_chans.fget(SimpleNamespace(hparams=SimpleNamespace(**args))))
    except (AttributeError, KeyError, TypeError) as err:
        raise FimvisionError(f"cannot tell the input of {section.class_path} without its dataset ({err}); "
                             "give --data.init_args.root of an existing dataset.") from err
    classes = args.get("classes")
    if classes:
        return image_size, in_chans, len(classes), list(classes)
    return image_size, in_chans, num_classes, class_names_for(num_classes, None)


def load_target(config: str | Path, overrides: list[str] | None = None, *, num_classes: int = 2,
                use_data: bool = True) -> EfficiencyTarget:
    """Build the model of ``config`` (a `fimvision fit` YAML plus CLI-style ``overrides``).

    ``num_classes`` is used only when the dataset is absent and the config names no classes.
    ``use_data=False`` skips the dataset even when it exists (synthetic batches only).
    """
    cfg = _parse(config, list(overrides or []))
    data_section, model_section = cfg.data, cfg.model.clone()
    root = data_section.init_args.get("root") if "init_args" in data_section else None
    datamodule = None
    if use_data and root and Path(root).exists():
        datamodule = _instantiate("data", pl.LightningDataModule, data_section)
        # The CLI's links, from the same table (features included).
        linked = {model: getattr(datamodule, data) for data, model in DATA_TO_MODEL.items() if hasattr(datamodule, data)}
    else:
        image_size, in_chans, n, names = _data_fields(data_section, num_classes)
        log.info("no dataset at %s: synthetic %d-channel %d px input, %d classes", root, in_chans, image_size, n)
        linked = {"num_classes": n, "class_names": names, "in_chans": in_chans, "img_size": image_size}
    for key, value in linked.items():
        model_section.init_args[key] = list(value) if isinstance(value, tuple | list) else value
    module = _instantiate("model", pl.LightningModule, model_section)
    if datamodule is not None and hasattr(datamodule, "serve"):  # the data-model contract, as the CLI applies it
        datamodule.serve(module.train_on)
        datamodule.setup("fit")
    from fimvision.tracking import WandbTracking

    tracking = WandbTracking(**cfg.wandb.as_dict()) if "wandb" in cfg else None
    return EfficiencyTarget(module, datamodule, str(config), tracking, cfg.as_dict())
