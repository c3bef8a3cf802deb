"""Numeric features beside the image, background colour normalisation, the split rule for few samples,
class-balanced sampling and label fractions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from fimtest import rewrite_manifest

from fimvision.data.datamodule import ParticleDataModule
from fimvision.data.dataset import NORMALISED_BACKGROUND, normalise_background
from fimvision.data.features import instrument_columns
from fimvision.data.splits import assign_splits, rare_class_warnings
from fimvision.errors import DataError


def module(root, **kwargs) -> ParticleDataModule:
    dm = ParticleDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0, **kwargs)
    dm.setup("fit")
    return dm


def test_listed_features_reach_the_batch_raw_and_missing_values_stay_nan(dataset_copy):
    frame = rewrite_manifest(dataset_copy, lambda f: f.assign(esd_um=f["esd_um"].mask(f.index == 0, "")))
    dm = module(dataset_copy, features=["esd_um", "aspect_ratio"], augment=False)
    assert dm.feature_names == ["esd_um", "aspect_ratio"] and dm.num_features == 2
    item = dm.datasets["train"][0]
    row = frame.iloc[item["index"]]
    expected = [float(row["esd_um"]) if row["esd_um"] else np.nan, float(row["aspect_ratio"])]
    np.testing.assert_allclose(item["features"].numpy(), expected, rtol=1e-6)
    everything = dm._features
    assert np.isnan(everything[0, 0]) and not np.isnan(everything[1:, 0]).any()


def test_instrument_means_every_numeric_particle_measurement_not_bookkeeping(synthetic_root):
    frame = pd.read_csv(synthetic_root / "manifest.csv")
    found = instrument_columns(frame.assign(image_x=np.arange(len(frame)), volume_imaged_ml=0.1))
    assert {"esd_um", "circularity", "aspect_ratio", "mean_intensity", "avg_red"} <= set(found)
    assert not {"particle_id", "image_x", "volume_imaged_ml", "image", "label"} & set(found)
    dm = ParticleDataModule(root=str(synthetic_root), features="instrument", size_feature=True)
    assert dm.feature_names == [*found, "crop_px"]


def test_unknown_or_text_feature_columns_are_errors_that_list_the_usable_ones(dataset_copy):
    with pytest.raises(DataError, match=r"\['esd'\] are not manifest columns.*esd_um"):
        ParticleDataModule(root=str(dataset_copy), features=["esd"])
    rewrite_manifest(dataset_copy, lambda f: f.assign(esd_um=f["esd_um"].mask(f.index == 3, "big")))
    with pytest.raises(DataError, match=r"line 5, column 'esd_um': 'big' is not a number"):
        ParticleDataModule(root=str(dataset_copy), features=["esd_um"])
    with pytest.raises(DataError, match="neither a list"):
        ParticleDataModule(root=str(dataset_copy), features="all")


def test_size_feature_is_the_log_of_the_crops_longer_side(synthetic_root):
    dm = module(synthetic_root, size_feature=True)
    from PIL import Image

    side = max(Image.open(synthetic_root / dm.manifest.frame["image"].iloc[7]).size)
    assert dm._features[7, 0] == pytest.approx(np.log(side))


def test_background_normalisation_removes_a_tint_and_keeps_the_particles_contrast():
    tile = np.full((20, 20, 3), (150, 160, 220), np.uint8)
    tile[8:12, 8:12] = (90, 80, 110)  # a particle darker than its background, reddish against it
    tinted = np.clip(tile.astype(float) * (1.1, 0.95, 0.9), 0, 255).round().astype(np.uint8)
    a, b = normalise_background(tile), normalise_background(tinted)
    assert (a[0, 0] == NORMALISED_BACKGROUND).all() and (b[0, 0] == NORMALISED_BACKGROUND).all()
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # the tint is gone
    assert a[10, 10, 0] > a[10, 10, 2]  # relative to the background the particle stays red, not blue


def test_color_norm_background_changes_what_the_model_sees(synthetic_root):
    plain = ParticleDataModule(root=str(synthetic_root), image_size=32)._decode()
    normalised = ParticleDataModule(root=str(synthetic_root), image_size=32, color_norm="background")._decode()
    assert normalised[:, 0, 0].std(axis=0).max() < plain[:, 0, 0].std(axis=0).max()  # backgrounds now alike


def runs_frame(runs: int, per_run: int = 60) -> pd.DataFrame:
    labels = np.tile(["a", "a", "b"], runs * per_run // 3)
    run = np.repeat([f"run{i}" for i in range(runs)], per_run)
    return pd.DataFrame({"label": labels, "sample": run, "group": run, "line": np.arange(len(run)) + 2})


def test_leave_one_run_out_validates_on_a_whole_training_run_or_by_particle_and_says_so():
    frame, notes = runs_frame(3), []
    splits = assign_splits(frame, "group", fold=0, val_fraction=0.2, notes=notes)
    assert (splits[frame["group"] == "run0"] == "test").all()
    per_run = pd.Series(splits).groupby(frame["group"].to_numpy()).agg(lambda s: set(s))
    assert sorted(map(sorted, per_run[["run1", "run2"]])) == [["train"], ["val"]]  # one whole run validates
    assert notes and "by whole group" in notes[0] and "2 training groups" in notes[0]
    frame, notes = runs_frame(2), []  # one training run left: validation by particle within it
    splits = assign_splits(frame, "group", fold=0, val_fraction=0.2, notes=notes)
    part = frame[splits == "val"]
    assert set(part["group"]) == {"run1"} and set(part["label"]) == {"a", "b"}
    assert abs((splits == "val").sum() / (splits != "test").sum() - 0.2) < 0.05
    assert notes and "by particle" in notes[0] and "1 training sample" in notes[0]
    many, notes = runs_frame(12, 30), []
    splits = assign_splits(many, "group", fold=0, notes=notes)
    by_sample = pd.Series(splits).groupby(many["sample"].to_numpy()).nunique()
    assert (by_sample == 1).all() and not notes  # enough samples: validation by whole sample, as before


def test_a_held_out_run_with_a_class_training_barely_has_is_warned_about():
    frame = runs_frame(3)
    frame.loc[(frame["group"] != "run0") & (frame["label"] == "b"), "label"] = "a"
    frame.loc[frame.index[(frame["group"] == "run1").to_numpy()][:3], "label"] = "b"  # 3 training particles of b
    splits = assign_splits(frame, "group", fold=0)
    (warning,) = rare_class_warnings(frame, splits)
    assert "class 'b': 20 test particle(s) but only 3 for training" in warning
    assert rare_class_warnings(runs_frame(3), assign_splits(runs_frame(3), "group", fold=0)) == []


def test_balanced_sampler_draws_each_class_equally_often(dataset_copy):
    rewrite_manifest(dataset_copy, lambda f: f[(f["label"] == "heat") | (f.index % 4 == 0)])
    dm = module(dataset_copy, sampler="balanced", split="random")
    targets = dm.datasets["train"].targets
    assert np.bincount(targets).min() * 2.5 < np.bincount(targets).max()  # imbalanced to start with
    drawn = torch.cat([b["target"] for _ in range(30) for b in dm.train_dataloader()])
    shares = torch.bincount(drawn) / len(drawn)
    assert shares.min() > 0.4


def test_label_fraction_keeps_a_stratified_share_of_the_training_labels_only(synthetic_root):
    full, part = module(synthetic_root), module(synthetic_root, label_fraction=0.25)
    for split in ("val", "test"):
        assert np.array_equal(full.datasets[split].rows, part.datasets[split].rows)
    n_full, n_part = np.bincount(full.datasets["train"].targets), np.bincount(part.datasets["train"].targets)
    np.testing.assert_allclose(n_part, np.maximum(1, np.round(0.25 * n_full)))
    assert set(part.datasets["train"].rows) < set(full.datasets["train"].rows)
