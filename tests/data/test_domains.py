"""Domain data: readers (.mat, DomainBed folders, manifest columns), the few-shot protocol, scenarios."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fimtest import SHARED_DATA, write_mat_domains
from PIL import Image

from fimvision.data.domains import DomainDataModule, read_mat_domain, split_target, stratified_split
from fimvision.errors import DataError

MNIST_USPS = SHARED_DATA / "domain-adaptation" / "MNIST_vs_USPS.mat"


def write_mat(path: Path, per_class: int = 12, classes: int = 10, side: int = 16, seed: int = 0) -> Path:
    """A tiny two-domain .mat set like the shared ones. Class c lights row c of the image, so orientation
    and labels can be checked."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    x = rng.uniform(0, 0.2, (len(labels), side, side))
    x[np.arange(len(labels)), labels, :] = 1.0
    return write_mat_domains(path, (x, labels), (x[::-1].copy(), labels[::-1].copy()))


def test_mat_reader_orientation_classes_and_resize(tmp_path):
    path = write_mat(tmp_path / "MNIST_vs_USPS.mat", per_class=3)
    domain = read_mat_domain(path, "USPS", image_size=16)
    assert domain.classes == [str(d) for d in range(10)]  # MATLAB label 1 is digit 0
    assert domain.images.shape == (30, 16, 16, 1) and domain.images.dtype == np.uint8
    for image, label in zip(domain.images, domain.labels, strict=True):
        assert image[label, :, 0].min() == 255 and np.delete(image[:, :, 0], label, axis=0).max() <= 52
    assert read_mat_domain(path, "target", 32).images.shape == (30, 32, 32, 1)
    with pytest.raises(DataError, match="no domain 'SVHN'.*MNIST"):
        read_mat_domain(path, "SVHN", 16)


@pytest.mark.skipif(not MNIST_USPS.is_file(), reason=f"shared data {MNIST_USPS} is absent (a user's clone)")
def test_shared_mnist_digits_are_upright():
    # An upright "1" is a vertical stroke: its mass spreads over rows and concentrates in a few columns.
    for name in ("MNIST", "USPS"):
        domain = read_mat_domain(MNIST_USPS, name, 16)
        ones = domain.images[domain.labels == domain.classes.index("1"), :, :, 0].astype(float).mean(axis=0)
        assert ones.sum(axis=0).std() > 2 * ones.sum(axis=1).std(), name
        # and a "7" has its bar (the heaviest row) in the top half, and more mass right than left above it
        sevens = domain.images[domain.labels == domain.classes.index("7"), :, :, 0].astype(float).mean(axis=0)
        bar = int(sevens.sum(axis=1).argmax())
        assert bar < 8 and sevens[bar + 2:, 8:].sum() > sevens[bar + 2:, :8].sum(), name


def test_split_is_deterministic_stratified_nested_and_disjoint():
    labels = np.repeat(np.arange(4), [50, 30, 20, 10])
    a = split_target(labels, "USPS", seed=1, n_shot=3)
    b = split_target(labels, "USPS", seed=1, n_shot=3)
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("pool", "test", "shots", "val"))
    other = split_target(labels, "USPS", seed=2, n_shot=3)
    assert not np.array_equal(a.test, other.test)
    assert not np.array_equal(a.test, split_target(labels, "MNIST", seed=1, n_shot=3).test)
    assert np.bincount(labels[a.test]).tolist() == [10, 6, 4, 2]  # 20 % of each class
    assert set(a.pool) | set(a.test) == set(range(len(labels))) and not set(a.pool) & set(a.test)
    assert np.bincount(labels[a.shots]).tolist() == [3, 3, 3, 3] and np.bincount(labels[a.val]).tolist() == [1] * 4
    assert set(a.shots) <= set(a.pool) and set(a.val) <= set(a.pool) and not set(a.shots) & set(a.val)
    for n_shot in (1, 5, 7):
        s = split_target(labels, "USPS", seed=1, n_shot=n_shot)
        assert np.array_equal(s.test, a.test) and np.array_equal(s.val, a.val)  # test and val fixed by (seed, target)
        assert (set(s.shots) <= set(a.shots)) if n_shot < 3 else (set(a.shots) <= set(s.shots))
        assert not set(s.shots) & set(s.test)
    with pytest.raises(DataError, match="n_shot \\+ 1 = 9 images per class; class 3: 8"):
        split_target(labels, "USPS", seed=1, n_shot=8)


def test_a_small_or_imbalanced_domain_holds_out_every_class_with_two_images():
    rng = np.random.default_rng(0)
    rare = np.repeat(np.arange(4), [100, 2, 2, 2])
    rest, held = stratified_split(rare, 0.2, rng)
    assert np.bincount(rare[held]).tolist() == [20, 1, 1, 1] and np.bincount(rare[rest]).tolist() == [80, 1, 1, 1]
    small = np.repeat(np.arange(4), [8, 8, 7, 7])  # fewer held-out images than classes at 0.1: still one each
    assert np.bincount(small[stratified_split(small, 0.1, rng)[1]]).tolist() == [1, 1, 1, 1]


