"""In-model and model-level deviation against the fp64 golden on a tiny ViT."""

from __future__ import annotations

import pytest
import torch

from fimvision.efficiency.deviation import error_stats, in_model_deviation, model_deviation
from fimvision.models.backbones import create_backbone


@pytest.fixture(scope="module")
def vit_and_input():
    torch.manual_seed(0)
    vit = create_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=4).eval()
    return vit, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_error_stats_exact():
    stats = error_stats(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 1.0, 2.0]))
    assert stats["max_abs"] == 2.0
    assert stats["mean_abs"] == pytest.approx(1.0)
    assert stats["rmse"] == pytest.approx((5 / 3) ** 0.5)
    assert stats["rel"] == pytest.approx(5**0.5 / 6**0.5)


def test_flash_fp32_is_within_1e5_of_golden(vit_and_input):
    vit, x = vit_and_input
    rows = in_model_deviation(vit, x, backend="flash", precision="32-true")
    assert len(rows) == 12 and {r["dtype"] for r in rows} == {"float32"}
    assert all(0 < r["max_abs"] < 1e-5 for r in rows)
    assert all(r["pass"] for r in rows)


def test_flash_bf16_deviation_is_in_bf16_range(vit_and_input):
    vit, x = vit_and_input
    rows = in_model_deviation(vit, x, backend="flash", precision="bf16-mixed")
    assert {r["dtype"] for r in rows} == {"bfloat16"}
    assert all(1e-4 < r["max_abs"] < 1e-1 for r in rows)
    assert all(1e-4 < r["ref_max_abs"] < 1e-1 for r in rows)
    # The rule passes, and it is not vacuous: bf16 deviation is far above the floor.
    assert all(r["pass"] and r["max_abs"] <= 2 * r["ref_max_abs"] + 1e-5 for r in rows)


def test_rule_fails_a_wrong_kernel(vit_and_input, monkeypatch):
    import fimvision.efficiency.deviation as deviation

    real = deviation._candidate
    # A candidate kernel 0.1 % off; the reference (the unfused path) stays right.
    monkeypatch.setattr(deviation, "_candidate", lambda b, *a, **k: real(b, *a, **k) * (1.001 if b == "flash" else 1))
    rows = deviation.in_model_deviation(vit_and_input[0], vit_and_input[1], backend="flash", precision="32-true")
    assert not any(r["pass"] for r in rows)


def test_model_level_against_fp64_copy(vit_and_input):
    vit, x = vit_and_input
    fp32 = {r["backend"]: r for r in model_deviation(vit, x, backend="flash", precision="32-true")}
    bf16 = {r["backend"]: r for r in model_deviation(vit, x, backend="flash", precision="bf16-mixed")}
    assert set(fp32) == {"flash", "math"}
    assert fp32["flash"]["max_abs"] < 1e-4 and fp32["flash"]["top1_agreement"] == 1.0
    assert 10 * fp32["flash"]["max_abs"] < bf16["flash"]["max_abs"] < 0.5
