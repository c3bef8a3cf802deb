"""Losses and scores of source-free adaptation, as pure functions of tensors (closed-form tests in
tests/losses/): information maximisation (IM), SHOT's pseudo-labels and loss, NRC's and AaD's
neighbourhood losses, and the unsupervised model-selection scores SND and IM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-5


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-row entropy of probability rows (nats)."""
    return -(probs * torch.log(probs + EPS)).sum(dim=1)


def im_loss(probs: torch.Tensor) -> torch.Tensor:
    """Information-maximisation loss: mean entropy minus the entropy of the mean prediction (minimise)."""
    return entropy(probs).mean() - entropy(probs.mean(dim=0, keepdim=True)).squeeze(0)


def im_score(probs: torch.Tensor) -> torch.Tensor:
    """IM model-selection score (higher is better): the mutual information between inputs and predictions."""
    return -im_loss(probs)


def snd_score(probs: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Soft neighbourhood density (Saito et al. 2021; higher is better): the mean entropy of each sample's
    softmax over its similarity to the others, on L2-normalised predictions."""
    z = F.normalize(probs, dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(float("-inf"))
    return entropy(F.softmax(sim / temperature, dim=1)).mean()


def shot_pseudo_labels(features: torch.Tensor, probs: torch.Tensor, rounds: int = 1) -> torch.Tensor:
    """SHOT's self-supervised pseudo-labels: cosine nearest centroid, centroids weighted by the
    predictions, then ``rounds`` refinements with hard assignments."""
    f = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype, device=features.device)], dim=1)
    f = F.normalize(f, dim=1)
    weights = probs
    labels = probs.argmax(dim=1)
    for _ in range(rounds + 1):
        centroids = F.normalize(weights.T @ f / (weights.sum(dim=0)[:, None] + 1e-8), dim=1)
        present = weights.sum(dim=0) > 0
        sim = f @ centroids.T
        sim[:, ~present] = float("-inf")
        labels = sim.argmax(dim=1)
        weights = F.one_hot(labels, probs.shape[1]).to(f.dtype)
    return labels


def shot_loss(logits: torch.Tensor, pseudo_labels: torch.Tensor, beta: float = 0.3) -> torch.Tensor:
    """SHOT: information maximisation plus ``beta`` x cross-entropy on the pseudo-labels."""
    probs = logits.softmax(dim=1)
    loss = im_loss(probs)
    if beta > 0:
        loss = loss + beta * F.cross_entropy(logits, pseudo_labels)
    return loss


def nrc_loss(probs: torch.Tensor, slots: torch.Tensor, feature_bank: torch.Tensor, score_bank: torch.Tensor,
             k: int = 5, m: int = 5, expanded_weight: float = 0.1) -> torch.Tensor:
    """NRC (Yang et al. 2021): agree with the ``k`` nearest bank neighbours (weight 1 when reciprocal,
    ``expanded_weight`` otherwise) and with their ``m`` nearest neighbours (``expanded_weight``), plus
    the diversity term sum(mean p * log mean p). ``slots`` are the batch's rows in the banks, which
    already hold the batch's (detached) features and scores."""
    with torch.no_grad():
        k = min(k, len(feature_bank) - 1)
        m = min(m, len(feature_bank) - 1)
        dist = feature_bank[slots] @ feature_bank.T
        near = dist.topk(k + 1, dim=1).indices[:, 1:]  # B x K, self left out
        near_dist = feature_bank[near] @ feature_bank.T  # B x K x N
        near_near = near_dist.topk(m + 1, dim=2).indices[:, :, 1:]  # B x K x M
        reciprocal = (near_near == slots[:, None, None]).sum(dim=2).float()
        weight = torch.where(reciprocal > 0, reciprocal, torch.full_like(reciprocal, expanded_weight))
        score_near = score_bank[near]  # B x K x C
        score_near_near = score_bank[near_near].flatten(1, 2)  # B x KM x C
    # KL(p_neighbour || p) in the original code equals -<p, p_neighbour> up to a constant
    loss = -(weight * (probs[:, None, :] * score_near).sum(dim=2)).sum(dim=1).mean()
    loss = loss - expanded_weight * (probs[:, None, :] * score_near_near).sum(dim=2).sum(dim=1).mean()
    mean = probs.mean(dim=0)
    return loss + (mean * torch.log(mean + EPS)).sum()


def aad_loss(probs: torch.Tensor, slots: torch.Tensor, feature_bank: torch.Tensor, score_bank: torch.Tensor,
             k: int = 5, alpha: float = 1.0) -> torch.Tensor:
    """AaD (Yang et al. 2022): attract each prediction to its ``k`` nearest bank neighbours' scores and
    disperse it from the other predictions of the batch (weight ``alpha``)."""
    with torch.no_grad():
        k = min(k, len(feature_bank) - 1)
        near = (feature_bank[slots] @ feature_bank.T).topk(k + 1, dim=1).indices[:, 1:]
        score_near = score_bank[near]
    attract = -(probs[:, None, :] * score_near).sum(dim=2).sum(dim=1).mean()
    dot = probs @ probs.T
    disperse = (dot.sum(dim=1) - dot.diagonal()).mean()
    return attract + alpha * disperse
