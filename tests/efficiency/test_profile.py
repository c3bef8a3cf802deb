"""Operator categories of torch.profiler: assignment, sum to the total, idle-share arithmetic."""

from __future__ import annotations

import time

import pytest
import torch

from fimvision.efficiency.attention import set_attention_backend
from fimvision.efficiency.profile import CATEGORIES, categorize, profile_workload, union_length
from fimvision.efficiency.steps import make_forward, make_train_step
from fimvision.models.backbones import create_backbone


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
    vit = create_backbone("test_vit", img_size=32, patch_size=8, num_classes=3)
    set_attention_backend(vit, "flash")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    fwd = profile_workload(make_forward(vit, x, "32-true", "cpu"), "cpu", warmup=1, steps=2)
    assert sum(fwd["categories_us"].values()) == pytest.approx(fwd["total_us"], rel=1e-9)
    assert sum(fwd["shares"].values()) == pytest.approx(1.0)
    assert set(fwd["categories_us"]) == set(CATEGORIES)
    assert fwd["categories_us"]["attention"] > 0 and fwd["categories_us"]["linear/matmul"] > 0
    assert fwd["categories_us"]["convolution"] > 0  # the patch embedding
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in fwd["op_names"]
    step = make_train_step(torch.nn.Module(), vit, x, y, "32-true", "cpu")
    train = profile_workload(step, "cpu", warmup=1, steps=2)
    assert sum(train["categories_us"].values()) == pytest.approx(train["total_us"], rel=1e-9)
    assert train["total_us"] > 1.5 * fwd["total_us"]
    # The total is real operator time: a sizeable part of, and not more than, the measured wall time.
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    wall_us = (time.perf_counter() - t0) / 3 * 1e6
    assert 0.2 * wall_us < train["total_us"] < 1.5 * wall_us
    assert train["gpu_idle_share"] is None
