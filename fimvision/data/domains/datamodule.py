"""DomainDataModule: a source and a target domain under the adaptation protocol, serving what the model
trains on (the source, the few-shot set or the unlabelled target part; see fimvision/data/base.py).

Scenarios (a parameter of the target data, for any kind of root): ``standard``; ``label_shift``: the
target keeps ``imbalance_ratio ** (k / (C-1))`` of class k, so class 0 is the most and the last class
the least frequent (``source_imbalance`` imbalances the source the reverse way, as in RSUT);
``partial``: the target holds only ``target_classes`` (default: the first half); ``ood``: the source
loses ``unseen_classes`` (default: the last third), which stay in the target as unknown images
(target ``-1``): distractors in the unlabelled pool, never in the few-shot set, left out of accuracy.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch

from fimvision.data.base import FimvisionDataModule, TrainOn, fewshot_sampler
from fimvision.data.dataset import ParticleDataset
from fimvision.data.domains.protocol import rng_for, scenario_labels, split_target, stratified_split
from fimvision.data.domains.readers import load_domain, native_channels
from fimvision.data.transforms import Pipeline, eval_transform, train_transform
from fimvision.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Scenario = Literal["standard", "label_shift", "partial", "ood"]
Augment = Literal["particle", "shift", "none"]


def shift_transform(in_chans: int) -> Pipeline:
    """Small translations and scalings: augmentation for digits and objects, which have an orientation."""
    import albumentations as A

    return Pipeline([A.Affine(translate_percent=(-0.08, 0.08), scale=(0.9, 1.1), p=1.0)], in_chans)


def make_train_transform(kind: Augment, in_chans: int) -> Pipeline:
    if kind == "particle":
        return train_transform(in_chans)
    if kind == "shift":
        return shift_transform(in_chans)
    return eval_transform(in_chans)


class DomainDataModule(FimvisionDataModule):
    """A source and a target domain under the few-shot source-free adaptation protocol.

    The loaders follow ``train_on`` (the CLI sets it to what the model trains on; see :meth:`serve`):
    ``source``: source train (90 %) / source val / target test; ``fewshot``: ``fewshot_batches`` batches
    of ``fewshot_batch_size`` images drawn with replacement from the ``n_shot`` labelled target images per
    class / one target val image per class / target test; ``target``: the unlabelled 80 % target part
    (labels hidden) / the same part with eval transforms / target test. Batches are ``{"image", "target", "index"}`` with ``index`` the image's position in
    its domain.

    Args:
        root: a ``.mat`` file, a dataset folder with ``manifest.csv`` or a folder of domain folders.
        source: source domain (folder name, ``source``/``MNIST`` for .mat, ``group!=ab8`` for a manifest).
        target: target domain, the same way.
        image_size: side of the square model input in pixels.
        channels: channels the model receives (``in_chans``); default 1 for grey sets and all-mono
            manifests, else 3. (Not named in_chans: the model's linked in_chans would clash in the logs.)
        modality: manifest domains without an ``@color``/``@mono`` suffix use this modality.
        classes: class order (default: the source classes, sorted); must list every source class, except
            under ``ood``, where the classes left out are the unseen ones.
        scenario: ``standard``, ``label_shift``, ``partial`` or ``ood`` (see the module docstring).
        imbalance_ratio: label shift: the rarest class keeps this share of its images.
        source_imbalance: label shift: also imbalance the source, the reverse way.
        target_classes: partial: the classes the target keeps (default: the first half).
        unseen_classes: ood: classes the source never sees (default: the last third).
        n_shot: labelled target images per class for few-shot training.
        seed: seed of the target split, the few-shot draw and the source split.
        test_fraction: share of each target class held out for the test.
        source_val_fraction: share of each source class for source validation.
        batch_size: batch size of source, unlabelled and evaluation loaders.
        num_workers: loader worker processes.
        augment: training augmentation: ``particle`` (flips, 90° rotations, brightness), ``shift``
            (small translations/scalings, for digits and objects) or ``none``.
        train_on: what the training loader serves: ``source``, ``fewshot`` or ``target``; by default set by
            the CLI from the model (:meth:`serve`).
        fewshot_batch_size: few-shot batch size (images drawn with replacement).
        fewshot_batches: few-shot batches an epoch, i.e. optimizer steps between validations.
    """

    def __init__(
        self,
        root: str = "datasets/domain-adaptation/MNIST_vs_USPS.mat",
        source: str = "MNIST",
        target: str = "USPS",
        image_size: int = 32,
        channels: int | None = None,
        modality: Literal["color", "mono"] = "color",
        classes: list[str] | None = None,
        scenario: Scenario = "standard",
        imbalance_ratio: float = 0.1,
        source_imbalance: bool = False,
        target_classes: list[str] | None = None,
        unseen_classes: list[str] | None = None,
        n_shot: int = 3,
        seed: int = 0,
        test_fraction: float = 0.2,
        source_val_fraction: float = 0.1,
        batch_size: int = 64,
        num_workers: int = 0,
        augment: Augment = "shift",
        train_on: TrainOn | None = None,
        fewshot_batch_size: int = 32,
        fewshot_batches: int = 50,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if n_shot < 1:
            raise DataError(f"n_shot must be >= 1, got {n_shot}.")
        if not 0 < test_fraction < 1:
            raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}.")
        self._in_chans = channels or native_channels(root, [source, target], modality)
        self.train_on = train_on
        self.source = load_domain(root, source, image_size, self._in_chans, modality)
        self.target = load_domain(root, target, image_size, self._in_chans, modality)
        labels = scenario_labels(self.source.class_names(), self.target.class_names(), classes, self.hparams)
        self._classes, self.source_labels_all = labels.classes, labels.source_all
        self.source_labels = self.source_labels_all[labels.source_keep]
        # The scenario's target is a domain of its own: positions below index into these arrays.
        self.target_images = self.target.images[labels.target_keep]
        self.target_labels = labels.target_all[labels.target_keep]
        self.split = split_target(self.target_labels, target, seed, n_shot, test_fraction)
        rest, val = stratified_split(self.source_labels, source_val_fraction, rng_for(seed, "source-split", source))
        self.source_train, self.source_val = labels.source_keep[rest], labels.source_keep[val]
        log.info("domains %s -> %s (%s): source %d train / %d val; target pool %d, test %d, %d-shot %d, val %d",
                 source, target, scenario, len(rest), len(val), len(self.split.pool), len(self.split.test),
                 n_shot, len(self.split.shots), len(self.split.val))

    # -- the interface the CLI links into models
    @property
    def classes(self) -> list[str]:
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    @property
    def in_chans(self) -> int:
        return self._in_chans

    @property
    def image_size(self) -> int:
        return self.hparams.image_size

    # -- datasets
    def _dataset(self, where: Literal["source", "target"], positions: np.ndarray, train: bool,
                 hide_labels: bool = False) -> ParticleDataset:
        c = self._in_chans
        transform = make_train_transform(self.hparams.augment, c) if train else eval_transform(c)
        if where == "source":
            images, labels, index = self.source.images, self.source_labels_all, np.arange(len(self.source))
        else:
            images, labels, index = self.target_images, self.target_labels, np.arange(len(self.target_labels))
        targets = np.full(len(positions), -1) if hide_labels else labels[positions]
        return ParticleDataset(images, positions, targets, index[positions], transform, in_chans=c)

    serves = ("source", "fewshot", "target")

    def serve(self, train_on: str) -> None:
        super().serve(train_on)
        self.train_on = train_on

    def _mode(self) -> str:
        if self.train_on is None:
            raise ConfigError("DomainDataModule.train_on is not set: say what the loaders serve (train_on: source, "
                              "fewshot or target), or let the CLI set it from the model (data module serve()).")
        return self.train_on

    def split_targets(self, split: str) -> np.ndarray:
        return {"source": self.source_labels, "pool": self.target_labels[self.split.pool],
                "test": self.target_labels[self.split.test]}[split]

    def _loader(self, dataset) -> torch.utils.data.DataLoader:
        return self.evaluation_loader(dataset, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)

    def training_seed(self) -> int:
        return int(self.hparams.seed)  # the few-shot draws depend on the seed alone, as the protocol says

    def fewshot_dataset(self, train: bool = True) -> ParticleDataset:
        """The ``n_shot`` labelled training images per class (train transforms when ``train``)."""
        return self._dataset("target", self.split.shots, train=train)

    def pool_dataset(self, train: bool = False) -> ParticleDataset:
        """The unlabelled 80 % target part (targets -1; ``index`` = position in the target domain)."""
        return self._dataset("target", self.split.pool, train=train, hide_labels=True)

    def pool_loader(self) -> torch.utils.data.DataLoader:
        """The unlabelled 80 % target part in order, with evaluation transforms (pseudo-labels, banks)."""
        return self._loader(self.pool_dataset(train=False))

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        mode = self._mode()
        if mode in ("source", "target"):
            data = (self._dataset("source", self.source_train, train=True) if mode == "source"
                    else self.pool_dataset(train=True))
            h = self.hparams
            return self.training_loader(data, batch_size=h.batch_size, num_workers=h.num_workers,
                                        drop_last=len(data) > h.batch_size)
        batch, batches = self.hparams.fewshot_batch_size, self.hparams.fewshot_batches
        dataset = self.fewshot_dataset(train=True)
        sampler = fewshot_sampler(dataset, batch * batches, self.training_generator())
        return self.training_loader(dataset, batch_size=batch, num_workers=self.hparams.num_workers, sampler=sampler)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        mode = self._mode()
        if mode == "source":
            return self._loader(self._dataset("source", self.source_val, train=False))
        if mode == "target":
            return self.pool_loader()
        return self._loader(self._dataset("target", self.split.val, train=False))

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self._dataset("target", self.split.test, train=False))

