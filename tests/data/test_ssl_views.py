"""Self-supervised views of particle crops and the SSL data module's splits."""

from __future__ import annotations

import colorsys

import numpy as np
import pandas as pd
import pytest
import torch

from fimvision.data.ssl_data import SSLDataModule
from fimvision.data.transforms import IMAGENET_MEAN, IMAGENET_STD, MultiViewTransform, ssl_view_transform


def hue_of(view: torch.Tensor) -> float:
    """HSV hue of the centre pixel of a normalised colour view."""
    rgb = view[:, view.shape[1] // 2, view.shape[2] // 2] * torch.tensor(IMAGENET_STD) + torch.tensor(IMAGENET_MEAN)
    return colorsys.rgb_to_hsv(*rgb.clamp(0, 1).tolist())[0]


def test_views_count_sizes_and_channels():
    image = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    views = MultiViewTransform(3, 32, n_global=2, n_local=3, local_size=16)(image)
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert not torch.equal(views[0], views[1])  # independently augmented
    mono = MultiViewTransform(1, 24)(image[:, :, :1])
    assert [tuple(v.shape) for v in mono] == [(1, 24, 24)] * 2
    with pytest.raises(ValueError, match="two views"):
        MultiViewTransform(3, 32, n_global=1)


def test_default_views_keep_the_hue_that_colour_fim_adds():
    # A uniform reddish tile: brightness/contrast jitter, crops, flips and blur all keep its hue; hue
    # jitter (opt-in) does not.
    image = np.empty((40, 40, 3), np.uint8)
    image[...] = (180, 90, 60)
    hue = colorsys.rgb_to_hsv(180 / 255, 90 / 255, 60 / 255)[0]
    default = ssl_view_transform(3, 32, noise_p=0.0)
    assert all(abs(hue_of(default(image)) - hue) < 0.01 for _ in range(30))
    jittered = ssl_view_transform(3, 32, noise_p=0.0, hue=0.2, color_jitter_p=1.0)
    assert max(abs(hue_of(jittered(image)) - hue) for _ in range(30)) > 0.03


def _write(root, labels, splits=None):
    from PIL import Image

    (root / "img").mkdir(parents=True)
    rows = []
    for i, label in enumerate(labels):
        Image.fromarray(np.full((12, 12, 3), 20 * i % 255, np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "label": label, "sample": f"s{i // 2}",
                     **({"split": splits[i]} if splits else {})})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)


def test_unlabelled_rows_pretrain_and_labels_only_monitor(tmp_path):
    labels = ["a", "a", "b", "b"] * 3 + [""] * 6
    splits = ["train"] * 4 + ["val"] * 4 + ["test"] * 4 + ["", "", "", "", "val", "test"]
    _write(tmp_path, labels, splits)
    data = SSLDataModule(root=str(tmp_path), image_size=16, split="predefined", batch_size=4)
    data.setup("fit")
    assert data.classes == ["a", "b"] and data.num_classes == 2
    # Pretraining: labelled train rows and unlabelled rows not set aside; never val/test rows.
    assert data.datasets["train"].rows.tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert (data.datasets["train"].targets == -1).all()
    assert data.datasets["knn_bank"].rows.tolist() == [0, 1, 2, 3]
    assert data.datasets["val"].rows.tolist() == [4, 5, 6, 7]
    assert data.datasets["val"].targets.tolist() == [0, 0, 1, 1]
    batch = next(iter(data.train_dataloader()))
    assert len(batch["image"]) == 2 and batch["image"][0].shape == (4, 3, 16, 16)
    assert [len(loader.dataset) for loader in data.val_dataloader()] == [4, 4]


def test_no_labels_means_no_monitoring_loaders(tmp_path):
    _write(tmp_path, [""] * 6)
    data = SSLDataModule(root=str(tmp_path), image_size=16, batch_size=4)
    data.setup("fit")
    assert data.num_classes == 0 and len(data.datasets["train"]) == 6
    assert data.val_dataloader() == []


def test_leave_one_run_out_keeps_the_held_out_runs_unlabelled_particles_out_of_every_training_set(tmp_path):
    from PIL import Image

    from fimvision.data.datamodule import ParticleDataModule

    (tmp_path / "img").mkdir()
    rows = []
    for run in range(3):  # each run: 12 labelled (a/b) and 6 unlabelled particles, one sample a run
        for i, label in enumerate(["a", "b"] * 6 + [""] * 6):
            name = f"img/r{run}_{i}.png"
            Image.fromarray(np.full((12, 12, 3), 10 * i + run, np.uint8)).save(tmp_path / name)
            rows.append({"image": name, "label": label, "sample": f"run{run}", "group": f"run{run}"})
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / "manifest.csv", index=False)
    held_out_run = frame.index[frame["group"] == "run0"]
    unlabelled = frame.index[frame["label"] == ""]
    ssl = SSLDataModule(root=str(tmp_path), image_size=16, split="group", fold=0, batch_size=4)
    ssl.setup("fit")
    pretrain = set(ssl.datasets["train"].rows.tolist())
    assert not pretrain & set(held_out_run)  # not one image of the test run, labelled or not
    assert set(unlabelled) - set(held_out_run) <= pretrain  # every other run's unlabelled particle is used
    supervised = ParticleDataModule(root=str(tmp_path), image_size=16, split="group", fold=0, batch_size=4)
    supervised.setup("fit")
    for name in ("train", "val", "test"):  # supervised training and evaluation ignore unlabelled particles
        assert not set(supervised.datasets[name].rows.tolist()) & set(unlabelled)
    assert set(supervised.datasets["test"].rows.tolist()) == set(held_out_run) - set(unlabelled)
    assert ssl.unlabelled_rows(ssl.split_rows()).tolist() == sorted(set(unlabelled) - set(held_out_run))
    stratified = SSLDataModule(root=str(tmp_path), image_size=16, split="random", test_fraction=0.3)
    assert stratified.unlabelled_rows(stratified.split_rows()).tolist() == sorted(unlabelled)  # no run held out
