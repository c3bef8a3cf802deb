"""`fimvision fit|validate|test|predict --config FILE`: the Lightning CLI over fimvision's modules.

Model and data are given in subclass mode (``class_path`` + ``init_args``; short class names
resolve). The model's number of classes, class names, input channels and image size follow the data
module, so a modality or class list is set once, on the data.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LightningCLI

import fimvision.data.datamodule  # noqa: F401  (registers the data modules for short class names)
import fimvision.data.domains  # noqa: F401  (registers DomainDataModule)
import fimvision.models.adaptation  # noqa: F401  (registers SourceModel, FewShotFinetune, SHOT, NRC, AaD)
import fimvision.models.classifier  # noqa: F401  (registers the models for short class names)
import fimvision.models.ssl  # noqa: F401  (registers SimCLR, MoCo, BYOL, DINO and SSLDataModule)
from fimvision.errors import CheckpointError, FimvisionError
from fimvision.prediction import PredictionWriter

# Model arguments that must match between a checkpoint and the data it is used on.
CHECKPOINT_CONTRACT = ("num_classes", "in_chans", "class_names", "img_size")
# Model arguments that only say where starting weights come from: a full checkpoint (--ckpt_path)
# supersedes them, so they are not loaded again (no hub download, no need to keep the files).
STARTING_WEIGHTS = {"pretrained": False, "weights": None, "backbone_checkpoint": None}


class FimvisionCLI(LightningCLI):
    """LightningCLI with the data-to-model links and checkpoint checks fimvision needs."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.classes", "model.init_args.class_names", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.init_args.in_chans", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.init_args.img_size", apply_on="instantiate")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")

    @property
    def active_config(self):
        """The config of the subcommand being run (the whole config when run=False)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def _checkpoint_hparams(self) -> dict:
        path = self.active_config.get("ckpt_path")
        if not path or not Path(path).is_file():
            return {}
        try:
            return torch.load(path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
        except Exception as err:
            raise CheckpointError(f"cannot read checkpoint {path} ({type(err).__name__}: {err}).") from err

    def before_instantiate_classes(self) -> None:
        saved = self._checkpoint_hparams()
        model = self.active_config.model.get("init_args", {})
        for key, value in STARTING_WEIGHTS.items():
            if saved and key in model:
                model[key] = value
        # A checkpoint fixes the class order: evaluate and predict in it, even on data that lacks a class
        # or has no labels at all.
        names = saved.get("class_names")
        data = self.active_config.data
        if names and "classes" in data.get("init_args", {}) and data.init_args.classes is None:
            data.init_args.classes = list(names)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        saved = self._checkpoint_hparams()
        if not saved:
            return
        now = dict(self.model.hparams)
        wrong = [f"{k}: checkpoint {saved[k]!r}, now {now[k]!r}" for k in CHECKPOINT_CONTRACT
                 if k in saved and k in now and saved[k] != now[k]]
        if wrong:
            raise CheckpointError(
                f"checkpoint {self.active_config.ckpt_path} does not fit this data: " + "; ".join(wrong)
                + ". Use the modality, image_size and classes the model was trained with "
                "(e.g. --data.init_args.modality=mono), or another checkpoint.")


def build_cli(args: list[str] | None = None, *, run: bool = True) -> FimvisionCLI:
    """The `fimvision` CLI on ``args`` (default: the command line); ``run=False`` (no subcommand) only builds
    the trainer, model and data module, for programs that drive them (the demo, benchmarks)."""
    argv = sys.argv
    if args is not None:  # explicit args: the caller's own command line is not ours to parse or warn about
        sys.argv = argv[:1]
    try:
        return FimvisionCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                            subclass_mode_data=True, save_config_kwargs={"overwrite": True}, args=args, run=run)
    finally:
        sys.argv = argv


def main(args: list[str] | None = None) -> FimvisionCLI:
    """Run the CLI on ``args`` (default: the command line) and return it, with its trainer and model."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger("fimvision").setLevel(logging.INFO)
    try:
        return build_cli(args)
    except Exception as err:
        # jsonargparse wraps errors raised while instantiating classes: find the user error inside.
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, FimvisionError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
