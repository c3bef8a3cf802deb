"""SSLDataModule: particles as multi-view batches for self-supervised pretraining.

Pretraining needs no labels: a manifest without a ``label`` column (or with empty labels) works.
Labels, where they exist, are used only to monitor the representation with a kNN classifier:

- ``train`` (pretraining): every unlabelled particle (unless its ``split`` column says val or test,
  or it belongs to a test sample or group: a held-out run stays unseen) plus the labelled particles
  of the training split, as lists of augmented views; labels unused.
- ``val`` loaders: ``[knn_bank, knn_query]``: the labelled training particles and the validation
  particles, un-augmented. With no labels, none.
- ``test``: the labelled test split, un-augmented, as in :class:`ParticleDataModule`.

Labelled particles are split with the same strategies as supervised training (by default grouped by
vial), so the kNN score measures the same generalisation a supervised model would be judged on.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from fimvision.data.datamodule import ParticleDataModule
from fimvision.data.dataset import ParticleDataset
from fimvision.data.transforms import MultiViewTransform

log = logging.getLogger(__name__)


class SSLDataModule(ParticleDataModule):
    """Particle images as augmented views for self-supervised pretraining, labels only for monitoring.

    Args:
        batch_size: batch size (particles; each brings ``n_global + n_local`` views).
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
        **kwargs: the arguments of :class:`ParticleDataModule` (root, modality, image_size, split, ...; the
            ``label`` column may be absent or empty; validation particles stay out of pretraining and
            ``augment`` is unused: views are always augmented).
    """

    require_labels = False
    serves = ("views",)

    def __init__(
        self,
        batch_size: int = 128,
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
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.knn_bank_max = knn_bank_max
        self.views = MultiViewTransform(
            self.in_chans, self.image_size, self.hparams.modality == "mono", n_global=n_global, n_local=n_local, local_size=local_size,
            local_scale=tuple(local_crop_scale), scale=tuple(crop_scale), brightness=brightness, contrast=contrast,
            saturation=saturation, hue=hue, color_jitter_p=color_jitter_p, gray_p=gray_p, blur_p=blur_p,
            noise_p=noise_p, noise_std=noise_std)

    def build_datasets(self, split_of: np.ndarray) -> None:
        unlabelled = self.unlabelled_rows(split_of)
        bank = np.flatnonzero(split_of == "train")
        if len(bank) > self.knn_bank_max:
            bank = np.sort(np.random.default_rng(self.hparams.seed).choice(bank, self.knn_bank_max, replace=False))
        pretrain = np.sort(np.concatenate([unlabelled, np.flatnonzero(split_of == "train")]))
        self.datasets["train"] = ParticleDataset(self._decode(), pretrain, np.full(len(pretrain), -1), pretrain,
                                                 self.views, in_chans=self.in_chans)
        self.datasets["knn_bank"] = self._dataset(bank, train=False)
        self.datasets["val"] = self._dataset(np.flatnonzero(split_of == "val"), train=False)
        self.datasets["test"] = self._dataset(np.flatnonzero(split_of == "test"), train=False)
        log.info("self-supervised pretraining on %d particles (%d unlabelled); kNN monitor: bank %d, "
                 "validation %d labelled particles", len(pretrain), len(unlabelled), len(bank),
                 len(self.datasets["val"]))

    def unlabelled_rows(self, split_of: np.ndarray) -> np.ndarray:
        """The unlabelled rows that unsupervised or semi-supervised training may use: every unlabelled
        particle except those of a test sample or test group (a held-out run stays unseen, images
        included) and those whose ``split`` column sets them aside for validation or test."""
        frame = self.manifest.frame
        usable = split_of == ""
        if "split" in frame.columns:
            usable &= ~frame["split"].isin(["val", "test"]).to_numpy()
        if self.hparams.split != "random":  # grouped splits: the test set's samples and groups are held out whole
            for column in ("sample", "group"):
                if column in frame.columns:
                    held_out = set(frame[column].to_numpy()[split_of == "test"])
                    usable &= ~frame[column].isin(held_out).to_numpy()
        return np.flatnonzero(usable)

    def val_dataloader(self) -> list[torch.utils.data.DataLoader]:
        """``[knn_bank, knn_query]``, or ``[]`` without labelled particles."""
        if not (len(self.datasets["val"]) and len(self.datasets["knn_bank"])):
            return []
        return [self._loader("knn_bank"), self._loader("val")]
