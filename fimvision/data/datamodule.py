"""ParticleDataModule: a dataset folder as train/val/test/predict loaders."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch

from fimvision.data.base import FimvisionDataModule
from fimvision.data.dataset import ColorNorm, Luminance, Modality, ParticleDataset, decode_images
from fimvision.data.features import CROP_SIZE, feature_matrix, resolve_features
from fimvision.data.manifest import Manifest, load_manifest
from fimvision.data.splits import SplitStrategy, split_manifest
from fimvision.data.transforms import eval_transform, train_transform
from fimvision.errors import ConfigError

log = logging.getLogger(__name__)


class ParticleDataModule(FimvisionDataModule):
    """Particle images from a dataset folder (``manifest.csv`` + images).

    Args:
        root: dataset folder holding ``manifest.csv``.
        modality: ``color`` (RGB) or ``mono`` (luminance of the same colour image, or native grey).
        luminance: luminance weights for mono: ``bt601`` (0.299, 0.587, 0.114) or ``bt709``.
        mono_channels: feed mono as 1 channel, or replicated to 3 (for models that want RGB).
        image_size: side of the square model input in pixels.
        keep_scale: pad or centre-crop to ``image_size`` without resizing, so absolute size stays a cue.
        color_norm: ``background`` divides each crop, channel by channel, by its background colour (the
            border estimate) so instrument and antibody tint go and the particle's colour contrast stays;
            ``none`` keeps the camera's colours.
        features: numeric manifest columns fed beside the image (e.g. ``[esd_um, aspect_ratio]``), or
            ``instrument`` for every numeric instrument column the curation wrote; the model standardises
            them on the training split. Missing values are allowed (they become the training mean).
        size_feature: add ``crop_px``, the log of the crop's longer side, as a feature: absolute size
            stays a cue when crops are resized to ``image_size``.
        classes: class order; labels outside it are an error. Default: the sorted labels found.
        split: ``sample`` (grouped by vial), ``group`` (leave-one-group-out), ``kfold``, ``random``
            (stratified, particle by particle) or ``predefined`` (the manifest's ``split`` column).
        fold: held-out group index for ``group``, fold index for ``kfold``.
        n_folds: number of folds for ``kfold``.
        val_fraction: share of (remaining) particles for validation.
        test_fraction: share of particles for test (``random``, ``sample``).
        seed: seed of the split.
        batch_size: batch size of every loader.
        num_workers: loader worker processes.
        augment: apply training augmentation (flips, 90° rotations, mild brightness/contrast).
        augment_strength: brightness and contrast jitter limit of the training augmentation (0: flips only).
        tint: colour-temperature/tint augmentation: each channel's gain drawn in [1 - tint, 1 + tint] (0: off).
        sampler: ``shuffle`` (every training particle once an epoch) or ``balanced`` (draws with
            replacement, each class equally often: for imbalanced classes).
        label_fraction: share of the training split's labelled particles to train on (stratified by class,
            drawn with ``seed``; for label-efficiency studies). Validation and test are unchanged.
        allow_outside_paths: accept manifest image paths that are absolute or leave the dataset folder
            (``../``); off by default, so a dataset folder is self-contained and can be moved or shared.
    """

    # Whether a manifest without any label is an error (self-supervised subclasses accept one).
    require_labels: bool = True

    def __init__(
        self,
        root: str = "datasets/synthetic",
        modality: Modality = "color",
        luminance: Luminance = "bt601",
        mono_channels: Literal[1, 3] = 1,
        image_size: int = 64,
        keep_scale: bool = False,
        color_norm: ColorNorm = "none",
        features: list[str] | Literal["instrument"] | None = None,
        size_feature: bool = False,
        classes: list[str] | None = None,
        split: SplitStrategy = "sample",
        fold: int = 0,
        n_folds: int = 5,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        augment: bool = True,
        augment_strength: float = 0.1,
        tint: float = 0.0,
        sampler: Literal["shuffle", "balanced"] = "shuffle",
        label_fraction: float = 1.0,
        allow_outside_paths: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # the one copy of the settings: self.hparams
        if not 0 < label_fraction <= 1:
            raise ConfigError(f"label_fraction must be in (0, 1], got {label_fraction}.")
        # Read (not decode) the manifest now: the model's number of classes is linked to it.
        self.manifest: Manifest = load_manifest(root, classes=classes,
                                               require_labels=self.require_labels and classes is None,
                                               allow_outside_paths=allow_outside_paths)
        self.feature_names: list[str] = resolve_features(self.manifest, features) + [CROP_SIZE] * size_feature
        self._images: np.ndarray | None = None
        self._features: np.ndarray | None = None
        self.datasets: dict[str, ParticleDataset] = {}

    @property
    def image_size(self) -> int:
        """Side of the model input (linked to the model's img_size)."""
        return self.hparams.image_size

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        """Channels the model receives."""
        return 3 if self.hparams.modality == "color" else self.hparams.mono_channels

    def _decode(self) -> np.ndarray:
        if self._images is None:
            sizes = np.zeros(len(self.manifest.frame), dtype=np.float32)
            h = self.hparams
            self._images = decode_images(self.manifest, range(len(self.manifest.frame)), image_size=h.image_size,
                                         keep_scale=h.keep_scale, modality=h.modality, luminance_formula=h.luminance,
                                         color_norm=h.color_norm, sizes=sizes)
            if self.feature_names and self._features is None:
                self._features = feature_matrix(self.manifest, self.feature_names, crop_sizes=sizes)
        return self._images

    def features(self) -> np.ndarray:
        """The raw features of every manifest row (N x F, NaN where missing). The images are decoded only when
        ``crop_px`` needs their sizes (the features-only baseline does without them)."""
        if self._features is None:
            if CROP_SIZE in self.feature_names:
                self._decode()
            else:
                self._features = feature_matrix(self.manifest, self.feature_names)
        return self._features

    def train_features(self) -> np.ndarray:
        """The raw features of the training split (N x F): what the model standardises on."""
        return self.features()[self.datasets["train"].positions]

    def _dataset(self, rows: np.ndarray, train: bool) -> ParticleDataset:
        mono = self.hparams.modality == "mono"
        if train and self.hparams.augment:
            s = self.hparams.augment_strength
            transform = train_transform(self.in_chans, mono, brightness=s, contrast=s, tint=self.hparams.tint)
        else:
            transform = eval_transform(self.in_chans, mono)
        targets = np.asarray(self.manifest.targets())[rows]
        images = self._decode()
        return ParticleDataset(images, rows, targets, rows, transform, in_chans=self.in_chans,
                               features=self._features)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            self.datasets["predict"] = self._dataset(np.arange(len(self.manifest.frame)), train=False)
        elif "train" not in self.datasets:
            self.build_datasets(self.split_rows())

    def split_rows(self) -> np.ndarray:
        """The split of each manifest row: ``train``, ``val``, ``test``, or "" for an unlabelled row."""
        h = self.hparams
        return split_manifest(self.manifest, h.split, fold=h.fold, n_folds=h.n_folds, val_fraction=h.val_fraction,
                              test_fraction=h.test_fraction, seed=h.seed, label_fraction=h.label_fraction)

    def build_datasets(self, split_of: np.ndarray) -> None:
        """The train, val and test datasets from the rows' splits."""
        if (split_of == "").any():
            log.info("%d of %d particles have no label (unclassified) and are left out of training and "
                     "evaluation", (split_of == "").sum(), len(split_of))
        for name in ("train", "val", "test"):
            self.datasets[name] = self._dataset(np.flatnonzero(split_of == name), train=name == "train")

    def split_targets(self, split: str) -> np.ndarray:
        return self.datasets[split].targets

    def _loader(self, name: str) -> torch.utils.data.DataLoader:
        h = self.hparams
        return self.evaluation_loader(self.datasets[name], batch_size=h.batch_size, num_workers=h.num_workers)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        data = self.datasets["train"]
        sampler = None
        if self.hparams.sampler == "balanced":
            # Each class drawn equally often: weight 1 / (particles of its class).
            counts = np.bincount(data.targets, minlength=self.num_classes)
            sampler = torch.utils.data.WeightedRandomSampler(
                torch.as_tensor(1.0 / counts[data.targets], dtype=torch.double), num_samples=len(data),
                replacement=True)
        h = self.hparams
        return self.training_loader(data, batch_size=h.batch_size, num_workers=h.num_workers, sampler=sampler,
                                    drop_last=len(data) > h.batch_size)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("predict")
