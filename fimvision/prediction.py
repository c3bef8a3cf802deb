"""What `fimvision predict` writes: per-particle probabilities and per-sample verdicts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

from fimvision.errors import OutputExistsError
from fimvision.files import write_atomically

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


OUTPUT_FILES = ("predictions.csv", "samples.csv")


class PredictionWriter(pl.callbacks.BasePredictionWriter):
    """Writes ``predictions.csv`` (one row a particle) and ``samples.csv`` (one row a sample).

    Several devices: each predicts its share and rank 0 gathers and writes them. Files are written
    atomically, and existing ones are kept unless ``overwrite``.

    Args:
        output_dir: folder for the two CSV files (default: the run's folder).
        overwrite: replace existing ``predictions.csv`` / ``samples.csv`` in that folder.
    """

    def __init__(self, output_dir: str | None = None, overwrite: bool = False) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.overwrite = overwrite

    def folder(self, trainer: pl.Trainer) -> Path:
        """Where the files go; resolved once on every process (trainer.log_dir is a collective call)."""
        if getattr(self, "_folder", None) is None:
            self._folder = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        return self._folder

    def check_output(self, trainer: pl.Trainer) -> None:
        """Refuse, before any work, to write over earlier predictions (unless ``overwrite``)."""
        existing = [str(self.folder(trainer) / name) for name in OUTPUT_FILES if (self.folder(trainer) / name).exists()]
        if existing and not self.overwrite:
            raise OutputExistsError(f"{' and '.join(existing)} already exist(s) and would be written over. Choose "
                                    "another folder (--prediction_writer.output_dir=DIR) or replace them "
                                    "(--prediction_writer.overwrite=true).")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._folder = None
        self.folder(trainer)  # on every process
        if stage == "predict" and trainer.is_global_zero:
            self.check_output(trainer)

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        index = torch.cat([p["index"] for p in predictions]).cpu().numpy() if predictions else np.empty(0, int)
        probs = (torch.cat([p["probs"] for p in predictions]).cpu().numpy() if predictions
                 else np.empty((0, len(pl_module.class_names)), np.float32))
        if trainer.world_size > 1:
            parts: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(parts, (index, probs))
            if not trainer.is_global_zero:
                return
            index = np.concatenate([p[0] for p in parts])
            probs = np.concatenate([p[1] for p in parts])
            index, first = np.unique(index, return_index=True)  # samplers may repeat rows to even out ranks
            probs = probs[first]
        if not len(index):
            return
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
        folder = self.folder(trainer)
        self.check_output(trainer)  # again: another process may have written meanwhile
        samples = sample_verdicts(out, classes)
        write_atomically(folder / "predictions.csv", lambda p: out.to_csv(p, index=False, float_format="%.6g"))
        write_atomically(folder / "samples.csv", lambda p: samples.to_csv(p, index=False, float_format="%.6g"))
        labelled = out["label"] != ""
        accuracy = (out.loc[labelled, "label"] == out.loc[labelled, "predicted"]).mean() if labelled.any() else np.nan
        log.info("wrote %s (%d particles) and %s (%d samples)%s", folder / "predictions.csv", len(out),
                 folder / "samples.csv", len(samples),
                 f"; accuracy on the {labelled.sum()} labelled particles: {accuracy:.3f}" if labelled.any() else "")
        print(f"predictions: {folder / 'predictions.csv'}\nsample verdicts: {folder / 'samples.csv'}")
