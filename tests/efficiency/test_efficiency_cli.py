"""Every `fimvision-efficiency` subcommand through its real CLI on tiny models of three families: a supervised
ViT classifier, a self-supervised ViT (DINO, multi-view batches) and an adaptation source model (CNN); and
the training step they all measure, on the module built from each config."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from fimtest import CONFIGS

from fimvision.efficiency.cli import main
from fimvision.efficiency.precision import copy_module, prepare_model
from fimvision.efficiency.steps import TrainStep, prepare_batch
from fimvision.efficiency.target import load_target

# Each family: a `fimvision fit` config and the overrides that make it tiny (synthetic input: no dataset there).
CONFIGS_AND_OVERRIDES = {
    "supervised": (CONFIGS / "supervised/vit_color.yaml", [
        "--model.init_args.backbone=test_vit", "--data.init_args.image_size=32", "--data.init_args.num_workers=0",
        "--data.init_args.root=/nonexistent"]),
    "dino": (CONFIGS / "ssl/pretrain.yaml", [
        "--model", str(CONFIGS / "ssl/models/dino_vit.yaml"), "--model.init_args.backbone=test_vit",
        "--model.init_args.output_dim=64", "--model.init_args.proj_hidden_dim=32", "--model.init_args.bottleneck_dim=16",
        "--data.init_args.image_size=32", "--data.init_args.num_workers=0", "--data.init_args.root=/nonexistent"]),
    "source": (CONFIGS / "sfda/mnist_usps.yaml", [
        "--model", str(CONFIGS / "sfda/models/source_small_cnn.yaml"),
        "--data.init_args.root=/nonexistent/MNIST_vs_USPS.mat"]),
}
FAMILIES = {name: ["--config", str(config), *overrides] for name, (config, overrides) in CONFIGS_AND_OVERRIDES.items()}
SUPERVISED, DINO, SOURCE = FAMILIES["supervised"], FAMILIES["dino"], FAMILIES["source"]
VITS = ("supervised", "dino")


def run(sub: str, model: list[str], out, *extra: str, settings: bool = True) -> dict:
    shipped = [f"--settings={CONFIGS / 'efficiency' / f'{sub}.yaml'}"] if settings else []
    assert main([sub, *model, *shipped, f"--out={out}", "--device=cpu", *extra]) == 0
    return json.loads((out / f"{sub}.json").read_text())


def with_root(model: list[str], root) -> list[str]:
    return [a for a in model if not a.startswith("--data.init_args.root")] + [f"--data.init_args.root={root}"]


@pytest.mark.parametrize("family", FAMILIES)
def test_train_step_is_the_modules_own(family):
    """Its loss is the module's training_step, its optimizer the one configure_optimizers returns, and it trains."""
    module = prepare_model(load_target(*CONFIGS_AND_OVERRIDES[family], use_data=False).module, "32-true", "cpu")
    batch = module.synthetic_batch(2, torch.Generator().manual_seed(0))
    reference = copy_module(module).train()
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="self.log"):  # a training_step without a trainer, as TrainStep calls it
        expected = reference.training_step(prepare_batch(batch, "32-true", "cpu"), 0)
    step = TrainStep(module, batch, "32-true", "cpu")
    configured = module.configure_optimizers()
    configured = configured["optimizer"] if isinstance(configured, dict) else configured
    assert type(step.optimizer) is type(configured) and step.optimizer.defaults == configured.defaults
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    torch.manual_seed(0)
    loss = step()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    moved = [n for n, p in module.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(moved) > len(before) / 2, f"only {len(moved)} of {len(before)} tensors changed"


@pytest.mark.parametrize("family", FAMILIES)
def test_deviation_cli(family, tmp_path, capsys):
    res = run("deviation", FAMILIES[family], tmp_path, "--parts=[layers,model]", "--backends=[flash]",
              "--precisions=[32-true,bf16-mixed]", "--batch_size=2")
    model = {(r["backend"], r["precision"]): r for r in res["model_level"]}
    if family in VITS:
        summary = {(r["backend"], r["precision"]): r for r in res["layers_summary"]}
        assert set(summary) == {("flash", "32-true"), ("flash", "bf16-mixed")}
        assert 0 < summary[("flash", "32-true")]["max_abs"] < 1e-5 < 1e-4 < summary[("flash", "bf16-mixed")]["max_abs"]
        assert all(r["layers_pass"] == "6/6" for r in summary.values())  # test_vit: 6 attention layers
        assert "float64" in summary[("flash", "32-true")]["reference"]
        assert set(model) == {("flash", "32-true"), ("math", "32-true"), ("flash", "bf16-mixed"), ("math", "bf16-mixed")}
        assert "reference (bfloat16): unfused attention" in capsys.readouterr().out
    else:
        assert "layers_summary" not in res and set(model) == {("n/a", "32-true"), ("n/a", "bf16-mixed")}
    assert all(math.isfinite(r["max_abs"]) and r["top1_agreement"] == 1.0 for r in model.values() if "32" in r["precision"])
    assert max(r["max_abs"] for r in model.values() if r["precision"] == "32-true") < 1e-4
    assert all(0 < r["max_abs"] < 0.5 for r in model.values() if r["precision"] == "bf16-mixed")


def test_deviation_micro(tmp_path):
    res = run("deviation", SUPERVISED, tmp_path, "--parts=[micro]", "--micro_seq_lens=[64]", "--micro_tiles=[16,64]",
              "--micro_bits=[7,23]", "--micro_seeds=[0]")
    dev = {(r["variant"], r["tile"], r["bits"]): r["mean_abs"] for r in res["micro"]}
    assert dev[("fa2", 16, 7)] > 100 * dev[("fa2", 16, 23)] > 0
    assert (tmp_path / "micro.png").stat().st_size > 0 and (tmp_path / "micro.csv").is_file()


@pytest.mark.parametrize("family", FAMILIES)
def test_benchmark_cli(family, tmp_path, capsys):
    backends = "[math,flash]" if family in VITS else "[math]"
    res = run("benchmark", FAMILIES[family], tmp_path, "--batch_sizes=[2]", "--repeats=2", "--warmup=1",
              f"--backends={backends}", "--precisions=[32-true,bf16-mixed]", f"--mfu={family == 'source'}")
    rows = res["rows"]
    expected = {(m, b, p) for m in ("inference", "train") for b in (("math", "flash") if family in VITS else ("n/a",))
                for p in ("32-true", "bf16-mixed")}
    assert {(r["mode"], r["backend"], r["precision"]) for r in rows} == expected
    assert all(not r["error"] and r["images_per_s"] > 0 and r["peak_mem_mib"] > 0 for r in rows)
    assert all(r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"] for r in rows)
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows if r["mode"] == "train")
    if family == "source":
        assert all(r["mfu_vs_bf16_matmul"] > 0 and r["gflop_per_call"] > 0 for r in rows)
        flops = {r["mode"]: r["gflop_per_call"] for r in rows}
        assert 2 * flops["inference"] < flops["train"] < 4 * flops["inference"]  # forward + backward
    assert "images_per_s" in capsys.readouterr().out


def test_benchmark_refuses_a_backend_the_cpu_lacks(tmp_path, capsys):
    assert main(["benchmark", *SUPERVISED, f"--out={tmp_path}", "--device=cpu", "--backends=[efficient]",
                 "--mfu=false"]) == 2
    assert "'efficient' is not available on cpu" in capsys.readouterr().err


@pytest.mark.parametrize("family", FAMILIES)
def test_profile_cli(family, tmp_path):
    res = run("profile", FAMILIES[family], tmp_path, "--batch_size=2", "--steps=1", "--warmup=1")
    workloads = res["workloads"]
    if family in VITS:
        assert set(workloads) == {"forward flash", "train flash", "forward unfused", "train unfused"}
        assert "aten::_scaled_dot_product_flash_attention_for_cpu" in workloads["forward flash"]["op_names"]
        assert all(w["categories_us"]["attention"] > 0 for w in workloads.values())
    else:
        assert set(workloads) == {"forward", "train"}
        assert workloads["train"]["categories_us"]["convolution"] > 0
    for name, w in workloads.items():
        assert sum(w["categories_us"].values()) == pytest.approx(w["total_us"]), name
    # The training step is the module's own: backward and its optimizer (AdamW) run.
    train_ops = set().union(*(w["op_names"] for n, w in workloads.items() if n.startswith("train")))
    assert any("Backward" in op for op in train_ops) and any("Optimizer.step#AdamW" in op for op in train_ops)
    assert (tmp_path / "profile.png").stat().st_size > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_drift_cli(family, tmp_path):
    pairs = "[seed,precision,backend]" if family in VITS else "[seed,precision]"
    res = run("drift", FAMILIES[family], tmp_path, "--steps=4", "--every_n_steps=2", "--batch_size=2", f"--pairs={pairs}")
    expected = {"seed 0 vs 1", "bf16-mixed vs 32-true"} | ({"flash vs math"} if family in VITS else set())
    final = {r["pair"]: r for r in res["final"]}
    assert set(final) == set(res["runs"]) == expected
    assert all(r["step"] == 4 and r["max_abs"] > 0 and r["wasserstein"] > 0 for r in final.values())
    for run_ in [res["base"], *res["runs"].values()]:  # each run trained: finite loss, weights moved
        assert run_["steps"] == 4 and math.isfinite(run_["train_loss"]) and run_["moved_max_abs"] > 0
    table = pd.read_csv(tmp_path / "drift.csv")
    at0 = table[(table.step == 0) & (table.tensor == "__model__")]
    assert len(at0) == len(expected) and (at0.max_abs == 0).all()  # paired runs start from the same weights
    assert (tmp_path / "drift.png").is_file() and not (tmp_path / "snapshots" / "base").exists()


def test_drift_on_multicrop_dataset(tmp_path, synthetic_root):
    """DINO on real multi-view batches (2 global and 2 local views of the dataset's particles)."""
    dino = with_root(DINO, synthetic_root) + ["--data", str(CONFIGS / "ssl/data/synthetic_color_multicrop.yaml"),
                                              "--data.init_args.n_local=2", "--data.init_args.local_size=16"]
    res = run("drift", with_root(dino, synthetic_root), tmp_path, "--steps=2", "--every_n_steps=1", "--batch_size=2",
              "--pairs=[seed]", settings=False)
    assert res["base"]["steps"] == 2 and math.isfinite(res["base"]["train_loss"]) and res["base"]["moved_max_abs"] > 0
    assert res["final"][0]["max_abs"] > 0


def test_chai_cli(tmp_path, synthetic_root):
    vit = [a for a in with_root(SUPERVISED, synthetic_root) if "backbone" not in a] + [
        "--model.init_args.backbone=vit_tiny_patch16_224", "--model.init_args.backbone_kwargs={patch_size: 8, depth: 2}"]
    res = run("chai", vit, tmp_path, "--batch_size=8", "--eval_batches=2")
    s = res["summary"]
    assert all(1 <= layer["clusters"] <= 3 for layer in res["layers"]) and len(res["layers"]) == 2
    k = sum(layer["clusters"] for layer in res["layers"])
    assert s["attention_macs_saved"] == (6 - k) * 17 * 17 * 64  # (heads - clusters) * N^2 * head_dim
    assert 0 <= s["top1_agreement"] <= 1 and 0 <= s["accuracy"] <= 1 and s["images"] == 16


def test_chai_refuses_a_cnn(tmp_path, capsys):
    assert main(["chai", *SOURCE, f"--out={tmp_path}", "--device=cpu", "--batch_size=2"]) == 2
    assert "no timm attention modules: CHAI applies to ViTs" in capsys.readouterr().err


@pytest.mark.parametrize("sub", ["benchmark", "profile", "drift"])
def test_manual_optimization_is_refused(sub, tmp_path, capsys):
    source = load_target(*CONFIGS_AND_OVERRIDES["source"], use_data=False).module
    ckpt = tmp_path / "source.ckpt"
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams),
                "pytorch-lightning_version": pl.__version__}, ckpt)
    finetune = [*SOURCE[:2], "--model", str(CONFIGS / "sfda/models/ft_all.yaml"),
                f"--model.init_args.source_checkpoint={ckpt}", SOURCE[-1]]
    assert main([sub, *finetune, f"--out={tmp_path / 'out'}", "--device=cpu", "--mfu=false"
                 if sub == "benchmark" else "--batch_size=2"]) == 2
    err = capsys.readouterr().err
    assert "FewShotFinetune uses manual optimization" in err and "benchmark its source model instead" in err
    assert not (tmp_path / "out" / f"{sub}.json").exists()
