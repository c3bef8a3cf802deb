"""Self-supervised pretraining: kNN monitor, collapse monitor, every SSL config through the real CLI,
checkpoint -> linear probe / fine-tune, and a short SimCLR run that beats random initialisation."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from fimtest import CONFIGS, assert_learns, assert_logged, fast_args, fit_on_one_batch, run_cli, run_main

from fimvision.errors import CheckpointError
from fimvision.models.backbones import load_backbone_weights
from fimvision.models.classifier import ParticleClassifier
from fimvision.models.ssl import SimCLR, knn_predictions

SSL = CONFIGS / "ssl"
PRETRAIN_CONFIG = SSL / "pretrain.yaml"
PRETRAIN = sorted(p for p in (SSL / "models").glob("*.yaml") if p.stem.split("_")[0] in ("simclr", "moco", "byol", "dino"))
DOWNSTREAM = sorted(p for p in (SSL / "models").glob("*.yaml") if p.stem.startswith(("linear_probe", "finetune")))
SUPERVISED_COLOR = CONFIGS / "supervised" / "resnet18_color.yaml"


def pretrain(model: str) -> list:
    """The arguments of one pretraining method: the entry config and the method's model file."""
    return ["--config", PRETRAIN_CONFIG, "--model", SSL / "models" / f"{model}.yaml"]


def downstream(model: str) -> list:
    return ["--config", SUPERVISED_COLOR, "--model", SSL / "models" / f"{model}.yaml"]


def unit(*angles_deg: float) -> torch.Tensor:
    """2-D unit vectors at the given angles: cosine similarities are then easy to work out by hand."""
    a = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([a.cos(), a.sin()], dim=1).float()


# --- kNN and collapse monitors ----------------------------------------------------------------------------


def test_knn_monitor_gives_the_hand_computed_classes():
    bank = unit(0, 10, 90, 100, 180)
    labels = torch.tensor([0, 0, 1, 1, 2])
    query = unit(5, 60, 170)
    # 5 deg: neighbours 0 and 10 deg (both class 0). 60 deg: 90 and 100 (class 1). 170 deg: 180 (class 2,
    # 10 deg away, weight e^(cos 10/t)) against 100 (class 1, 70 deg away).
    assert knn_predictions(query, bank, labels, 3, k=2, temperature=0.5).tolist() == [0, 1, 2]
    # Weights matter: at k=5 the 170-degree query has class 2 (one close vote) against class 1 (two votes
    # at 70 and 80 deg): a low temperature lets the close one win, a high one lets the count win.
    assert knn_predictions(query[2:], bank, labels, 3, k=5, temperature=0.05).item() == 2
    assert knn_predictions(query[2:], bank, labels, 3, k=5, temperature=100.0).item() == 1
    # k larger than the bank is cut to the bank.
    assert knn_predictions(query, bank[:2], labels[:2], 3, k=20, temperature=0.5).tolist() == [0, 0, 0]


# --- every config through the CLI -------------------------------------------------------------------------


def test_ssl_configs_cover_every_method_for_a_cnn_and_a_vit():
    names = {p.stem for p in PRETRAIN}
    assert {f"{m}_{b}" for m in ("simclr", "moco", "byol", "dino") for b in ("resnet18", "vit")} == names
    assert {f"{k}_{b}" for k in ("linear_probe", "finetune") for b in ("resnet18", "vit")} == {p.stem for p in DOWNSTREAM}


# Tiny versions of each method's backbone: the configs' own settings, timm's test models.
TINY = {"resnet18": "test_resnet", "vit": "test_vit"}
# Methods whose loss is not a progress measure on one batch: MoCo's negatives queue fills with the batch's
# own keys, and DINO's centre and teacher sharpen as they go. For them the teacher must follow the student.
QUEUE_OR_CENTRE = ("moco", "dino")


@pytest.mark.parametrize("model", PRETRAIN, ids=lambda p: p.stem)
def test_ssl_config_learns_and_logs_its_monitors(model, synthetic_root, tmp_path):
    method, backbone = model.stem.split("_")
    multicrop = ["--data", SSL / "data" / "synthetic_color_multicrop.yaml"] if method == "dino" else []
    vit = ["--model.init_args.backbone_kwargs={}", "--model.init_args.backbone_kwargs.dynamic_img_size=true"] \
        if backbone == "vit" else []
    args = ["--config", PRETRAIN_CONFIG, "--model", model, *multicrop, *fast_args(synthetic_root, tmp_path),
            f"--model.init_args.backbone={TINY[backbone]}", *vit, "--model.init_args.warmup_epochs=0"]
    cli, metrics = fit_on_one_batch(args, tmp_path)
    assert_logged(metrics, "train_loss", "train_z_std", "val_feature_std", "val_knn_acc", "val_knn_balanced_acc",
                  "val_knn_f1_macro")
    assert cli.model.hparams.num_classes == 2 and cli.model.hparams.img_size == 32 and cli.model.hparams.in_chans == 3
    if method in QUEUE_OR_CENTRE:
        assert_logged(metrics, "ema_momentum")
        start = run_cli(args, run=False).model.backbone  # the same seed and CLI: the weights it started from
        online, teacher = cli.model.ema_pairs()[0]
        moved = [(p - q).abs().max().item() for p, q in zip(online.parameters(), start.parameters(), strict=True)]
        followed = [(p - q).abs().max().item() for p, q in zip(teacher.parameters(), start.parameters(), strict=True)]
        assert max(moved) > max(followed) > 0  # the teacher moves towards the student, more slowly
    else:
        assert_learns(metrics)


