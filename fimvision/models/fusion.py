"""Image + instrument features: the pieces of late fusion.

After Kerr et al. (IEEE Access 2020, "Collaborative deep learning models to handle class imbalance in
FlowCam plankton imagery"), where a network on FlowCam's geometric features collaborates with the
image CNNs: the image embedding and an embedding of the standardised features are joined just before
the classifier (late fusion), so each branch learns what it sees best and the head weighs them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class FeatureScaler(nn.Module):
    """Standardises raw features with the mean and std of the training split; a missing value (NaN)
    becomes 0, the training mean. The statistics are buffers, so a checkpoint carries them to
    ``predict`` on new data."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def fit(self, raw: np.ndarray) -> None:
        """Statistics of ``raw`` (N x F, NaN where missing); a constant or empty column gets std 1."""
        with np.errstate(all="ignore"):
            mean = np.nan_to_num(np.nanmean(raw, axis=0), nan=0.0) if len(raw) else np.zeros(raw.shape[1])
            std = np.nanstd(raw, axis=0) if len(raw) else np.ones(raw.shape[1])
        std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
        self.mean.copy_(torch.as_tensor(mean, dtype=self.mean.dtype))
        self.std.copy_(torch.as_tensor(std, dtype=self.std.dtype))
        self.fitted.fill_(True)

    def forward(self, raw: Tensor) -> Tensor:
        return torch.nan_to_num((raw - self.mean) / self.std, nan=0.0, posinf=0.0, neginf=0.0)


def feature_encoder(num_features: int, hidden: int, dropout: float = 0.1) -> nn.Sequential:
    """A small MLP from standardised features to a ``hidden``-wide embedding."""
    return nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, hidden), nn.ReLU())
