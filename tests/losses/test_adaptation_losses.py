"""The adaptation losses and scores (fimvision/losses/adaptation.py) on hand-made batches with closed-form values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fimvision.losses import aad_loss, im_loss, im_score, nrc_loss, shot_loss, shot_pseudo_labels, snd_score

LN2 = math.log(2)


def test_information_maximisation():
    confident_diverse = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert im_loss(confident_diverse).item() == pytest.approx(-LN2, abs=1e-4)  # best possible: -ln C
    assert im_loss(torch.tensor([[1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-4)  # collapsed
    assert im_loss(torch.full((2, 2), 0.5)).item() == pytest.approx(0.0, abs=1e-4)  # uncertain
    assert im_score(confident_diverse).item() == pytest.approx(LN2, abs=1e-4)


def test_shot_loss_and_pseudo_labels():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    p = logits.softmax(dim=1)
    expected = im_loss(p) + 0.3 * F.cross_entropy(logits, torch.tensor([1, 1]))
    assert shot_loss(logits, torch.tensor([1, 1]), beta=0.3).item() == pytest.approx(expected.item(), rel=1e-6)
    assert shot_loss(logits, torch.tensor([0, 1]), 0.3) < shot_loss(logits, torch.tensor([1, 0]), 0.3)
    # Two tight clusters; the classifier gets one point of each wrong: clustering corrects them.
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [1.0, 0.05], [0.0, 1.0], [0.1, 0.9], [0.05, 1.0]])
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.1, 0.9], [0.2, 0.8], [0.55, 0.45]])
    assert shot_pseudo_labels(feats, probs).tolist() == [0, 0, 0, 1, 1, 1]


def test_nrc_loss_value():
    # Bank of four: 0<->1 and 2<->3 are mutual nearest neighbours. k = m = 1, batch = slot 0.
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    scores = torch.tensor([[0.7, 0.3], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])
    p = torch.tensor([[0.6, 0.4]])
    value = nrc_loss(p, torch.tensor([0]), bank, scores, k=1, m=1)
    # neighbour 1 (reciprocal: weight 1), its neighbour 0 (expanded: 0.1), diversity p log p
    expected = -(p[0] @ scores[1]) - 0.1 * (p[0] @ scores[0]) + (p[0] * p[0].log()).sum()
    assert value.item() == pytest.approx(expected.item(), abs=1e-4)
    agree = nrc_loss(torch.tensor([[0.9, 0.1]]), torch.tensor([0]), bank, scores, k=1, m=1)
    disagree = nrc_loss(torch.tensor([[0.1, 0.9]]), torch.tensor([0]), bank, scores, k=1, m=1)
    assert (agree - (0.9 * math.log(0.9) + 0.1 * math.log(0.1))) < (disagree - (0.9 * math.log(0.9) + 0.1 * math.log(0.1)))


def test_aad_loss_value():
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    scores = torch.tensor([[0.7, 0.3], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])
    p = torch.tensor([[0.6, 0.4], [0.2, 0.8]])
    value = aad_loss(p, torch.tensor([0, 2]), bank, scores, k=1, alpha=0.5)
    attract = -((p[0] @ scores[1]) + (p[1] @ scores[3])) / 2
    disperse = (2 * (p[0] @ p[1])) / 2
    assert value.item() == pytest.approx((attract + 0.5 * disperse).item(), abs=1e-6)


def test_snd_score():
    same = torch.tensor([[0.9, 0.1]] * 3)
    assert snd_score(same).item() == pytest.approx(LN2, abs=1e-3)  # two equal neighbours each
    clustered = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    assert snd_score(clustered).item() == pytest.approx(0.0, abs=1e-3)  # one sharp neighbour each