def test_mono_pretraining_takes_one_channel(synthetic_root, tmp_path):
    cli = run_cli(["fit", *pretrain("simclr_resnet18"), "--data", SSL / "data" / "synthetic_mono.yaml",
                   *fast_args(synthetic_root, tmp_path), "--model.init_args.backbone=test_resnet",
                   "--trainer.fast_dev_run=true"])
    first_conv = next(m for m in cli.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 1  # the network itself, not only its hyper-parameter
    views = next(iter(cli.datamodule.train_dataloader()))["image"]
    assert len(views) == 2 and all(v.shape[1] == 1 for v in views)  # and the batches it trained on


def test_pretraining_on_a_manifest_without_labels(synthetic_root, tmp_path):
    root = tmp_path / "unlabelled"
    root.mkdir()
    (root / "images").symlink_to(synthetic_root / "images")
    frame = pd.read_csv(synthetic_root / "manifest.csv", dtype=str)
    frame.drop(columns=["label"]).to_csv(root / "manifest.csv", index=False)
    cli = run_cli(["fit", *pretrain("byol_resnet18"), *fast_args(root, tmp_path / "out"),
                   "--trainer.fast_dev_run=true"])
    assert cli.model.hparams.num_classes == 0 and len(cli.datamodule.datasets["train"]) == len(frame)
    assert torch.isfinite(cli.trainer.callback_metrics["train_loss"])
    assert "val_knn_acc" not in cli.trainer.callback_metrics


# --- checkpoint -> downstream -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simclr_checkpoint(synthetic_root, tmp_path_factory):
    """last.ckpt of two SimCLR steps of ResNet-18 at 32 px."""
    out = tmp_path_factory.mktemp("simclr")
    run_cli(["fit", *pretrain("simclr_resnet18"), *fast_args(synthetic_root, out),
             "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
             "--trainer.check_val_every_n_epoch=1"])
    (path,) = out.rglob("last.ckpt")
    return path


def backbone_state(path):
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


def test_linear_probe_trains_the_head_only(simclr_checkpoint, synthetic_root, tmp_path):
    pretrained = backbone_state(simclr_checkpoint)
    fresh = ParticleClassifier(backbone="resnet18", num_classes=2, img_size=32)
    head_before = {k: v.clone() for k, v in fresh.model.get_classifier().state_dict().items()}
    cli = run_cli(["fit", *downstream("linear_probe_resnet18"), *fast_args(synthetic_root, tmp_path),
                   "--trainer.fast_dev_run=true",
                   f"--model.init_args.backbone_checkpoint={simclr_checkpoint}"])
    model = cli.model.model
    after = model.state_dict()
    # Every backbone tensor, batch-norm statistics included, is the SSL checkpoint's after a training step.
    assert all(torch.equal(after[k], v) for k, v in pretrained.items())
    assert len(pretrained) == len(after) - 2  # all but fc.weight, fc.bias
    assert not torch.equal(after["fc.weight"], head_before["weight"])
    assert [n for n, p in cli.model.named_parameters() if p.requires_grad] == ["model.fc.weight", "model.fc.bias"]


def test_fine_tune_starts_from_the_checkpoint_and_trains_everything(simclr_checkpoint, synthetic_root, tmp_path):
    pretrained = backbone_state(simclr_checkpoint)
    model = ParticleClassifier(backbone="resnet18", num_classes=2, img_size=32,
                               backbone_checkpoint=str(simclr_checkpoint))
    assert all(torch.equal(model.model.state_dict()[k], v) for k, v in pretrained.items())
    cli = run_cli(["fit", *downstream("finetune_resnet18"), *fast_args(synthetic_root, tmp_path),
                   "--trainer.fast_dev_run=true",
                   f"--model.init_args.backbone_checkpoint={simclr_checkpoint}"])
    after = cli.model.model.state_dict()
    assert not torch.equal(after["conv1.weight"], pretrained["conv1.weight"])
    assert all(p.requires_grad for p in cli.model.parameters())


def test_wrong_architecture_or_channels_is_a_clear_error(simclr_checkpoint, synthetic_root, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="trained with backbone 'resnet18'.*'resnet34'"):
        ParticleClassifier(backbone="resnet34", num_classes=2, backbone_checkpoint=str(simclr_checkpoint))
    # Channels through the real CLI: mono data on a colour checkpoint exits with status 2 and says why.
    assert run_main(["fit", *downstream("linear_probe_resnet18"), *fast_args(synthetic_root, tmp_path),
                     "--trainer.fast_dev_run=true",
                     "--data.init_args.modality=mono", f"--model.init_args.backbone_checkpoint={simclr_checkpoint}"]) == 2
    assert "trained on 3-channel input, but the data gives 1 channel" in capsys.readouterr().err
    # Same name, other shapes (no hyperparameters to compare): the mismatching tensor is named.
    state = torch.load(simclr_checkpoint, map_location="cpu", weights_only=False)
    del state["hyper_parameters"]
    torch.save(state, tmp_path / "nohp.ckpt")
    other = ParticleClassifier(backbone="resnet18", num_classes=2, in_chans=1).model
    with pytest.raises(CheckpointError, match=r"'conv1.weight': checkpoint shape \(64, 3, 7, 7\), model shape \(64, 1"):
        load_backbone_weights(other, tmp_path / "nohp.ckpt", backbone="resnet18", in_chans=1)
    torch.save({"state_dict": {"model.fc.weight": torch.zeros(2, 2)}}, tmp_path / "supervised.ckpt")
    with pytest.raises(CheckpointError, match="is not a Lightning checkpoint"):
        load_backbone_weights(other, tmp_path / "supervised.ckpt", backbone="resnet18", in_chans=3)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone_weights(other, tmp_path / "missing.ckpt", backbone="resnet18", in_chans=3)


# --- the representation learns ------------------------------------------------------------------------------


@pytest.mark.slow
def test_short_simclr_pretraining_beats_random_init_on_knn(tmp_path):
    from fimvision.data.synthetic import SyntheticConfig, write_dataset

    root = tmp_path / "data"
    write_dataset(root, SyntheticConfig(antibodies=3, per_class=60, particles_per_vial=10, seed=1), progress=False)
    common = [*fast_args(root, tmp_path / "out"), "--data.init_args.batch_size=64", "--seed_everything=0",
              "--model.init_args.backbone=resnet18"]
    random_init = run_cli(["validate", *pretrain("simclr_resnet18"), *common]).trainer.callback_metrics["val_knn_acc"].item()
    trained = run_cli(["fit", *pretrain("simclr_resnet18"), *common, "--trainer.max_epochs=12", "--trainer.check_val_every_n_epoch=12",
                       "--model.init_args.warmup_epochs=1"]).trainer.callback_metrics["val_knn_acc"].item()
    assert trained > random_init + 0.03, (random_init, trained)


def test_ssl_module_rejects_single_view_batches():
    model = SimCLR(backbone="test_resnet", num_classes=2, img_size=32)
    with pytest.raises(ValueError, match="SSLDataModule"):
        model.training_step({"image": torch.zeros(2, 3, 32, 32), "target": torch.zeros(2)}, 0)


def test_probe_checkpoint_needs_no_ssl_file_to_test(simclr_checkpoint, synthetic_root, tmp_path):
    import shutil

    ssl_copy = tmp_path / "ssl.ckpt"
    shutil.copy(simclr_checkpoint, ssl_copy)
    run_cli(["fit", *downstream("linear_probe_resnet18"), *fast_args(synthetic_root, tmp_path / "fit"), "--trainer.max_epochs=1",
             "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
             f"--model.init_args.backbone_checkpoint={ssl_copy}"])
    ssl_copy.unlink()  # the probe's own checkpoint holds every weight
    probe = next((tmp_path / "fit").rglob("last.ckpt"))
    cli = run_cli(["test", *downstream("linear_probe_resnet18"), *fast_args(synthetic_root, tmp_path / "test"), f"--ckpt_path={probe}",
                   f"--model.init_args.backbone_checkpoint={ssl_copy}"])
    assert cli.model.hparams.backbone_checkpoint is None
    assert 0 <= float(cli.trainer.callback_metrics["test_acc"]) <= 1


def test_moco_negatives_come_from_before_the_batch():
    import copy

    from fimvision.models.ssl import MoCo

    torch.manual_seed(0)
    moco = MoCo(backbone="resnet18", num_classes=2, img_size=32, queue_size=16, proj_hidden_dim=32,
                proj_output_dim=8).eval()  # eval: batch norm does not depend on the key shuffle
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    before = copy.deepcopy(moco.criterion)  # the queue as it was before this batch
    loss, _ = moco.ssl_loss(views)
    with torch.no_grad():
        q0, q1 = moco.projection(moco.backbone(torch.cat(views))).chunk(2)
        k0, k1 = moco._keys(views[0]), moco._keys(views[1])
        expected = before(torch.cat([q0, q1]).requires_grad_(), torch.cat([k1, k0]))
    # Both directions are scored against the old queue only: this batch's own keys are never negatives.
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert int(moco.criterion.memory_bank.bank_ptr) == 8  # then both views' keys are enqueued
