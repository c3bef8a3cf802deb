"""Adaptation losses on hand-made batches, the few-shot stages, source checkpoints, and every sfda config
through the real CLI (fast_dev_run on tiny data)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from fimtest import CONFIGS, SHARED_DATA, fast_args, run_cli, run_main
from PIL import Image

from fimvision.data.domains import DomainDataModule, write_mat_domains
from fimvision.errors import CheckpointError
from fimvision.models.adaptation import (
    SHOT,
    FewShotFinetune,
    SourceModel,
    aad_loss,
    im_loss,
    im_score,
    load_source,
    nrc_loss,
    shot_loss,
    shot_pseudo_labels,
    snd_score,
)

LN2 = math.log(2)


def write_mat(path: Path, per_class: int = 12, classes: int = 10, side: int = 16, seed: int = 0) -> Path:
    """Tiny learnable digits-like domains: class c lights row c (the target a little dimmer)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    x = rng.uniform(0, 0.2, (len(labels), side, side))
    x[np.arange(len(labels)), labels, :] = 1.0
    return write_mat_domains(path, (x, labels), (0.8 * x, labels))


# ------------------------------------------------------------------------------ losses, hand-made batches
def test_information_maximisation():
    confident_diverse = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert im_loss(confident_diverse).item() == pytest.approx(-LN2, abs=1e-4)  # best possible: -ln C
    assert im_loss(torch.tensor([[1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-4)  # collapsed
    assert im_loss(torch.full((2, 2), 0.5)).item() == pytest.approx(0.0, abs=1e-4)  # uncertain
    assert im_score(confident_diverse).item() == pytest.approx(LN2, abs=1e-4)


def test_shot_loss_and_pseudo_labels():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    p = logits.softmax(dim=1)
    expected = im_loss(p) + 0.3 * F.cross_entropy(logits, torch.tensor([1, 1]))
    assert shot_loss(logits, torch.tensor([1, 1]), beta=0.3).item() == pytest.approx(expected.item(), rel=1e-6)
    assert shot_loss(logits, torch.tensor([0, 1]), 0.3) < shot_loss(logits, torch.tensor([1, 0]), 0.3)
    # Two tight clusters; the classifier gets one point of each wrong: clustering corrects them.
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [1.0, 0.05], [0.0, 1.0], [0.1, 0.9], [0.05, 1.0]])
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.1, 0.9], [0.2, 0.8], [0.55, 0.45]])
    assert shot_pseudo_labels(feats, probs).tolist() == [0, 0, 0, 1, 1, 1]


def test_nrc_loss_value():
    # Bank of four: 0<->1 and 2<->3 are mutual nearest neighbours. k = m = 1, batch = slot 0.
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    scores = torch.tensor([[0.7, 0.3], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])
    p = torch.tensor([[0.6, 0.4]])
    value = nrc_loss(p, torch.tensor([0]), bank, scores, k=1, m=1)
    # neighbour 1 (reciprocal: weight 1), its neighbour 0 (expanded: 0.1), diversity p log p
    expected = -(p[0] @ scores[1]) - 0.1 * (p[0] @ scores[0]) + (p[0] * p[0].log()).sum()
    assert value.item() == pytest.approx(expected.item(), abs=1e-4)
    agree = nrc_loss(torch.tensor([[0.9, 0.1]]), torch.tensor([0]), bank, scores, k=1, m=1)
    disagree = nrc_loss(torch.tensor([[0.1, 0.9]]), torch.tensor([0]), bank, scores, k=1, m=1)
    assert (agree - (0.9 * math.log(0.9) + 0.1 * math.log(0.1))) < (disagree - (0.9 * math.log(0.9) + 0.1 * math.log(0.1)))


def test_aad_loss_value():
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    scores = torch.tensor([[0.7, 0.3], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])
    p = torch.tensor([[0.6, 0.4], [0.2, 0.8]])
    value = aad_loss(p, torch.tensor([0, 2]), bank, scores, k=1, alpha=0.5)
    attract = -((p[0] @ scores[1]) + (p[1] @ scores[3])) / 2
    disperse = (2 * (p[0] @ p[1])) / 2
    assert value.item() == pytest.approx((attract + 0.5 * disperse).item(), abs=1e-6)


def test_snd_score():
    same = torch.tensor([[0.9, 0.1]] * 3)
    assert snd_score(same).item() == pytest.approx(LN2, abs=1e-3)  # two equal neighbours each
    clustered = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    assert snd_score(clustered).item() == pytest.approx(0.0, abs=1e-3)  # one sharp neighbour each


