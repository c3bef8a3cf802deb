"""The self-supervised losses and monitors fimvision adds to lightly's (closed-form tests in tests/losses/)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """Mean negative cosine similarity of rows of ``p`` and ``z`` (``z`` treated as a constant target)."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def symmetric_byol_loss(p0: Tensor, p1: Tensor, t0: Tensor, t1: Tensor) -> Tensor:
    """BYOL's symmetrised loss: each view's prediction against the target projection of the other view."""
    return 0.5 * (negative_cosine(p0, t1) + negative_cosine(p1, t0))


def embedding_std(z: Tensor) -> Tensor:
    """Collapse monitor: mean per-dimension std of L2-normalised embeddings (B, D), times sqrt(D).

    About 1 for embeddings spread evenly over the unit sphere, 0 for collapsed ones (all equal).
    """
    z = F.normalize(z.detach().float(), dim=1)
    return z.std(dim=0).mean() * math.sqrt(z.shape[1])
