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


def dihedral_views(image: Tensor) -> list[Tensor]:
    """The 8 rotations and reflections of a batch of square images (N x C x H x W): particles have no
    orientation, so each view is an equally valid picture of the particle."""
    views = []
    for k in range(4):
        rotated = torch.rot90(image, k, dims=(-2, -1))
        views += [rotated, rotated.flip(-1)]
    return views
