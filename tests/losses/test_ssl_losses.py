"""The self-supervised losses and monitors fimvision adds (fimvision/losses/ssl.py), on closed-form cases."""

from __future__ import annotations

import math

import pytest
import torch

from fimvision.losses import embedding_std, negative_cosine, symmetric_byol_loss


def test_negative_cosine_closed_form():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # cosines 1 and 1/sqrt(2)
    assert negative_cosine(p, z).item() == pytest.approx(-(1 + 1 / math.sqrt(2)) / 2)
    z.requires_grad_(True)
    negative_cosine(p.requires_grad_(True), z).backward()
    assert z.grad is None  # the target is a constant


def test_symmetric_byol_pairs_each_prediction_with_the_other_views_target():
    e0, e1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # p0 equals t1 and p1 equals t0: the best possible loss, -1; swapped pairing would give 0.
    assert symmetric_byol_loss(e1, e0, e0, e1).item() == pytest.approx(-1.0)
    assert symmetric_byol_loss(e0, e1, e0, e1).item() == pytest.approx(0.0)


def test_collapse_monitor_is_one_when_spread_and_zero_when_collapsed():
    assert embedding_std(torch.ones(8, 4) * 3).item() == pytest.approx(0.0)
    # +-e_i: each dimension holds one +1 and one -1 among 2D rows: std = sqrt(2 / (2D - 1)).
    d = 4
    spread = torch.cat([torch.eye(d), -torch.eye(d)])
    assert embedding_std(spread).item() == pytest.approx(math.sqrt(2 / (2 * d - 1)) * math.sqrt(d))
    assert embedding_std(torch.randn(4096, 32, generator=torch.Generator().manual_seed(0))).item() == pytest.approx(1.0, abs=0.03)
