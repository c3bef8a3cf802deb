"""The model of a `fimvision fit` config, built exactly as the CLI builds it, with or without its dataset.

The config is parsed by :class:`fimvision.cli.FimvisionCLI` itself (same parser, same short class names,
same overrides such as ``--model.init_args.backbone=...``); only the model is instantiated, with the
data-linked arguments ``num_classes``, ``class_names``, ``in_chans`` and ``img_size`` filled in as the
CLI's links would. When the data module's dataset folder exists the data module is instantiated too
and supplies them (and real images); otherwise they come from the data section of the config
(``image_size``, the data module's own ``in_chans`` rule, ``classes``) and inputs are synthetic tensors.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytorch_lightning as pl
import torch
from jsonargparse import ArgumentParser, Namespace

from fimvision.errors import FimvisionError
from fimvision.models.backbones import class_names_for

log = logging.getLogger(__name__)


@dataclass
class EfficiencyTarget:
    """A built model and the input it takes."""

    module: pl.LightningModule
    image_size: int
    in_chans: int
    num_classes: int
    class_names: list[str]
    datamodule: pl.LightningDataModule | None
    config: str

    @property
    def name(self) -> str:
        """A short name: the backbone (or class) and the input size."""
        hp = getattr(self.module, "hparams", {})
        return f"{hp.get('backbone', type(self.module).__name__)}@{self.image_size}px/{self.in_chans}ch"

    @property
    def net(self) -> torch.nn.Module:
        """The network the LightningModule wraps (its ``model`` attribute), else the module itself."""
        inner = getattr(self.module, "model", None)
        return inner if isinstance(inner, torch.nn.Module) else self.module

    def fresh(self) -> pl.LightningModule:
        """An independent copy of the module (same weights)."""
        return copy.deepcopy(self.module)

    def synthetic_batch(self, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Standard-normal images (N, in_chans, image_size, image_size) and random targets, seeded."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch_size, self.in_chans, self.image_size, self.image_size, generator=g)
        y = torch.randint(0, self.num_classes, (batch_size,), generator=g)
        return x, y

    def require_data(self, what: str) -> pl.LightningDataModule:
        """The data module, or a clear error saying that ``what`` needs the dataset folder."""
        if self.datamodule is None:
            raise FimvisionError(f"{what} needs real images, but the dataset folder of {self.config} does not exist; "
                                 "make one (python tools/make_synthetic.py --out DIR) and pass "
                                 "--data.init_args.root=DIR.")
        return self.datamodule


def _parse(config: str | Path, overrides: list[str]) -> Namespace:
    from fimvision.cli import FimvisionCLI

    class ParseOnlyCLI(FimvisionCLI):
        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

        def after_instantiate_classes(self) -> None:
            pass

    if not Path(config).is_file():
        raise FimvisionError(f"config file {config} does not exist.")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            cli = ParseOnlyCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                               subclass_mode_data=True, run=False, save_config_callback=None,
                               args=["--config", str(config), *overrides])
    except SystemExit as err:
        raise FimvisionError(f"cannot parse {config} {' '.join(overrides)}:\n{stderr.getvalue().strip()}") from err
    return cli.config


def _instantiate(group: str, base: type, section: Namespace):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, group, required=True)
    return parser.instantiate_classes(Namespace(**{group: section}))[group]


def _data_fields(section: Namespace, num_classes: int) -> tuple[int, int, int, list[str]]:
    """image_size, in_chans, num_classes, class names from the data config, without its dataset."""
    args = section.init_args.as_dict() if "init_args" in section else {}
    cls = _import(section.class_path)
    try:
        # The data module's own rule for channels (e.g. colour 3, mono 1 or 3), applied to its arguments.
        in_chans = int(cls.in_chans.fget(SimpleNamespace(**args)))
        image_size = int(args["image_size"])
    except (AttributeError, KeyError, TypeError) as err:
        raise FimvisionError(f"cannot tell the input of {section.class_path} without its dataset ({err}); "
                             "give --data.init_args.root=DIR of an existing dataset.") from err
    classes = args.get("classes")
    if classes:
        return image_size, in_chans, len(classes), list(classes)
    return image_size, in_chans, num_classes, class_names_for(num_classes, None)


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def load_target(config: str | Path, overrides: list[str] | None = None, *, num_classes: int = 2,
                use_data: bool = True) -> EfficiencyTarget:
    """Build the model of ``config`` (a `fimvision fit` YAML plus CLI-style ``overrides``).

    ``num_classes`` is used only when the dataset folder is absent and the config names no classes.
    ``use_data=False`` skips the dataset even when it exists (synthetic input only).
    """
    cfg = _parse(config, list(overrides or []))
    data_section, model_section = cfg.data, cfg.model.clone()
    root = data_section.init_args.get("root") if "init_args" in data_section else None
    datamodule = None
    if use_data and root and (Path(root) / "manifest.csv").is_file():
        datamodule = _instantiate("data", pl.LightningDataModule, data_section)
        image_size, in_chans = int(datamodule.image_size), int(datamodule.in_chans)
        n, names = int(datamodule.num_classes), list(datamodule.classes)
    else:
        image_size, in_chans, n, names = _data_fields(data_section, num_classes)
        log.info("no dataset at %s: synthetic %d-channel %d px input, %d classes", root, in_chans, image_size, n)
    # The CLI's links (fimvision.cli.FimvisionCLI.add_arguments_to_parser), applied by hand.
    for key, value in (("num_classes", n), ("class_names", names), ("in_chans", in_chans), ("img_size", image_size)):
        model_section.init_args[key] = value
    module = _instantiate("model", pl.LightningModule, model_section)
    return EfficiencyTarget(module, image_size, in_chans, n, names, datamodule, str(config))