# ------------------------------------------------------------------------------ modules on tiny data
@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_mat(tmp_path_factory.mktemp("digits") / "MNIST_vs_USPS.mat", per_class=12)


@pytest.fixture(scope="module")
def source_ckpt(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("source")
    dm = DomainDataModule(root=str(digits), image_size=16, batch_size=32, n_shot=2)
    model = SourceModel("test_resnet", dm.num_classes, dm.classes, dm.in_chans, dm.image_size)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, default_root_dir=out,
                         logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    return Path(trainer.checkpoint_callback.best_model_path)


def _adapt(model, dm, steps: int) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=steps, max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    return trainer


def test_fewshot_stages(digits, source_ckpt):
    dm = DomainDataModule(root=str(digits), image_size=16, n_shot=2)
    args = dict(source_checkpoint=str(source_ckpt), num_classes=10, class_names=dm.classes, in_chans=1, img_size=16)
    source = load_source(str(source_ckpt), 10, dm.classes, 1, 16)[0].state_dict()
    lp_ft = FewShotFinetune(**args, adapt="lp-ft", steps=10, lp_fraction=0.3)
    assert [lp_ft.stage_at(s) for s in (0, 2, 3, 9)] == ["classifier", "classifier", "all", "all"]
    probe = FewShotFinetune(**args, adapt="classifier", steps=4, val_every=2, classifier_lr=1e-2)
    _adapt(probe, dm, 4)
    assert probe.global_step == 4  # `steps` sets the length
    after = probe.net.state_dict()
    body = [k for k in source if not k.startswith("classifier")]
    assert all(torch.equal(source[k], after[k]) for k in body)  # weights and BN statistics untouched
    assert not torch.equal(source["classifier.parametrizations.weight.original1"],
                           after["classifier.parametrizations.weight.original1"])
    full = FewShotFinetune(**args, adapt="all", steps=2, lr=1e-3, sam_rho=0.05)
    _adapt(full, dm, 2)
    first = next(k for k in source if k.startswith("backbone.") and k.endswith("weight"))
    assert not torch.equal(source[first], full.net.state_dict()[first])


def test_shot_freezes_the_classifier_and_uses_no_target_labels(digits, source_ckpt):
    dm = DomainDataModule(root=str(digits), image_size=16, n_shot=2, batch_size=32)
    model = SHOT(str(source_ckpt), 10, dm.classes, 1, 16)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    _adapt(model, dm, 3)
    after = model.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("classifier"))
    assert not torch.equal(before["bottleneck.0.weight"], after["bottleneck.0.weight"])
    assert model.pseudo[dm.split.pool].min() >= 0 and len(model.pseudo) == dm.split.pool.max() + 1


def test_source_checkpoint_errors(digits, source_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="source_checkpoint is not set"):
        FewShotFinetune(None, 10, None, 1, 16)
    with pytest.raises(CheckpointError, match="does not exist"):
        FewShotFinetune(str(tmp_path / "nope.ckpt"), 10, None, 1, 16)
    with pytest.raises(CheckpointError, match="num_classes: checkpoint 10, data 7"):
        FewShotFinetune(str(source_ckpt), 7, None, 1, 16)
    with pytest.raises(CheckpointError, match="in_chans: checkpoint 1, data 3"):
        SHOT(str(source_ckpt), 10, None, 3, 16)


# ------------------------------------------------------------------------------ every config via the CLI
SFDA = CONFIGS / "sfda"
ADAPTERS = ("ft", "lp", "lp_ft", "ft_sam", "shot", "nrc", "aad")


def _source(config: str, data_args: list[str], out: Path) -> Path:
    run_cli(["fit", "--config", SFDA / f"{config}.yaml", *data_args, "--trainer.max_epochs=1",
             "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"])
    return next(out.rglob("last.ckpt"))


def _families(tmp_path: Path, synthetic_root: Path, digits: Path) -> dict[str, tuple[list[str], list[str]]]:
    office = tmp_path / "office"
    rng = np.random.default_rng(0)
    for domain in ("amazon", "webcam"):
        for c in ("bike", "cup"):
            (office / domain / c).mkdir(parents=True)
            for i in range(8):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(office / domain / c / f"{i}.png")
    fim = ["--data.init_args.source=group!=ab3", "--data.init_args.target=group=ab3"]
    return {  # family: (root and overrides, configs that adapt from that family's source model)
        "mnist_usps": ([str(digits)], [f"mnist_usps_{a}" for a in ADAPTERS]),
        "mnist_usps_label_shift": ([str(digits)], ["mnist_usps_label_shift_ft", "mnist_usps_label_shift_shot"]),
        "mnist_usps_ood": ([str(digits)], ["mnist_usps_ood_ft", "mnist_usps_ood_shot"]),
        "fim": ([str(synthetic_root), *fim], ["fim_ft", "fim_lp_ft", "fim_shot", "fim_nrc", "fim_aad"]),
        "fim_color_to_mono": ([str(synthetic_root), "--data.init_args.source=group!=ab3@color",
                               "--data.init_args.target=group=ab3@mono"], ["fim_color_to_mono_ft"]),
        "office31": ([str(office)], ["office31_ft"]),
    }


