"""The emulated attention microbenchmark and its three laws."""

from __future__ import annotations

import pytest
import torch

from fimvision.efficiency.emulation import (
    baseline_attention,
    microbenchmark,
    random_qkv,
    round_mantissa,
    tiled_attention,
)


def test_round_mantissa_matches_real_formats():
    x = torch.randn(10000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(round_mantissa(x, 23), x.float().double())
    assert torch.equal(round_mantissa(x, 7), x.bfloat16().double())
    assert torch.equal(round_mantissa(x, 52), x)
    ties = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8], dtype=torch.float64)  # halfway: to even
    assert round_mantissa(ties, 7).tolist() == [1.0, 1 + 2**-6]


@pytest.fixture(scope="module")
def sweep():
    return microbenchmark(seq_lens=(128,), tiles=(8, 32, 128), bits=(7, 10, 16, 23), head_dim=32, batch=2, seeds=(0, 1))


def _dev(rows, variant, tile, bits):
    (row,) = [r for r in rows if r["variant"] == variant and r["tile"] == tile and r["bits"] == bits]
    return row["mean_abs"]


@pytest.mark.parametrize("variant,tile", [("baseline", 128), ("fa1", 8), ("fa2", 8), ("fa2", 32)])
def test_law_more_mantissa_bits_less_deviation(sweep, variant, tile):
    devs = [_dev(sweep, variant, tile, b) for b in (7, 10, 16, 23)]
    assert all(a > 4 * b for a, b in zip(devs, devs[1:], strict=False)), devs


@pytest.mark.parametrize("variant", ["fa1", "fa2"])
def test_law_one_tile_equals_baseline_at_fp64(variant):
    q, k, v = random_qkv(200, 32, batch=3, seed=3)
    torch.testing.assert_close(tiled_attention(q, k, v, bits=52, tile=200, variant=variant),
                               baseline_attention(q, k, v, 52), rtol=0, atol=1e-13)
    # With several tiles the fp64 result still agrees (tiling is exact in exact arithmetic) ...
    torch.testing.assert_close(tiled_attention(q, k, v, bits=52, tile=16, variant=variant),
                               baseline_attention(q, k, v, 52), rtol=0, atol=1e-13)
    # ... but not at low precision, where the rescaling rounds.
    assert not torch.allclose(tiled_attention(q, k, v, bits=10, tile=16, variant=variant),
                              baseline_attention(q, k, v, 10), rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ["fa1", "fa2"])
@pytest.mark.parametrize("bits", [7, 10, 16])
def test_law_larger_tiles_less_deviation(sweep, variant, bits):
    devs = [_dev(sweep, variant, t, bits) for t in (8, 32, 128)]
    assert devs[0] > devs[1] > devs[2], devs