def _indices(loader) -> list[int]:
    return [int(i) for batch in loader for i in batch["index"]]


def test_loaders_follow_the_protocol(tmp_path):
    dm = DomainDataModule(root=str(write_mat(tmp_path / "MNIST_vs_USPS.mat")), source="MNIST", target="USPS",
                          image_size=16, n_shot=2, seed=3, batch_size=16)
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (10, 1, 16)
    dm.serve("fewshot")
    shots = _indices(dm.train_dataloader())
    assert len(shots) == 32 * 50 and set(shots) == set(dm.split.shots.tolist())  # drawn with replacement
    assert sorted(_indices(dm.val_dataloader())) == sorted(dm.split.val.tolist())
    test = _indices(dm.test_dataloader())
    assert sorted(test) == sorted(dm.split.test.tolist()) and not set(test) & (set(shots) | set(dm.split.val))
    dm.serve("target")
    pool_batch = next(iter(dm.train_dataloader()))
    assert (pool_batch["target"] == -1).all()  # source-free methods never see target labels
    assert sorted(_indices(dm.val_dataloader())) == sorted(dm.split.pool.tolist())
    dm.serve("source")
    assert len(dm.source_train) == 110 and not set(dm.source_train) & set(dm.source_val)
    assert set(_indices(dm.train_dataloader())) <= set(dm.source_train.tolist())
    assert sorted(_indices(dm.val_dataloader())) == sorted(dm.source_val.tolist())


def test_domainbed_folders_with_an_unknown_target_class(tmp_path):
    rng = np.random.default_rng(0)
    for domain, classes in (("amazon", ("bike", "cup")), ("webcam", ("bike", "cup", "pen"))):
        for c in classes:
            (tmp_path / domain / c).mkdir(parents=True)
            for i in range(6):
                size = (20 + i, 30)  # non-square: padded, not stretched
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / domain / c / f"{i}.png")
    dm = DomainDataModule(root=str(tmp_path), source="amazon", target="webcam", image_size=24, n_shot=1,
                          augment="particle")
    assert dm.classes == ["bike", "cup"] and dm.in_chans == 3
    assert dm.target_images.shape == (18, 24, 24, 3)
    unknown = [(dm.split_targets(part) < 0).sum() for part in ("pool", "test")]
    assert sum(unknown) == 6 and len(dm.class_counts("pool")) == 2  # 'pen': unknown images, not a class
    assert (dm.target_labels[dm.split.shots] >= 0).all()
    with pytest.raises(DataError, match="Domains under .*amazon"):
        DomainDataModule(root=str(tmp_path), source="amazon", target="dslr")


def test_manifest_domains_by_group_and_colour_to_mono(synthetic_root):
    dm = DomainDataModule(root=str(synthetic_root), source="group!=ab3", target="group=ab3", image_size=24, n_shot=2)
    assert dm.classes == ["heat", "mechanical"] and dm.in_chans == 3
    assert len(dm.source) == 64 and len(dm.target) == 32
    mono = DomainDataModule(root=str(synthetic_root), source="group!=ab3@color", target="group=ab3@mono",
                            image_size=24, n_shot=2)
    assert mono.in_chans == 3  # mixed modalities: grey replicated to three channels
    grey = mono.target_images
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert not (mono.source.images[..., 0] == mono.source.images[..., 2]).all()
    with pytest.raises(DataError, match="column 'antibody'"):
        DomainDataModule(root=str(synthetic_root), source="antibody=ab1", target="group=ab3")
    with pytest.raises(DataError, match="column 'group': no row has 'ab9'"):
        DomainDataModule(root=str(synthetic_root), source="group!=ab3", target="group=ab9")


def test_scenarios(tmp_path):
    path = str(write_mat(tmp_path / "MNIST_vs_USPS.mat", per_class=40))
    shift = DomainDataModule(root=path, image_size=16, scenario="label_shift", imbalance_ratio=0.25,
                             source_imbalance=True)
    counts = (shift.class_counts("pool") + shift.class_counts("test")).numpy()
    assert counts[0] == 40 and counts[9] == 10 and (np.diff(counts) <= 0).all()  # long tail in the target
    source_counts = np.bincount(shift.source_labels, minlength=10)
    assert source_counts[9] == 40 and source_counts[0] == 10  # the reverse in the source
    partial = DomainDataModule(root=path, image_size=16, scenario="partial", target_classes=["1", "4"])
    assert partial.num_classes == 10 and set(np.unique(partial.target_labels)) == {1, 4}
    ood = DomainDataModule(root=path, image_size=16, scenario="ood", unseen_classes=["8", "9"])
    assert ood.classes == [str(d) for d in range(8)] and (ood.source_labels < 8).all() and len(ood.source_labels) == 320
    assert sum((ood.split_targets(part) < 0).sum() for part in ("pool", "test")) == 80  # digits 8, 9: unknown
    assert (ood.target_labels[ood.split.shots] >= 0).all() and (ood.target_labels[ood.split.val] >= 0).all()
    with pytest.raises(DataError, match="unseen_classes \\['x'\\]"):
        DomainDataModule(root=path, image_size=16, scenario="ood", unseen_classes=["x"])