FAMILIES = ("mnist_usps", "mnist_usps_label_shift", "mnist_usps_ood", "fim", "fim_color_to_mono", "office31")


def test_the_families_cover_every_sfda_config(tmp_path, synthetic_root, digits):
    covered = {f"{family}_source" for family in FAMILIES}
    covered |= {name for _, adapters in _families(tmp_path, synthetic_root, digits).values() for name in adapters}
    assert covered == {p.stem for p in SFDA.glob("*.yaml") if p.stem != "trainer"}


# The first family runs in the quick suite; the others (same modules, other data) are slow on 2 shared cores.
@pytest.mark.parametrize("family", [FAMILIES[0], *(pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES[1:])])
def test_every_sfda_config_runs_through_the_cli(family, tmp_path, synthetic_root, digits, capsys):
    root_and_args, adapters = _families(tmp_path, synthetic_root, digits)[family]
    out = tmp_path / family
    args = [*fast_args(root_and_args[0], out, image_size=16 if "mnist" in family else 32), *root_and_args[1:]]
    ckpt = _source(f"{family}_source", args, out)
    assert torch.load(ckpt, weights_only=False)["hyper_parameters"]["bottleneck_dim"] == 256
    for name in adapters:
        run_cli(["fit", "--config", SFDA / f"{name}.yaml", *args, "--trainer.fast_dev_run=true",
                 f"--model.init_args.source_checkpoint={ckpt}"])
    run_cli(["test", "--config", SFDA / f"{family}_source.yaml", *args, f"--ckpt_path={ckpt}"])
    assert "test_acc" in capsys.readouterr().out


def test_cli_reports_a_mismatched_source_checkpoint(tmp_path, digits, capsys):
    out = tmp_path / "run"
    args = fast_args(digits, out, image_size=16)
    ckpt = _source("mnist_usps_source", args, out)
    assert run_main(["fit", "--config", SFDA / "mnist_usps_ood_ft.yaml", *args, "--trainer.fast_dev_run=true",
                     f"--model.init_args.source_checkpoint={ckpt}"]) == 2
    assert "num_classes: checkpoint 10, data 7" in capsys.readouterr().err


# ------------------------------------------------------------------------------ MNIST -> USPS, real data
MNIST_USPS = SHARED_DATA / "domain-adaptation" / "MNIST_vs_USPS.mat"


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_USPS.is_file(), reason=f"shared data {MNIST_USPS} is absent (a user's clone)")
def test_mnist_to_usps_fewshot_and_shot_beat_source_only(tmp_path):
    pl.seed_everything(0)
    dm = DomainDataModule(root=str(MNIST_USPS), image_size=32, n_shot=3, seed=0)
    source = SourceModel("test_resnet", dm.num_classes, dm.classes, dm.in_chans, dm.image_size, lr=3e-3)
    trainer = pl.Trainer(max_epochs=6, default_root_dir=tmp_path / "src", logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(source, dm)
    ckpt = trainer.checkpoint_callback.best_model_path
    source_only = trainer.test(source, dm, ckpt_path=ckpt, verbose=False)[0]["test_acc"]
    assert 0.5 < source_only < 0.97  # measured: a real domain gap, far above chance

    def adapted(model, epochs: int) -> float:
        trainer = pl.Trainer(max_epochs=epochs, default_root_dir=tmp_path / type(model).__name__, logger=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[pl.callbacks.ModelCheckpoint(monitor="val_loss", mode="min")])
        trainer.fit(model, dm)
        return trainer.test(model, dm, ckpt_path="best", verbose=False)[0]["test_acc"]

    args = dict(source_checkpoint=ckpt, num_classes=10, class_names=dm.classes, in_chans=1, img_size=32)
    ft = adapted(FewShotFinetune(**args, steps=100, val_every=25), 1)
    shot = adapted(SHOT(**args), 3)
    print(f"MNIST->USPS seed 0: source-only {source_only:.4f}, 3-shot FT {ft:.4f}, SHOT {shot:.4f}")
    assert ft > source_only and shot > source_only
