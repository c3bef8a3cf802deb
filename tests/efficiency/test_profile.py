"""Operator categories of torch.profiler: assignment, sum to the total, idle-share arithmetic."""

from __future__ import annotations

import pytest
import torch

from fimvision.efficiency.attention import set_attention_backend
from fimvision.efficiency.profile import CATEGORIES, categorize, profile_workload, union_length
from fimvision.efficiency.steps import TrainStep, make_forward
from fimvision.models.classifier import ParticleClassifier


@pytest.mark.parametrize("name,category", [
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"), ("aten::softmax", "attention"),
    ("aten::_log_softmax", "other"), ("aten::mkldnn_convolution", "convolution"), ("aten::addmm", "linear/matmul"),
    ("aten::mm", "linear/matmul"), ("aten::native_layer_norm", "normalisation"), ("aten::gelu", "activation"),
    ("aten::copy_", "memory/copy"), ("aten::add", "other"), ("ampere_bf16_s16816gemm_bf16_128x64", "linear/matmul"),
])
def test_categorize(name, category):
    assert categorize(name) == category


def test_union_length():
    assert union_length([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == 4
    assert union_length([]) == 0


def test_categories_sum_to_total_and_cover_the_work():
    torch.manual_seed(0)
    module = ParticleClassifier(backbone="test_vit", backbone_kwargs={"patch_size": 8}, img_size=32, num_classes=3)
    set_attention_backend(module, "flash")
    batch = module.synthetic_batch(4, torch.Generator().manual_seed(0))
    fwd = profile_workload(make_forward(module, batch["image"], "32-true", "cpu"), "cpu", warmup=1, steps=2)
    assert sum(fwd["categories_us"].values()) == pytest.approx(fwd["total_us"], rel=1e-9)
    assert sum(fwd["shares"].values()) == pytest.approx(1.0)
    assert set(fwd["categories_us"]) == set(CATEGORIES)
    assert fwd["categories_us"]["attention"] > 0 and fwd["categories_us"]["linear/matmul"] > 0
    assert fwd["categories_us"]["convolution"] > 0  # the patch embedding
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in fwd["op_names"]
    train = profile_workload(TrainStep(module, batch, "32-true", "cpu"), "cpu", warmup=1, steps=2)
    assert sum(train["categories_us"].values()) == pytest.approx(train["total_us"], rel=1e-9)
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in train["op_names"]
    assert any("Optimizer.step#AdamW" in op for op in train["op_names"])  # the module's own optimizer
    assert train["gpu_idle_share"] is None
