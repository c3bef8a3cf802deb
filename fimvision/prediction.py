"""What `fimvision predict` writes: per-particle probabilities and per-sample verdicts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


def sample_verdicts(predictions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row a sample: the class of highest mean probability, that mean as confidence, and the count."""
    columns = [f"prob_{c}" for c in classes]
    grouped = predictions.groupby("sample", sort=True)
    mean = grouped[columns].mean()
    verdict = pd.DataFrame({
        "sample": mean.index,
        "verdict": [classes[i] for i in mean.to_numpy().argmax(axis=1)],
        "confidence": mean.to_numpy().max(axis=1),
        "n_particles": grouped.size().to_numpy(),
    })
    share = grouped["predicted"].value_counts(normalize=True).unstack(fill_value=0.0)
    for c in classes:
        verdict[f"mean_prob_{c}"] = mean[f"prob_{c}"].to_numpy()
        verdict[f"share_predicted_{c}"] = share[c].reindex(mean.index, fill_value=0.0).to_numpy() if c in share else 0.0
    return verdict


class PredictionWriter(pl.callbacks.BasePredictionWriter):
    """Writes ``predictions.csv`` (one row a particle) and ``samples.csv`` (one row a sample).

    Args:
        output_dir: folder for the two CSV files (default: the trainer's log folder).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if not predictions:
            return
        index = torch.cat([p["index"] for p in predictions]).cpu().numpy()
        probs = torch.cat([p["probs"] for p in predictions]).cpu().numpy()
        if trainer.world_size > 1:  # every rank writes its own part; rank 0 could gather, but keep it simple
            raise NotImplementedError("predict on one device; it is fast enough")
        classes = list(pl_module.class_names)
        frame = trainer.datamodule.manifest.frame.iloc[index]
        out = pd.DataFrame({
            "particle_id": frame["particle_id"].to_numpy() if "particle_id" in frame else index,
            "image": frame["image"].to_numpy(),
            "sample": frame["sample"].to_numpy() if "sample" in frame else "all",
            "label": frame["label"].to_numpy(),
            "predicted": [classes[i] for i in probs.argmax(axis=1)],
            "confidence": probs.max(axis=1),
        })
        for i, c in enumerate(classes):
            out[f"prob_{c}"] = probs[:, i]
        folder = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        out.to_csv(folder / "predictions.csv", index=False, float_format="%.6g")
        samples = sample_verdicts(out, classes)
        samples.to_csv(folder / "samples.csv", index=False, float_format="%.6g")
        labelled = out["label"] != ""
        accuracy = (out.loc[labelled, "label"] == out.loc[labelled, "predicted"]).mean() if labelled.any() else np.nan
        log.info("wrote %s (%d particles) and %s (%d samples)%s", folder / "predictions.csv", len(out),
                 folder / "samples.csv", len(samples),
                 f"; accuracy on the {labelled.sum()} labelled particles: {accuracy:.3f}" if labelled.any() else "")
        print(f"predictions: {folder / 'predictions.csv'}\nsample verdicts: {folder / 'samples.csv'}")
