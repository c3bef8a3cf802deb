"""Every `fimvision-efficiency` subcommand through its real CLI on tiny models, with the shipped settings."""

from __future__ import annotations

import json

import pytest
from fimtest import CONFIGS

from fimvision.efficiency.cli import main

VIT = [f"--config={CONFIGS / 'supervised/vit_color.yaml'}", "--model.init_args.backbone=test_vit",
       "--data.init_args.image_size=32", "--data.init_args.num_workers=0", "--data.init_args.root=/nonexistent"]
CNN = [f"--config={CONFIGS / 'supervised/resnet18_mono.yaml'}", "--model.init_args.backbone=test_resnet",
       "--data.init_args.image_size=32", "--data.init_args.root=/nonexistent"]


def run(sub: str, model: list[str], out, *extra: str) -> dict:
    assert main([sub, *model, f"--settings={CONFIGS / 'efficiency' / f'{sub}.yaml'}", f"--out={out}", "--device=cpu",
                 *extra]) == 0
    return json.loads((out / f"{sub}.json").read_text())


def test_deviation_cli(tmp_path, capsys):
    res = run("deviation", VIT, tmp_path, "--backends=[flash]", "--precisions=[32-true,bf16-mixed]", "--micro_seq_lens=[64]",
              "--micro_tiles=[16,64]", "--micro_bits=[7,23]", "--micro_seeds=[0]", "--batch_size=2")
    summary = {(r["backend"], r["precision"]): r for r in res["layers_summary"]}
    assert summary[("flash", "32-true")]["max_abs"] < 1e-5 and summary[("flash", "bf16-mixed")]["max_abs"] > 1e-4
    assert summary[("flash", "bf16-mixed")]["layers_pass"] == "6/6"
    assert "float64" in summary[("flash", "32-true")]["reference"]
    assert {(r["backend"], r["precision"]) for r in res["model_level"]} >= {("flash", "32-true"), ("math", "bf16-mixed")}
    assert (tmp_path / "micro.png").stat().st_size > 0 and (tmp_path / "layers.csv").is_file()
    assert "reference (bfloat16): unfused attention" in capsys.readouterr().out


def test_benchmark_cli_cnn_and_refusal(tmp_path, capsys):
    res = run("benchmark", CNN, tmp_path, "--batch_sizes=[2]", "--repeats=2", "--warmup=1", "--precisions=[32-true]")
    rows = res["rows"]
    assert {(r["mode"], r["backend"]) for r in rows} == {("inference", "n/a"), ("train", "n/a")}
    assert all(r["images_per_s"] > 0 and r["peak_mem_mib"] > 0 and r["mfu_vs_bf16_matmul"] > 0 for r in rows)
    assert rows[0]["images_per_s_min"] <= rows[0]["images_per_s"] <= rows[0]["images_per_s_max"]
    assert "images_per_s" in capsys.readouterr().out
    assert main(["benchmark", *VIT, f"--out={tmp_path / 'x'}", "--device=cpu", "--backends=[efficient]",
                 "--mfu=false"]) == 2
    assert "'efficient' is not available on cpu" in capsys.readouterr().err


def test_profile_cli(tmp_path):
    res = run("profile", VIT, tmp_path, "--batch_size=2", "--steps=1", "--warmup=1")
    assert set(res["workloads"]) == {"forward flash", "train flash", "forward unfused", "train unfused"}
    for name, w in res["workloads"].items():
        assert sum(w["categories_us"].values()) == pytest.approx(w["total_us"])
        assert w["categories_us"]["attention"] > 0, name
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in res["workloads"]["forward flash"]["op_names"]
    assert (tmp_path / "profile.png").stat().st_size > 0


@pytest.mark.slow  # four short Lightning runs: about a minute on 2 cores
def test_drift_cli(tmp_path, synthetic_root):
    vit = [a for a in VIT if "root" not in a] + [f"--data.init_args.root={synthetic_root}"]
    res = run("drift", vit, tmp_path, "--steps=4", "--every_n_steps=2", "--batch_size=4")
    pairs = {r["pair"]: r for r in res["final"]}
    assert set(pairs) == {"seed 0 vs 1", "bf16-mixed vs 32-true", "flash vs math"}
    assert all(r["step"] == 4 and r["max_abs"] > 0 and r["wasserstein"] > 0 for r in pairs.values())
    import pandas as pd

    table = pd.read_csv(tmp_path / "drift.csv")
    at0 = table[(table.step == 0) & (table.tensor == "__model__")]
    assert len(at0) == 3 and (at0.max_abs == 0).all()  # paired runs start from the same weights
    assert (tmp_path / "drift.png").is_file() and not (tmp_path / "snapshots" / "base").exists()


def test_chai_cli(tmp_path, synthetic_root):
    vit = [a for a in VIT if "root" not in a and "backbone" not in a] + [
        f"--data.init_args.root={synthetic_root}", "--model.init_args.backbone=vit_tiny_patch16_224",
        "--model.init_args.backbone_kwargs={patch_size: 8, depth: 2}"]
    res = run("chai", vit, tmp_path, "--batch_size=8", "--eval_batches=2")
    s = res["summary"]
    assert all(1 <= layer["clusters"] <= 3 for layer in res["layers"]) and len(res["layers"]) == 2
    k = sum(layer["clusters"] for layer in res["layers"])
    assert s["attention_macs_saved"] == (6 - k) * 17 * 17 * 64  # (heads - clusters) * N^2 * head_dim
    assert 0 <= s["top1_agreement"] <= 1 and 0 <= s["accuracy"] <= 1 and s["images"] == 16
