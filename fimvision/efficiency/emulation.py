"""Numerically emulated attention: baseline and tiled (flash-style) with a chosen mantissa width.

Everything is computed in fp64 and every intermediate result (each matmul output, scaling, exponent,
sum, rescale and division) is rounded to ``bits`` explicit mantissa bits, round-to-nearest-even
(7: bf16, 10: fp16 and TF32, 23: fp32, 52: fp64 itself). Matmuls accumulate in fp64 and round their
output, like tensor cores with a wide accumulator. The exponent range is not limited (no overflow or
subnormals), so only mantissa rounding is emulated.

- baseline: ``S = qk^T * scale``; ``P = exp(S - rowmax) / rowsum``; ``O = P v``.
- flash, FA1 rescaling: per key/value tile, a normalised output is kept and rescaled by
  ``l_old * exp(m_old - m_new) / l_new`` at every tile (FlashAttention-1).
- flash, FA2 rescaling: an unnormalised output is rescaled by ``exp(m_old - m_new)`` per tile and
  divided by the row sum once at the end (FlashAttention-2).

Rows (queries) are independent, so tiling the queries does not change the numbers: only key/value
tiles are emulated. Deviation is measured against the fp64 baseline (the golden reference). The laws
the tests check: more mantissa bits give less deviation; one tile covering the whole sequence equals
the baseline at fp64; larger tiles (fewer rescalings) give less deviation.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import pandas as pd
import torch

Variant = Literal["baseline", "fa1", "fa2"]


def round_mantissa(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` (fp64) rounded to ``bits`` explicit mantissa bits, nearest-even; 52 or more: unchanged."""
    if bits >= 52:
        return x
    drop = 52 - bits
    # On the IEEE bit pattern: add half an ulp of the target width (minus one, plus the kept lowest bit:
    # ties to even) and clear the dropped bits; a carry rolls into the exponent as it should.
    if x.dtype != torch.float64:
        raise TypeError(f"round_mantissa works on float64, got {x.dtype}")
    i = x.contiguous().view(torch.int64)
    out = torch.bitwise_right_shift(i, drop).bitwise_and_(1).add_((1 << (drop - 1)) - 1).add_(i)
    return out.bitwise_and_(~((1 << drop) - 1)).view(torch.float64)


def baseline_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bits: int = 52) -> torch.Tensor:
    """Standard attention with every intermediate rounded to ``bits`` mantissa bits."""
    r = lambda t: round_mantissa(t, bits)  # noqa: E731
    scale = q.shape[-1] ** -0.5
    s = r(r(q @ k.transpose(-2, -1)) * scale)
    e = r(torch.exp(r(s - s.amax(-1, keepdim=True))))
    p = r(e / r(e.sum(-1, keepdim=True)))
    return r(p @ v)


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bits: int = 52, tile: int = 64,
                    variant: Literal["fa1", "fa2"] = "fa2") -> torch.Tensor:
    """Flash-style attention over key/value tiles of ``tile`` rows with FA1 or FA2 rescaling."""
    r = lambda t: round_mantissa(t, bits)  # noqa: E731
    scale = q.shape[-1] ** -0.5
    rows = q.shape[:-1] + (1,)
    m = torch.full(rows, -math.inf, dtype=q.dtype, device=q.device)
    l = torch.zeros(rows, dtype=q.dtype, device=q.device)  # noqa: E741
    o = torch.zeros_like(q[..., : v.shape[-1]])
    for start in range(0, k.shape[-2], tile):
        kj, vj = k[..., start:start + tile, :], v[..., start:start + tile, :]
        s = r(r(q @ kj.transpose(-2, -1)) * scale)
        if variant == "fa2":
            m_new = torch.maximum(m, s.amax(-1, keepdim=True))
            p = r(torch.exp(r(s - m_new)))
            alpha = r(torch.exp(r(m - m_new)))
            l = r(r(alpha * l) + r(p.sum(-1, keepdim=True)))  # noqa: E741
            o = r(r(alpha * o) + r(p @ vj))
        else:
            m_j = s.amax(-1, keepdim=True)
            p = r(torch.exp(r(s - m_j)))
            l_j = r(p.sum(-1, keepdim=True))
            m_new = torch.maximum(m, m_j)
            alpha, beta = r(torch.exp(r(m - m_new))), r(torch.exp(r(m_j - m_new)))
            l_new = r(r(alpha * l) + r(beta * l_j))
            o = r(r(r(r(l * alpha) * o) + r(beta * r(p @ vj))) / l_new)
            l = l_new  # noqa: E741
        m = m_new
    return r(o / l) if variant == "fa2" else o


def emulated_attention(q, k, v, variant: Variant = "fa2", bits: int = 52, tile: int = 64) -> torch.Tensor:
    """Baseline or tiled emulated attention (``tile`` is ignored by the baseline)."""
    if variant == "baseline":
        return baseline_attention(q, k, v, bits)
    return tiled_attention(q, k, v, bits, tile, variant)


def random_qkv(seq_len: int, head_dim: int = 64, batch: int = 4, seed: int = 0, std: float = 1.0):
    """Seeded normal q, k, v in fp64 of shape (batch, seq_len, head_dim)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, seq_len, head_dim, generator=g, dtype=torch.float64) * std for _ in range(3)]


def microbenchmark(seq_lens=(128, 512), tiles=(16, 64, 256), bits=(7, 10, 16, 23), variants=("baseline", "fa1", "fa2"),
                   head_dim: int = 64, batch: int = 4, seeds=(0, 1), std: float = 1.0) -> list[dict]:
    """Deviation of each emulated variant from the fp64 baseline over sequence length, tile and bits.

    Rows: variant, seq_len, tile (the sequence length for the baseline), bits, max_abs and mean_abs
    (averaged over ``seeds``). Tiles longer than the sequence are skipped.
    """
    rows = []
    for n, seed in itertools.product(seq_lens, seeds):
        q, k, v = random_qkv(n, head_dim, batch, seed, std)
        golden = baseline_attention(q, k, v, 52)
        for variant in variants:
            for tile in ([n] if variant == "baseline" else [t for t in tiles if t <= n]):
                for b in bits:
                    d = (emulated_attention(q, k, v, variant, b, tile) - golden).abs()
                    rows.append({"variant": variant, "seq_len": n, "tile": tile, "bits": b, "seed": seed,
                                 "max_abs": d.max().item(), "mean_abs": d.mean().item()})
    # Average over seeds: one row per (variant, seq_len, tile, bits).
    means = pd.DataFrame(rows).groupby(["variant", "seq_len", "tile", "bits"], sort=False)[["max_abs", "mean_abs"]].mean()
    return means.reset_index().to_dict("records")
