"""Attention backend switching: the kernel really changes, and what the CPU lacks is refused."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from fimvision.efficiency.attention import (
    AttentionBackendError,
    attention_modules,
    available_backends,
    get_attention_backend,
    set_attention_backend,
)
from fimvision.models.backbones import create_backbone

FLASH_CPU = "aten::_scaled_dot_product_flash_attention_for_cpu"
MATH = "aten::_scaled_dot_product_attention_math"


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_backbone("test_vit", img_size=32, patch_size=8, num_classes=3).eval()


def op_names(model, train: bool = False) -> set[str]:
    x = torch.randn(2, 3, 32, 32)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        if train:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return {e.key for e in prof.key_averages()}


def test_cpu_offers_exactly_math_and_flash():
    assert available_backends("cpu") == ["auto", "math", "flash", "unfused"]


@pytest.mark.parametrize("backend", ["efficient", "cudnn"])
def test_refuses_backend_the_cpu_lacks(vit, backend):
    set_attention_backend(vit, "math")
    with pytest.raises(AttentionBackendError, match=f"'{backend}' is not available on cpu.*math, flash"):
        set_attention_backend(vit, backend)
    assert get_attention_backend(vit) == "math"  # nothing was half-switched


def test_unknown_backend_is_refused(vit):
    with pytest.raises(AttentionBackendError, match="unknown attention backend 'xformers'"):
        set_attention_backend(vit, "xformers")


def test_switching_changes_the_kernel_back_and_forth(vit):
    n = len(attention_modules(vit))
    assert n == set_attention_backend(vit, "flash") > 0
    ops = op_names(vit)
    assert FLASH_CPU in ops and MATH not in ops
    assert set_attention_backend(vit, "math") == n
    ops = op_names(vit)
    assert MATH in ops and FLASH_CPU not in ops
    set_attention_backend(vit, "unfused")
    ops = op_names(vit)
    assert not any("scaled_dot_product" in o for o in ops) and "aten::softmax" in ops
    set_attention_backend(vit, "flash")
    assert FLASH_CPU + "_backward" in op_names(vit, train=True)
    assert get_attention_backend(vit) == "flash"


def test_backends_agree_in_fp32_and_survive_deepcopy(vit):
    import copy

    x = torch.randn(2, 3, 32, 32)
    outs = {}
    for backend in ("math", "flash", "unfused", "auto"):
        set_attention_backend(vit, backend)
        with torch.no_grad():
            outs[backend] = vit(x)
    for backend, out in outs.items():
        torch.testing.assert_close(out, outs["math"], rtol=1e-5, atol=1e-5, msg=backend)
    set_attention_backend(vit, "math")
    clone = copy.deepcopy(vit)
    assert MATH in op_names(clone)


def test_cnn_has_no_attention_to_switch():
    assert set_attention_backend(create_backbone("test_resnet", num_classes=2), "flash") == 0
