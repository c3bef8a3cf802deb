"""SSLDataModule: particles as multi-view batches for self-supervised pretraining.

Pretraining needs no labels: a manifest without a ``label`` column (or with empty labels) works.
Labels, where they exist, are used only to monitor the representation with a kNN classifier:

- ``train`` (pretraining): every unlabelled particle (unless its ``split`` column says val or test)
  plus the labelled particles of the training split, as lists of augmented views; labels unused.
- ``val`` loaders: ``[knn_bank, knn_query]``: the labelled training particles and the validation
  particles, un-augmented. With labelled validation particles but no labelled training particles,
  only ``[knn_query]`` (the model then scores it leave-one-out). With no labels at all, none.
- ``test``: the labelled test split, un-augmented, as in :class:`ParticleDataModule`.

Labelled particles are split with the same strategies as supervised training (by default grouped by
vial), so the kNN score measures the same generalisation a supervised model would be judged on.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch

from fimvision.data.datamodule import ParticleDataModule
from fimvision.data.dataset import Luminance, Modality, ParticleDataset
from fimvision.data.splits import SplitStrategy, assign_splits
from fimvision.data.transforms import MultiViewTransform

log = logging.getLogger(__name__)


class SSLDataModule(ParticleDataModule):
    """Particle images as augmented views for self-supervised pretraining, labels only for monitoring.

    Args:
        root: dataset folder holding ``manifest.csv`` (the ``label`` column may be absent or empty).
        modality: ``color`` or ``mono`` (see :class:`ParticleDataModule`).
        luminance: luminance weights for mono: ``bt601`` or ``bt709``.
        mono_channels: feed mono as 1 channel, or replicated to 3.
        image_size: side of the square canvas and of the global views, in pixels.
        keep_scale: pad or centre-crop to ``image_size`` without resizing.
        classes: class order of the monitoring labels. Default: the sorted labels found (none is fine).
        split: how labelled particles are split (``sample``, ``group``, ``kfold``, ``random``,
            ``predefined``); validation particles are kept out of pretraining.
        fold: held-out group index for ``group``, fold index for ``kfold``.
        n_folds: number of folds for ``kfold``.
        val_fraction: share of labelled particles for kNN validation.
        test_fraction: share of labelled particles held out for test.
        seed: seed of the split and of the kNN bank subsample.
        batch_size: batch size (particles; each brings ``n_global + n_local`` views).
        num_workers: loader worker processes.
        augment: unused by pretraining (views are always augmented); kept for the shared schema.
        n_global: global views per particle (2 for SimCLR, MoCo, BYOL; DINO takes more).
        n_local: small local views per particle (DINO multi-crop); 0 for none.
        local_size: side of the local views (default ``image_size // 2``).
        crop_scale: area range of the random resized crop for global views (of the padded canvas).
        local_crop_scale: area range for local views.
        brightness: brightness jitter strength.
        contrast: contrast jitter strength.
        saturation: saturation jitter strength (0: off, the default for colour studies).
        hue: hue jitter strength (0: off, the default for colour studies).
        color_jitter_p: probability of applying the jitter.
        gray_p: probability of a random greyscale view (0: off, the default for colour studies).
        blur_p: probability of Gaussian blur.
        noise_p: probability of Gaussian noise.
        noise_std: largest noise std (0-1 intensity scale).
        knn_bank_max: most labelled training particles in the kNN bank (a fixed random subset).
        allow_outside_paths: accept manifest image paths outside the dataset folder (see ParticleDataModule).
    """

    require_labels = False

    def __init__(
        self,
        root: str = "datasets/synthetic",
        modality: Modality = "color",
        luminance: Luminance = "bt601",
        mono_channels: Literal[1, 3] = 1,
        image_size: int = 64,
        keep_scale: bool = False,
        classes: list[str] | None = None,
        split: SplitStrategy = "sample",
        fold: int = 0,
        n_folds: int = 5,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        augment: bool = True,
        n_global: int = 2,
        n_local: int = 0,
        local_size: int | None = None,
        crop_scale: tuple[float, float] = (0.35, 1.0),
        local_crop_scale: tuple[float, float] = (0.15, 0.4),
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.0,
        hue: float = 0.0,
        color_jitter_p: float = 0.8,
        gray_p: float = 0.0,
        blur_p: float = 0.3,
        noise_p: float = 0.3,
        noise_std: float = 0.03,
        knn_bank_max: int = 10000,
        allow_outside_paths: bool = False,
    ) -> None:
        super().__init__(root=root, modality=modality, luminance=luminance, mono_channels=mono_channels,
                         image_size=image_size, keep_scale=keep_scale, classes=classes, split=split, fold=fold,
                         n_folds=n_folds, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                         batch_size=batch_size, num_workers=num_workers, augment=augment,
                         allow_outside_paths=allow_outside_paths)
        self.knn_bank_max = knn_bank_max
        mono = modality == "mono"
        self.views = MultiViewTransform(
            self.in_chans, image_size, mono, n_global=n_global, n_local=n_local, local_size=local_size,
            local_scale=tuple(local_crop_scale), scale=tuple(crop_scale), brightness=brightness, contrast=contrast,
            saturation=saturation, hue=hue, color_jitter_p=color_jitter_p, gray_p=gray_p, blur_p=blur_p,
            noise_p=noise_p, noise_std=noise_std)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            self.datasets["predict"] = self._dataset(np.arange(len(self.manifest.frame)), train=False)
            return
        if "train" in self.datasets:
            return
        frame = self.manifest.frame
        is_labelled = self.manifest.labelled.to_numpy()
        labelled, unlabelled = np.flatnonzero(is_labelled), np.flatnonzero(~is_labelled)
        if "split" in frame.columns:  # unlabelled particles set aside for evaluation stay out of pretraining
            unlabelled = unlabelled[~frame["split"].iloc[unlabelled].isin(["val", "test"]).to_numpy()]
        split_of = np.full(len(frame), "", dtype=object)
        if len(labelled):
            split_of[labelled] = assign_splits(frame.iloc[labelled], self.split, fold=self.fold,
                                               n_folds=self.n_folds, val_fraction=self.val_fraction,
                                               test_fraction=self.test_fraction, seed=self.seed)
        bank = np.flatnonzero(split_of == "train")
        if len(bank) > self.knn_bank_max:
            bank = np.sort(np.random.default_rng(self.seed).choice(bank, self.knn_bank_max, replace=False))
        pretrain = np.sort(np.concatenate([unlabelled, np.flatnonzero(split_of == "train")]))
        self.datasets["train"] = ParticleDataset(self._decode(), pretrain, np.full(len(pretrain), -1), pretrain,
                                                 self.views, channels_out=self.in_chans)
        self.datasets["knn_bank"] = self._dataset(bank, train=False)
        self.datasets["val"] = self._dataset(np.flatnonzero(split_of == "val"), train=False)
        self.datasets["test"] = self._dataset(np.flatnonzero(split_of == "test"), train=False)
        log.info("self-supervised pretraining on %d particles (%d unlabelled); kNN monitor: bank %d, "
                 "validation %d labelled particles", len(pretrain), len(unlabelled), len(bank),
                 len(self.datasets["val"]))

    def class_counts(self, split: str = "knn_bank") -> torch.Tensor:
        """Labelled particles per class in ``split`` (default: the kNN bank)."""
        return super().class_counts(split)

    def val_dataloader(self) -> list[torch.utils.data.DataLoader]:
        """``[knn_bank, knn_query]``, ``[knn_query]`` (leave-one-out) or ``[]`` (no labels)."""
        if not len(self.datasets["val"]):
            return []
        names = ["knn_bank", "val"] if len(self.datasets["knn_bank"]) else ["val"]
        return [self._loader(name) for name in names]
