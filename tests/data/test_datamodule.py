"""ParticleDataModule: modality, channels, unlabelled rows and the loaders' batches."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch

from fimvision.data.datamodule import ParticleDataModule


def batch(root, **kwargs):
    dm = ParticleDataModule(root=str(root), image_size=32, batch_size=4, **kwargs)
    dm.setup("fit")
    return dm, next(iter(dm.train_dataloader()))


def test_color_gives_three_channels_and_mono_one(synthetic_root):
    dm, b = batch(synthetic_root)
    assert dm.in_chans == 3 and b["image"].shape == (4, 3, 32, 32)
    dm, b = batch(synthetic_root, modality="mono")
    assert dm.in_chans == 1 and b["image"].shape == (4, 1, 32, 32)
    assert b["target"].dtype == torch.int64 and set(b["target"].tolist()) <= {0, 1}


def test_mono_replicated_to_three_identical_channels(synthetic_root):
    dm, b = batch(synthetic_root, modality="mono", mono_channels=3, augment=False)
    assert dm.in_chans == 3 and b["image"].shape[1] == 3
    assert torch.equal(b["image"][:, 0], b["image"][:, 1]) and torch.equal(b["image"][:, 1], b["image"][:, 2])


def test_bt709_differs_from_bt601(synthetic_root):
    a = ParticleDataModule(root=str(synthetic_root), modality="mono", image_size=32)
    b = ParticleDataModule(root=str(synthetic_root), modality="mono", luminance="bt709", image_size=32)
    assert not torch.equal(torch.as_tensor(a._decode()), torch.as_tensor(b._decode()))


def test_unlabelled_rows_are_left_out_and_counted(dataset_copy, caplog):
    root = dataset_copy
    frame = pd.read_csv(root / "manifest.csv")
    frame.loc[frame.index % 3 == 0, "label"] = None
    frame.to_csv(root / "manifest.csv", index=False)
    dm = ParticleDataModule(root=str(root), image_size=32)
    with caplog.at_level(logging.INFO, logger="fimvision"):
        dm.setup("fit")
    assert "32 of 96 particles have no label" in caplog.text
    used = sum(len(dm.datasets[s]) for s in ("train", "val", "test"))
    assert used == 64 and all((dm.datasets[s].targets >= 0).all() for s in ("train", "val", "test"))
    dm.setup("predict")
    assert len(dm.datasets["predict"]) == 96  # prediction covers every particle


def test_splits_do_not_share_samples(synthetic_root):
    dm = ParticleDataModule(root=str(synthetic_root), image_size=32, split="group", fold=2)
    dm.setup("fit")
    frame = dm.manifest.frame
    samples = {s: set(frame["sample"].iloc[dm.datasets[s].rows]) for s in ("train", "val", "test")}
    assert not (samples["train"] & samples["val"]) and not (samples["train"] & samples["test"])
    assert set(frame["group"].iloc[dm.datasets["test"].rows]) == {sorted(frame["group"].unique())[2]}


def test_native_grey_dataset_refused_as_colour(tmp_path):
    import numpy as np
    from PIL import Image

    from fimvision.errors import DataError

    (tmp_path / "img").mkdir()
    rows = []
    for i in range(12):
        Image.fromarray(np.full((16, 16), 100 + i, np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "label": "ab"[i % 2], "sample": f"s{i % 6}"})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(DataError, match="one-channel"):
        ParticleDataModule(root=str(tmp_path), image_size=16, split="random").setup("fit")
    dm, b = batch(tmp_path, modality="mono", split="random", val_fraction=0.25, test_fraction=0.25)
    assert b["image"].shape[1] == 1


def test_augmentation_is_repeatable_for_a_seed_and_differs_between_workers(synthetic_root):
    import pytorch_lightning as pl

    def first_batch(seed, workers=0):
        pl.seed_everything(seed)
        dm = ParticleDataModule(root=str(synthetic_root), image_size=32, batch_size=8, num_workers=workers)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["index"], b["index"])
    assert not torch.equal(a["image"], c["image"])
    # Two workers get their own augmentation streams: the same image twice is augmented differently.
    pl.seed_everything(0)
    dm = ParticleDataModule(root=str(synthetic_root), image_size=32, num_workers=2, augment=True)
    dm.setup("fit")
    dataset = dm.datasets["train"]
    dataset.positions[:] = dataset.positions[0]  # every item the same particle
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, shuffle=False)
    images = [batch["image"][0] for _, batch in zip(range(8), loader, strict=False)]
    # Items alternate between the workers; copies of one random state would pair them up exactly.
    assert any(not torch.equal(images[k], images[k + 1]) for k in range(0, 8, 2))
