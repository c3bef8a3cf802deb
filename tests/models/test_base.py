"""The one base task and what it owns for every family: the backbone factory (weights file, tagged names,
backbone_checkpoint of any family), the optimizer and schedules, the metrics, and the classifier."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F

from fimvision.errors import ConfigError
from fimvision.models.adaptation import NRC, SHOT, AaD, FewShotFinetune, SourceModel
from fimvision.models.backbones import create_backbone
from fimvision.models.base import FimvisionTask
from fimvision.models.classifier import ParticleClassifier
from fimvision.models.optim import build_optimizer, build_schedule, decay_groups, shot_decay, step_schedule
from fimvision.models.ssl import BYOL, DINO, MoCo, SimCLR


def test_every_family_is_a_fimvision_task():
    for cls in (ParticleClassifier, SimCLR, MoCo, BYOL, DINO, SourceModel, FewShotFinetune, SHOT, NRC, AaD):
        assert issubclass(cls, FimvisionTask), cls
        assert cls.configure_optimizers is FimvisionTask.configure_optimizers, cls  # one optimizer set-up
        # The CLI's --help describes each argument from the class docstring's Args section.
        assert cls.__doc__ and "Args:" in cls.__doc__, cls


# --- the backbone factory ----------------------------------------------------------------------------------------

def test_a_local_weights_file_starts_the_backbone(tmp_path):
    source = timm.create_model("test_resnet", num_classes=5)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = create_backbone("test_resnet", num_classes=3, weights=str(tmp_path / "w.pth"))
    body = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in body.items())
    assert model.get_classifier().out_features == 3  # a head of another size starts fresh
    mono = create_backbone("test_resnet", in_chans=1, weights=str(tmp_path / "w.pth"))
    assert torch.allclose(mono.conv1[0].weight, source.conv1[0].weight.sum(dim=1, keepdim=True))  # timm's channel rule


def test_tagged_names_and_unknown_names():
    assert create_backbone("resnet18.a1_in1k", num_classes=2).default_cfg["tag"] == "a1_in1k"
    with pytest.raises(ConfigError, match="unknown timm model 'resnet181'. Close matches: resnet18"):
        create_backbone("resnet181")


def test_backbone_checkpoint_of_any_family(tmp_path):
    """The backbone a classifier starts from may come from a classifier or a source-model checkpoint too."""
    for family in (ParticleClassifier(backbone="test_resnet", num_classes=4),
                   SourceModel(backbone="test_resnet", num_classes=4)):
        trainer = pl.Trainer(logger=False, enable_checkpointing=False)
        trainer.strategy.connect(family)
        path = tmp_path / f"{type(family).__name__}.ckpt"
        trainer.save_checkpoint(path)
        started = ParticleClassifier(backbone="test_resnet", num_classes=2, backbone_checkpoint=str(path))
        body = family.model if isinstance(family, ParticleClassifier) else family.net.backbone
        assert torch.equal(started.model.conv1[0].weight, body.conv1[0].weight), type(family).__name__
        assert started.model.get_classifier().out_features == 2


# --- the optimizer and schedules ---------------------------------------------------------------------------------

def test_warmup_cosine_values():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = build_schedule(optimizer, "cosine", total_steps=12, warmup_steps=4)
    lrs = []
    for step in range(14):
        step_schedule(schedule, step)
        lrs.append(optimizer.param_groups[0]["lr"] / 0.1)
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])  # linear warm-up from 0
    assert lrs[8] == pytest.approx(0.5)  # half way through the decay
    assert lrs[12:] == pytest.approx([0.0, 0.0])


def test_the_optimizer_comes_from_timm_by_name():
    groups = decay_groups(torch.nn.Linear(2, 2), 0.05)
    assert type(build_optimizer(groups, "lars", 0.1, 0.05)).__name__ == "Lars"
    sgd = build_optimizer(groups, "sgd", 0.1, 0.05, momentum=0.8)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.0, 0.05]  # the groups' own decay


def test_shot_decay_values():
    assert shot_decay(0, 100) == 1.0
    assert shot_decay(100, 100) == pytest.approx(11 ** -0.75)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = build_schedule(optimizer, "shot", total_steps=10)
    for step in range(5):
        optimizer.step()
        step_schedule(schedule, step + 1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 6 ** -0.75)


def test_no_weight_decay_on_biases_norms_and_vit_tokens():
    vit = timm.create_model("test_vit", num_classes=2)
    groups = decay_groups(vit, 0.05, lr=0.1)
    names = {id(p): n for n, p in vit.named_parameters()}
    undecayed = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert {"pos_embed", "cls_token", "patch_embed.proj.bias", "norm.weight"} <= undecayed
    assert "blocks.0.attn.qkv.weight" not in undecayed
    assert all(g["lr"] == 0.1 for g in groups)


def test_frozen_parameters_are_not_optimised():
    probe = ParticleClassifier(backbone="test_resnet", num_classes=2, freeze_backbone=True)
    optimizer = probe.configure_optimizers()["optimizer"]
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in probe.model.get_classifier().parameters()}


# --- metrics and the classifier --------------------------------------------------------------------------------

def test_unknown_targets_are_left_out_of_the_metrics():
    model = ParticleClassifier(backbone="test_resnet", num_classes=2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    model.val_metrics.update(logits, torch.tensor([0, 1, -1, -1]))
    assert {k: v.item() for k, v in model.val_metrics.compute().items()} == {
        "val_acc": 1.0, "val_balanced_acc": 1.0, "val_f1_macro": 1.0}


def test_classifier_loss_weights_and_smoothing():
    with pytest.raises(ConfigError, match="class_weights has 3 values for num_classes=2"):
        ParticleClassifier(backbone="test_resnet", num_classes=2, class_weights=[1.0, 2.0, 3.0])
    model = ParticleClassifier(backbone="test_resnet", num_classes=2, class_weights=[1.0, 3.0], label_smoothing=0.1)
    logits, target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.2]]), torch.tensor([0, 1, 1])
    expected = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 3.0]), label_smoothing=0.1)
    assert model.loss(logits, target).item() == pytest.approx(expected.item())


def test_balanced_class_weights_are_inverse_frequency(synthetic_root):
    from fimvision.data.datamodule import ParticleDataModule

    dm = ParticleDataModule(root=str(synthetic_root), image_size=32)
    dm.setup("fit")
    model = ParticleClassifier(backbone="test_resnet", num_classes=2, class_weights="balanced")
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, max_epochs=1, limit_train_batches=1,
                         limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    counts = dm.class_counts("train").float()
    assert torch.allclose(model.loss_weight, counts.sum() / (2 * counts))
    assert math.isclose(float((model.loss_weight * counts).sum()), float(counts.sum()), rel_tol=1e-6)
