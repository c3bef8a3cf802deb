"""FimvisionDataModule: the base of every data module.

The data-model contract: a data module lists what its training loader can serve (``serves``:
labelled particles, multi-view batches, or a domain-adaptation source, few-shot set or unlabelled
target); a model says what it trains on (``train_on``); the CLI checks the two and calls
:meth:`~FimvisionDataModule.serve` before training.

Training loaders whose randomness a checkpoint carries, so a resumed run sees what an uninterrupted
one would: the training loader comes from :meth:`~FimvisionDataModule.training_loader`, whose shuffling
(and sampling) draw from a generator the data
module owns, and the augmentation pipelines keep their own generators. Both states go into every
checkpoint (Lightning saves a data module's ``state_dict``) and come back before the loader is
built on resume. Worker processes are re-seeded from the loader's generator each epoch, so this
holds with ``num_workers > 0`` too.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.distributed import DistributedSamplerWrapper

from fimvision.errors import ConfigError

# What a model trains on: labelled particles, multi-view batches (self-supervised), or, in domain
# adaptation, the source domain, the few-shot target set or the unlabelled target part.
TrainOn = Literal["labelled", "views", "source", "fewshot", "target"]


class FimvisionDataModule(pl.LightningDataModule):
    """Base of fimvision's data modules: the data-model contract and resumable training loaders."""

    #: What the training loader can serve (a model's ``train_on`` must be one of them).
    serves: tuple[TrainOn, ...] = ("labelled",)
    #: Numeric features served beside the image (``features`` in each item); none by default.
    feature_names: list[str] = []

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def serve(self, train_on: TrainOn) -> None:
        """Serve training batches of kind ``train_on`` (the CLI calls this with the model's ``train_on``)."""
        if train_on not in self.serves:
            raise ConfigError(f"{type(self).__name__} serves {' or '.join(self.serves)} batches, but the model trains "
                              f"on {train_on} batches: {SUGGESTED_DATA.get(train_on, 'pick a matching data module')}.")

    def split_targets(self, split: str) -> np.ndarray:
        """Class index of each image of ``split`` (-1: unknown class)."""
        raise NotImplementedError

    def class_counts(self, split: str = "train") -> torch.Tensor:
        """Images per class in ``split`` (unknown-class images, target -1, are not counted)."""
        targets = np.asarray(self.split_targets(split))
        return torch.as_tensor(np.bincount(targets[targets >= 0], minlength=self.num_classes))

    _train_generator: torch.Generator | None = None
    _train_transform: Any = None
    _pending_augmentation: list[dict] | None = None

    def training_seed(self) -> int:
        """Seed of the training loader's generator: by default drawn from torch's global generator, so
        ``seed_everything`` fixes it. Override to key it to a data-module seed instead."""
        return int(torch.randint(2**62, ()).item())

    def training_generator(self) -> torch.Generator:
        if self._train_generator is None:
            self._train_generator = torch.Generator().manual_seed(self.training_seed())
        return self._train_generator

    def training_loader(self, dataset, *, batch_size: int, num_workers: int, sampler=None,
                        drop_last: bool = False) -> torch.utils.data.DataLoader:
        """A shuffled (or ``sampler``-driven) training loader drawing from the data module's generator."""
        pipelines = getattr(dataset.transform, "pipelines", lambda: [])()
        if self._pending_augmentation is not None and len(self._pending_augmentation) == len(pipelines):
            for pipeline, state in zip(pipelines, self._pending_augmentation, strict=True):
                pipeline.rng_state = state
        self._pending_augmentation = None
        self._train_transform = dataset.transform
        generator = self.training_generator()
        if sampler is not None:
            sampler.generator = generator
        # Workers are not kept between epochs: each epoch's workers are seeded from the generator, which a
        # checkpoint restores (kept workers would carry on with state no checkpoint holds).
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                                           num_workers=num_workers, persistent_workers=False, drop_last=drop_last,
                                           generator=generator)

    def evaluation_loader(self, dataset, *, batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
        """An in-order loader for validation, test and prediction. On several processes each takes a disjoint
        share and no image is repeated to even them out, so every image counts once in the metrics."""
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)

    def state_dict(self) -> dict[str, Any]:  # saved in every checkpoint by Lightning
        pipelines = getattr(self._train_transform, "pipelines", lambda: [])()
        return {"train_generator": self.training_generator().get_state(),
                "augmentation": [p.rng_state for p in pipelines]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_generator" in state_dict:
            self.training_generator().set_state(state_dict["train_generator"])
        self._pending_augmentation = state_dict.get("augmentation")  # applied when the loader is built


SUGGESTED_DATA = {
    "labelled": "use ParticleDataModule (class_path: ParticleDataModule)",
    "views": "self-supervised methods need multi-view batches: use SSLDataModule (class_path: SSLDataModule)",
    "source": "use DomainDataModule (class_path: DomainDataModule)",
    "fewshot": "use DomainDataModule (class_path: DomainDataModule)",
    "target": "use DomainDataModule (class_path: DomainDataModule)",
}


def fewshot_sampler(dataset, draws: int, generator: torch.Generator, num_replicas: int | None = None,
                    rank: int | None = None) -> DistributedSamplerWrapper:
    """``draws`` draws with replacement for each process. Every process draws the same sequence from
    ``generator`` and takes its own share, so no two processes train on the same draw and an epoch has
    ``draws / batch size`` batches on any number of devices. (A DistributedSampler, so Lightning does not
    split it again.)"""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = num_replicas or (torch.distributed.get_world_size() if distributed else 1)
    rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
    every = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=draws * world, generator=generator)
    return DistributedSamplerWrapper(every, num_replicas=world, rank=rank, shuffle=False)
