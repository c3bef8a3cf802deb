"""Pure loss functions and scores, each with closed-form tests (as lightly's losses)."""

from fimvision.losses.adaptation import (
    aad_loss,
    entropy,
    im_loss,
    im_score,
    nrc_loss,
    shot_loss,
    shot_pseudo_labels,
    snd_score,
)
from fimvision.losses.ssl import embedding_std, negative_cosine, symmetric_byol_loss

__all__ = ["aad_loss", "embedding_std", "entropy", "im_loss", "im_score", "negative_cosine", "nrc_loss",
           "shot_loss", "shot_pseudo_labels", "snd_score", "symmetric_byol_loss"]
