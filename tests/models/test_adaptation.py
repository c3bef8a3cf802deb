"""The adaptation family on tiny data: few-shot stages, the source-free methods, source checkpoints, the
data-model contract, and every sfda entry config with every method file through the real CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from fimtest import (
    CONFIGS,
    SHARED_DATA,
    assert_learns,
    assert_logged,
    fast_args,
    fit_on_one_batch,
    run_cli,
    run_main,
    write_digits,
)
from PIL import Image

from fimvision.data.domains import DomainDataModule
from fimvision.errors import CheckpointError, ConfigError
from fimvision.models.adaptation import (
    SHOT,
    FewShotFinetune,
    SourceModel,
    load_source,
)


# ------------------------------------------------------------------------------ modules on tiny data
@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits") / "MNIST_vs_USPS.mat", per_class=12)


@pytest.fixture(scope="module")
def source_ckpt(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("source")
    dm = DomainDataModule(root=str(digits), image_size=16, batch_size=32, n_shot=2, train_on="source")
    model = SourceModel(backbone="test_resnet", num_classes=dm.num_classes, class_names=dm.classes,
                        in_chans=dm.in_chans, img_size=dm.image_size)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, default_root_dir=out,
                         logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    return Path(trainer.checkpoint_callback.best_model_path)


def _adapt(model, dm, **trainer_args) -> pl.Trainer:
    dm.serve(model.train_on)  # what the CLI does: the data module serves what the model trains on
    trainer = pl.Trainer(**{"max_epochs": 1, **model.trainer_settings(), **trainer_args}, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, dm)
    return trainer


def test_fewshot_stages(digits, source_ckpt):
    dm = DomainDataModule(root=str(digits), image_size=16, n_shot=2, fewshot_batches=2)
    args = dict(source_checkpoint=str(source_ckpt), num_classes=10, class_names=dm.classes, in_chans=1, img_size=16)
    source = load_source(str(source_ckpt), 10, dm.classes, 1, 16)[0].state_dict()
    lp_ft = FewShotFinetune(**args, adapt="lp-ft", steps=10, lp_fraction=0.3)
    assert [lp_ft.stage_at(s) for s in (0, 2, 3, 9)] == ["classifier", "classifier", "all", "all"]
    probe = FewShotFinetune(**args, adapt="classifier", steps=4, classifier_lr=1e-2)
    _adapt(probe, dm)
    assert probe.global_step == 4  # `steps` sets the length (through trainer_settings, as the CLI passes it)
    after = probe.net.state_dict()
    body = [k for k in source if not k.startswith("classifier")]
    assert all(torch.equal(source[k], after[k]) for k in body)  # weights and BN statistics untouched
    assert not torch.equal(source["classifier.parametrizations.weight.original1"],
                           after["classifier.parametrizations.weight.original1"])
    full = FewShotFinetune(**args, adapt="all", steps=2, lr=1e-3, sam_rho=0.05)
    _adapt(full, dm)
    first = next(k for k in source if k.startswith("backbone.") and k.endswith("weight"))
    assert not torch.equal(source[first], full.net.state_dict()[first])


def test_shot_freezes_the_classifier_and_uses_no_target_labels(digits, source_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dm = DomainDataModule(root=str(digits), image_size=16, n_shot=2, batch_size=32)
    model = SHOT(source_checkpoint=str(source_ckpt), num_classes=10, class_names=dm.classes, in_chans=1, img_size=16)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    _adapt(model, dm, max_steps=3)
    assert not list(tmp_path.rglob("*.ckpt"))  # enable_checkpointing=False holds for its own checkpoint callback
    after = model.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("classifier"))
    assert not torch.equal(before["bottleneck.0.weight"], after["bottleneck.0.weight"])
    assert model.pseudo[dm.split.pool].min() >= 0 and len(model.pseudo) == dm.split.pool.max() + 1


def test_source_checkpoint_errors(digits, source_ckpt, tmp_path):
    common = dict(num_classes=10, in_chans=1, img_size=16)
    with pytest.raises(CheckpointError, match="source_checkpoint is not set"):
        FewShotFinetune(**common)
    with pytest.raises(CheckpointError, match="does not exist"):
        FewShotFinetune(source_checkpoint=str(tmp_path / "nope.ckpt"), **common)
    with pytest.raises(CheckpointError, match="num_classes: checkpoint 10, data 7"):
        FewShotFinetune(source_checkpoint=str(source_ckpt), **{**common, "num_classes": 7})
    with pytest.raises(CheckpointError, match="in_chans: checkpoint 1, data 3"):
        SHOT(source_checkpoint=str(source_ckpt), **{**common, "in_chans": 3})


def test_a_data_module_that_serves_something_else_is_refused(digits):
    dm = DomainDataModule(root=str(digits), image_size=16, n_shot=2)
    with pytest.raises(ConfigError, match="use ParticleDataModule"):
        dm.serve("labelled")
    with pytest.raises(ConfigError, match="train_on is not set"):
        dm.train_dataloader()


# ------------------------------------------------------------------------------ every config via the CLI
SFDA = CONFIGS / "sfda"
MODELS = SFDA / "models"
ADAPTERS = sorted(p.stem for p in MODELS.glob("*.yaml") if not p.stem.startswith("source"))


def _entry_args(tmp_path: Path, synthetic_root: Path, digits: Path) -> dict[str, tuple[Path, int, list[str]]]:
    """Each sfda entry config with the data that makes it run here: (root, image size, further arguments)."""
    office = tmp_path / "office"
    rng = np.random.default_rng(0)
    for domain in ("amazon", "webcam"):
        for c in ("bike", "cup"):
            (office / domain / c).mkdir(parents=True, exist_ok=True)
            for i in range(8):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(office / domain / c / f"{i}.png")
    return {
        "mnist_usps": (digits, 16, []), "mnist_usps_label_shift": (digits, 16, []), "mnist_usps_ood": (digits, 16, []),
        "fim_antibody": (synthetic_root, 32, ["--data.init_args.source=group!=ab3", "--data.init_args.target=group=ab3"]),
        "fim_color_to_mono": (synthetic_root, 32, ["--data.init_args.source=group!=ab3@color",
                                                   "--data.init_args.target=group=ab3@mono"]),
        "office31": (office, 32, []),
    }


def _source(entry: str, args: list[str], out: Path) -> Path:
    run_cli(["fit", "--config", SFDA / f"{entry}.yaml", "--model", MODELS / "source_small_cnn.yaml", *args,
             "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"])
    return next(out.rglob("last.ckpt"))


ENTRIES = ("mnist_usps", "mnist_usps_label_shift", "mnist_usps_ood", "fim_antibody", "fim_color_to_mono", "office31")


def test_the_entries_cover_every_sfda_data_config(tmp_path, synthetic_root, digits):
    entries = {p.stem for p in SFDA.glob("*.yaml")}
    assert entries == set(_entry_args(tmp_path, synthetic_root, digits))
    assert entries == {p.stem for p in (SFDA / "data").glob("*.yaml")}


# Logged by each kind of method, besides train_loss (documented in docs/sfda.md).
DOCUMENTED = {"fewshot": ("val_loss", "val_acc", "val_balanced_acc", "val_f1_macro"), "target": ("val_snd", "val_im")}


def test_every_method_learns_on_the_digits_entry(tmp_path, digits):
    out = tmp_path / "mnist_usps"
    args = ["--config", SFDA / "mnist_usps.yaml", *fast_args(digits, out, image_size=16)]
    _, metrics = fit_on_one_batch([*args, "--model", MODELS / "source_small_cnn.yaml"], out / "source")
    assert_learns(metrics)
    assert_logged(metrics, "val_loss", "val_acc", "val_f1_macro")
    source = run_cli(["fit", *args, "--model", MODELS / "source_small_cnn.yaml", "--trainer.max_epochs=2"])
    ckpt = source.trainer.checkpoint_callback.best_model_path  # a source model worth adapting
    for name in ADAPTERS:
        few_shot = ["--model.init_args.steps=8", "--data.init_args.fewshot_batches=1"] if "ft" in name else []
        cli, metrics = fit_on_one_batch([*args, "--model", MODELS / f"{name}.yaml", *few_shot,
                                         f"--model.init_args.source_checkpoint={ckpt}"], out / name)
        assert cli.datamodule.train_on == cli.model.train_on  # the CLI told the data module
        assert_logged(metrics, "train_loss", *DOCUMENTED[cli.model.train_on])
        if name in ("shot", "nrc"):  # their losses read pseudo-labels or neighbour banks that change with the
            # network: not a progress measure on one batch. They must adapt the features, not the classifier.
            start = load_source(ckpt, 10, None, 1, 16)[0].state_dict()
            now = cli.model.net.state_dict()
            assert torch.equal(start["classifier.parametrizations.weight.original1"],
                               now["classifier.parametrizations.weight.original1"])  # the source hypothesis stays
            assert not torch.equal(start["bottleneck.0.weight"], now["bottleneck.0.weight"])  # the features adapt
        elif name != "ft_classifier":  # a linear probe at lr 1e-4 barely moves in 8 steps; see test_fewshot_stages
            assert_learns(metrics, name)


# The other entries (the same modules on other data) run source, FT and SHOT once; slow on 2 shared cores.
@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES[1:])
def test_methods_run_on_every_sfda_entry(entry, tmp_path, synthetic_root, digits, capsys):
    out = tmp_path / entry
    root, size, extra = _entry_args(tmp_path, synthetic_root, digits)[entry]
    args = [*fast_args(root, out, image_size=size), *extra]
    ckpt = _source(entry, args, out)
    assert torch.load(ckpt, weights_only=False)["hyper_parameters"]["bottleneck_dim"] == 256
    for name in ["ft_all", "shot"]:
        cli = run_cli(["fit", "--config", SFDA / f"{entry}.yaml", "--model", MODELS / f"{name}.yaml", *args,
                       "--trainer.fast_dev_run=true", f"--model.init_args.source_checkpoint={ckpt}"])
        assert torch.isfinite(cli.trainer.callback_metrics["train_loss"]), name
    run_cli(["test", "--config", SFDA / f"{entry}.yaml", "--model", MODELS / "source_small_cnn.yaml", *args,
             f"--ckpt_path={ckpt}"])
    assert "test_acc" in capsys.readouterr().out


def test_fewshot_batch_size_and_length_come_from_the_settings(tmp_path, digits):
    out = tmp_path / "run"
    args = [*fast_args(digits, out, image_size=16)]
    ckpt = _source("mnist_usps", args, out)
    cli = run_cli(["fit", "--config", SFDA / "mnist_usps.yaml", "--model", MODELS / "ft_all.yaml", *args,
                   f"--model.init_args.source_checkpoint={ckpt}", "--model.init_args.steps=6",
                   "--data.init_args.fewshot_batch_size=8", "--data.init_args.fewshot_batches=3"])
    assert cli.trainer.train_dataloader.batch_size == 8  # was always 32, whatever the setting said
    assert cli.trainer.global_step == 6 and cli.trainer.current_epoch == 2  # 6 steps, validation every 3
    val_rows = pd.read_csv(Path(cli.trainer.log_dir) / "metrics.csv").dropna(subset=["val_loss"])
    assert len(val_rows.query("step > 0")) == 2


def test_moved_options_name_their_new_place(tmp_path, digits, capsys):
    args = fast_args(digits, tmp_path, image_size=16)
    assert run_main(["fit", "--config", SFDA / "mnist_usps.yaml", "--model", MODELS / "ft_all.yaml", *args,
                     "--model.init_args.fewshot_batch_size=8"]) == 2
    assert "moved to --data.init_args.fewshot_batch_size" in capsys.readouterr().err


def test_cli_reports_a_mismatched_source_checkpoint(tmp_path, digits, capsys):
    out = tmp_path / "run"
    args = fast_args(digits, out, image_size=16)
    ckpt = _source("mnist_usps", args, out)
    assert run_main(["fit", "--config", SFDA / "mnist_usps_ood.yaml", "--model", MODELS / "ft_all.yaml", *args,
                     "--trainer.fast_dev_run=true", f"--model.init_args.source_checkpoint={ckpt}"]) == 2
    assert "num_classes: checkpoint 10, data 7" in capsys.readouterr().err


# ------------------------------------------------------------------------------ MNIST -> USPS, real data
MNIST_USPS = SHARED_DATA / "domain-adaptation" / "MNIST_vs_USPS.mat"


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_USPS.is_file(), reason=f"shared data {MNIST_USPS} is absent (a user's clone)")
def test_mnist_to_usps_fewshot_and_shot_beat_source_only(tmp_path):
    pl.seed_everything(0)
    dm = DomainDataModule(root=str(MNIST_USPS), image_size=32, n_shot=3, seed=0, fewshot_batches=25)
    dm.serve("source")
    source = SourceModel(backbone="test_resnet", num_classes=dm.num_classes, class_names=dm.classes,
                         in_chans=dm.in_chans, img_size=dm.image_size, lr=3e-3)
    trainer = pl.Trainer(max_epochs=6, default_root_dir=tmp_path / "src", logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(source, dm)
    ckpt = trainer.checkpoint_callback.best_model_path
    source_only = trainer.test(source, dm, ckpt_path=ckpt, verbose=False)[0]["test_acc"]
    assert 0.5 < source_only < 0.97  # measured: a real domain gap, far above chance

    def adapted(model, epochs: int) -> float:
        dm.serve(model.train_on)
        trainer = pl.Trainer(**{"max_epochs": epochs, **model.trainer_settings()}, default_root_dir=tmp_path / type(model).__name__, logger=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[pl.callbacks.ModelCheckpoint(monitor="val_loss", mode="min")])
        trainer.fit(model, dm)
        return trainer.test(model, dm, ckpt_path="best", verbose=False)[0]["test_acc"]

    args = dict(source_checkpoint=ckpt, num_classes=10, class_names=dm.classes, in_chans=1, img_size=32)
    ft = adapted(FewShotFinetune(**args, steps=100), 1)
    shot = adapted(SHOT(**args), 3)
    print(f"MNIST->USPS seed 0: source-only {source_only:.4f}, 3-shot FT {ft:.4f}, SHOT {shot:.4f}")
    assert ft > source_only and shot > source_only
