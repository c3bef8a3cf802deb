"""Honest probabilities: temperature scaling (Guo et al. 2017), expected calibration error and
test-time augmentation over the dihedral group.

A network's softmax is usually over-confident. Temperature scaling divides the logits by one number
``T`` fitted on the validation split (minimum negative log-likelihood); it changes no prediction,
only how sure each one says it is. The expected calibration error (ECE, 15 equal-width confidence
bins, torchmetrics' definition) says how far the confidence is from the accuracy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_calibration_error

ECE_BINS = 15
# Temperatures outside this range only come from a split the model separates perfectly (or not at all).
TEMPERATURE_RANGE = (0.05, 20.0)


def expected_calibration_error(probs: Tensor, target: Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE of class probabilities ``probs`` (N x K) against ``target`` (N): the confidence-weighted gap
    between confidence and accuracy over ``n_bins`` equal-width bins."""
    if len(target) == 0:
        return math.nan
    return float(multiclass_calibration_error(probs.float(), target, num_classes=probs.shape[1], n_bins=n_bins,
                                              norm="l1"))


def fit_temperature(logits: Tensor, target: Tensor, max_iter: int = 100) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)`` on
    (``logits``, ``target``), within :data:`TEMPERATURE_RANGE`; 1.0 when there is nothing to fit on."""
    if len(target) == 0:
        return 1.0
    # Validation runs under inference mode, whose tensors autograd refuses: leave it and copy them out.
    with torch.inference_mode(False), torch.enable_grad():
        logits, target = logits.detach().double().cpu().clone(), target.detach().cpu().clone()
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
        optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), target)
            loss.backward()
            return loss

        optimizer.step(closure)
    t = float(log_t.detach().exp())
    return min(max(t, TEMPERATURE_RANGE[0]), TEMPERATURE_RANGE[1]) if math.isfinite(t) else 1.0


def fit_combination(log_probs: list[Tensor], target: Tensor, bias_decay: float = 1e-2,
                    max_iter: int = 200) -> tuple[list[float], list[float]]:
    """Weights ``w`` (one per model) and class biases ``b`` of the combination
    ``softmax(sum_m w_m * log_probs[m] + b)`` with minimum negative log-likelihood on (``log_probs``,
    ``target``): a stacking meta-model with K + M parameters, few enough to fit on a validation split
    whose rare classes hold a few dozen particles. A small penalty keeps the biases near 0 (no prior
    shift the data do not ask for). Starts from the geometric mean of the models' probabilities."""
    n_models, n_classes = len(log_probs), log_probs[0].shape[1]
    if len(target) == 0:
        return [1.0 / n_models] * n_models, [0.0] * n_classes
    with torch.inference_mode(False), torch.enable_grad():
        stacked = torch.stack([p.detach().double().cpu().clone() for p in log_probs])  # M x N x K
        target = target.detach().cpu().clone()
        weights = torch.full((n_models,), 1.0 / n_models, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weights, bias], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            logits = torch.einsum("m,mnk->nk", weights, stacked) + bias
            loss = torch.nn.functional.cross_entropy(logits, target) + bias_decay * bias.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    w, b = weights.detach(), bias.detach()
    if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
        return [1.0 / n_models] * n_models, [0.0] * n_classes
    return w.tolist(), b.tolist()


def dihedral_views(image: Tensor) -> list[Tensor]:
    """The 8 rotations and reflections of a batch of square images (N x C x H x W): particles have no
    orientation, so each view is an equally valid picture of the particle."""
    views = []
    for k in range(4):
        rotated = torch.rot90(image, k, dims=(-2, -1))
        views += [rotated, rotated.flip(-1)]
    return views
