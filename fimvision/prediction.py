"""What `fimvision predict` and `test` write: per-particle probabilities, per-sample verdicts and compositions;
the test predictions and confusion matrix."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

from fimvision.composition import sample_composition
from fimvision.data.manifest import Manifest
from fimvision.errors import ConfigError, DataError, OutputExistsError
from fimvision.files import write_atomically
from fimvision.plots import confusion_matrix_png, plt

log = logging.getLogger(__name__)


VOLUME_COLUMN = "volume_imaged_ml"


def sample_verdicts(predictions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row a sample: the class of highest mean probability, that mean as confidence, the number of particles
    and the mean probability of each class."""
    columns = [f"prob_{c}" for c in classes]
    grouped = predictions.groupby("sample", sort=True)
    mean = grouped[columns].mean()
    verdict = pd.DataFrame({
        "sample": mean.index,
        "verdict": [classes[i] for i in mean.to_numpy().argmax(axis=1)],
        "confidence": mean.to_numpy().max(axis=1),
        "n_particles": grouped.size().to_numpy(),
    })
    for c in classes:
        verdict[f"mean_prob_{c}"] = mean[f"prob_{c}"].to_numpy()
    return verdict


def sample_volumes(manifest: Manifest) -> pd.Series | None:
    """The imaged volume (mL) of each sample, from the manifest's ``volume_imaged_ml`` column; None without it.

    A sample's cells may be empty (NaN: volume unknown) or repeat its one volume; a cell that is not a positive
    number, or two volumes in one sample, is a DataError naming the line.
    """
    frame = manifest.frame
    if VOLUME_COLUMN not in frame:
        return None
    raw = frame[VOLUME_COLUMN]
    volume = pd.to_numeric(raw, errors="coerce")
    bad = np.flatnonzero(raw.notna().to_numpy() & ~(np.isfinite(volume) & (volume > 0)).to_numpy())
    if len(bad):
        raise DataError(f"{manifest.where(bad[0], VOLUME_COLUMN)}: '{raw.iloc[bad[0]]}' is not a volume in mL "
                        f"({len(bad)} such cell(s)). Give the positive fluid volume the instrument imaged for the "
                        "sample, or leave the cell empty.")
    samples = frame["sample"].to_numpy() if "sample" in frame else np.full(len(frame), "all")
    per_sample = volume.groupby(samples)
    for sample, distinct in per_sample.nunique().items():
        if distinct > 1:
            rows = np.flatnonzero((samples == sample) & volume.notna().to_numpy())
            other = next(r for r in rows if volume.iloc[r] != volume.iloc[rows[0]])
            raise DataError(f"{manifest.where(other, VOLUME_COLUMN)}: sample '{sample}' has volume "
                            f"{volume.iloc[other]:g} mL here and {volume.iloc[rows[0]]:g} mL on line "
                            f"{int(frame['line'].iloc[rows[0]])}. Give each sample one imaged volume.")
    return per_sample.first()


def samples_figure(samples: pd.DataFrame, classes: Sequence[str]) -> plt.Figure:
    """Per sample, a bar per class: the adjusted fraction with its interval as error bars and the raw
    (classify-and-count) fraction as a hollow marker; the raw fraction alone without adjusted columns."""
    adjusted = f"adjusted_fraction_{classes[0]}" in samples
    width = 0.8 / len(classes)
    x = np.arange(len(samples))
    fig, ax = plt.subplots(figsize=(min(2.5 + 0.3 * len(classes) * len(samples), 100), 3.8))
    for k, c in enumerate(classes):
        at = x + (k - (len(classes) - 1) / 2) * width
        raw = samples[f"fraction_{c}"].to_numpy()
        if adjusted:
            value = samples[f"adjusted_fraction_{c}"].to_numpy()
            error = np.clip([value - samples[f"adjusted_fraction_{c}_low"].to_numpy(),
                             samples[f"adjusted_fraction_{c}_high"].to_numpy() - value], 0, None)
            ax.bar(at, value, width, yerr=error, capsize=2, label=c)
            ax.plot(at, raw, "o", mfc="none", mec="black", ms=4, label="predicted share (raw)" if k == 0 else None)
        else:
            ax.bar(at, raw, width, label=c)
    many = len(samples) > 6
    ax.set_xticks(x, [f"{name}\n(n={n})" for name, n in zip(samples["sample"], samples["n_particles"], strict=True)],
                  rotation=45 if many else 0, ha="right" if many else "center", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("sample")
    ax.set_ylabel("fraction of particles")
    ax.set_title("class fractions corrected for classifier error (ACC),\nwith 95% bootstrap intervals" if adjusted
                 else "predicted class fractions\n(uncorrected: the model has no validation confusion matrix)",
                 fontsize=9)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return fig


def png_bytes(fig: plt.Figure, dpi: int = 120) -> bytes:
    """``fig`` laid out as PNG bytes (then closed), for writing atomically."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


OUTPUT_FILES = ("predictions.csv", "samples.csv", "samples.png")


class PredictionWriter(pl.callbacks.BasePredictionWriter):
    """Writes ``predictions.csv`` (one row a particle), ``samples.csv`` (one row a sample) and ``samples.png``.

    ``samples.csv`` holds each sample's verdict by mean probability and its class composition: predicted
    counts and fractions, the fractions adjusted for the classifier's validation errors with 95 % bootstrap
    intervals (when the model has a validation confusion matrix), and particles per mL (when the manifest
    has ``volume_imaged_ml``); see docs/prediction.md. Several devices: each predicts its share and rank 0
    gathers and writes them. Files are written atomically, and existing ones are kept unless ``overwrite``.

    Args:
        output_dir: folder for the output files (default: the run's folder).
        overwrite: replace existing ``predictions.csv`` / ``samples.csv`` / ``samples.png`` in that folder.
        bootstrap: bootstrap replicates for the intervals of the adjusted fractions.
        seed: seed of the bootstrap (the same seed, data and model give the same intervals).
    """

    def __init__(self, output_dir: str | None = None, overwrite: bool = False, bootstrap: int = 1000,
                 seed: int = 0) -> None:
        super().__init__(write_interval="epoch")
        if bootstrap < 1:
            raise ConfigError(f"--prediction_writer.bootstrap must be at least 1, got {bootstrap}")
        self.output_dir = output_dir
        self.overwrite = overwrite
        self.bootstrap = bootstrap
        self.seed = seed

    def folder(self, trainer: pl.Trainer) -> Path:
        """Where the files go; resolved once on every process (trainer.log_dir is a collective call)."""
        if getattr(self, "_folder", None) is None:
            self._folder = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        return self._folder

    def check_output(self, trainer: pl.Trainer) -> None:
        """Refuse, before any work, what would fail at the end: writing over earlier predictions (unless
        ``overwrite``) or a ``volume_imaged_ml`` column that cannot be used."""
        existing = [str(self.folder(trainer) / name) for name in OUTPUT_FILES if (self.folder(trainer) / name).exists()]
        if existing and not self.overwrite:
            raise OutputExistsError(f"{' and '.join(existing)} already exist(s) and would be written over. Choose "
                                    "another folder (--prediction_writer.output_dir=DIR) or replace them "
                                    "(--prediction_writer.overwrite=true).")
        manifest = getattr(trainer.datamodule, "manifest", None)
        if manifest is not None:
            sample_volumes(manifest)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._folder = None
        self.folder(trainer)  # on every process
        if stage == "predict" and trainer.is_global_zero:
            self.check_output(trainer)

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        index = torch.cat([p["index"] for p in predictions]).cpu().numpy() if predictions else np.empty(0, int)
        probs = (torch.cat([p["probs"] for p in predictions]).cpu().numpy() if predictions
                 else np.empty((0, len(pl_module.class_names)), np.float32))
        gathered = gather_by_index(trainer, index, probs)
        if gathered is None or not len(gathered[0]):
            return
        index, probs = gathered
        classes = list(pl_module.class_names)
        manifest = trainer.datamodule.manifest
        frame = manifest.frame.iloc[index]
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
        samples = self.samples(out, classes, getattr(pl_module, "validation_confusion", None), sample_volumes(manifest))
        figure = png_bytes(samples_figure(samples, classes))
        write_atomically(folder / "predictions.csv", lambda p: out.to_csv(p, index=False, float_format="%.6g"))
        write_atomically(folder / "samples.csv", lambda p: samples.to_csv(p, index=False, float_format="%.6g"))
        write_atomically(folder / "samples.png", lambda p: p.write_bytes(figure))
        labelled = out["label"] != ""
        accuracy = (out.loc[labelled, "label"] == out.loc[labelled, "predicted"]).mean() if labelled.any() else np.nan
        log.info("wrote %s (%d particles) and %s (%d samples)%s", folder / "predictions.csv", len(out),
                 folder / "samples.csv", len(samples),
                 f"; accuracy on the {labelled.sum()} labelled particles: {accuracy:.3f} (training particles included; "
                 "`fimvision test` scores the held-out ones)" if labelled.any() else "")
        print(f"predictions: {folder / 'predictions.csv'}\nsample verdicts and compositions: {folder / 'samples.csv'}"
              f" (figure: {folder / 'samples.png'})")

    def samples(self, particles: pd.DataFrame, classes: list[str], confusion: np.ndarray | None,
                volumes: pd.Series | None) -> pd.DataFrame:
        """The rows of ``samples.csv``: verdicts, then compositions; says once why adjusted columns are missing."""
        if confusion is None:
            log.warning("the model has no validation confusion matrix (a checkpoint saved before fimvision kept "
                        "one): samples.csv has the predicted class fractions but no adjusted_fraction_* columns "
                        "corrected for classifier error")
        else:
            confusion = np.asarray(confusion)
            unvalidated = [c for c, n in zip(classes, confusion.sum(axis=1), strict=True) if n == 0]
            if unvalidated:
                log.warning("class(es) %s had no validation particles: their errors are unknown, so the adjusted "
                            "fractions take their predictions at face value", unvalidated)
        composition = sample_composition(particles, classes, confusion=confusion, volumes=volumes,
                                         n_boot=self.bootstrap, seed=self.seed)
        return sample_verdicts(particles, classes).merge(composition, on="sample", validate="one_to_one")


def gather_by_index(trainer: pl.Trainer, index: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Every process's rows (``index`` and ``columns``), on rank 0 (None on the others; a collective call): one
    row a distinct index, sorted by it (samplers may repeat rows to even out the processes)."""
    if trainer.world_size > 1:
        parts: list = [None] * trainer.world_size
        torch.distributed.all_gather_object(parts, (index, *columns))
        if not trainer.is_global_zero:
            return None
        index, *columns = (np.concatenate(c) for c in zip(*parts, strict=True))
    index, first = np.unique(index, return_index=True)
    return (index, *(c[first] for c in columns))


class TestOutputWriter(pl.Callback):
    """What `fimvision test` writes into the run's folder besides the metrics: ``test_predictions.csv`` (one row a
    test image: index, target, predicted class, confidence and calibrated class probabilities, with the manifest's
    particle id, sample and group), ``confusion_matrix.csv`` (rows true, columns predicted) and
    ``confusion_matrix.png``. Several devices: rank 0 gathers every process's rows and writes."""

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if isinstance(outputs, dict) and "logits" in outputs:
            self._rows.append((outputs["index"].cpu(), outputs["target"].cpu(), outputs["logits"].float().cpu()))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the model's on_test_epoch_end, which leaves the synchronised confusion matrix.
        result = getattr(pl_module, "test_confusion_result", None)  # the same on every process
        out = Path(trainer.log_dir or trainer.default_root_dir)  # a collective call: on every process
        if result is None:
            return
        matrix, classes = result
        rows = ([torch.cat(c).numpy() for c in zip(*self._rows, strict=True)] if getattr(self, "_rows", None)
                else [np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, len(classes)), np.float32)])
        gathered = gather_by_index(trainer, *rows)
        if gathered is None or not len(gathered[0]) or trainer.sanity_checking:
            return
        index, target, logits = gathered
        probs = pl_module.calibrated_probs(torch.from_numpy(logits)).numpy()
        frame = pd.DataFrame({"index": index, "target": target, "predicted": probs.argmax(axis=1),
                              "confidence": probs.max(axis=1)})
        for i, name in enumerate(classes):
            frame[f"prob_{name}"] = probs[:, i]
        manifest = getattr(trainer.datamodule, "manifest", None)
        if manifest is not None:
            rows = manifest.frame.iloc[index]
            for column in ("particle_id", "sample", "group"):
                if column in rows:
                    frame[column] = rows[column].to_numpy()
        confusion_matrix_png(matrix, classes, out / "confusion_matrix.png",
                             title=f"{pl_module.describe()}, {pl_module.hparams.in_chans}-channel input: test set")
        pd.DataFrame(matrix, index=classes, columns=classes).rename_axis("true").to_csv(out / "confusion_matrix.csv")
        frame.to_csv(out / "test_predictions.csv", index=False, float_format="%.6g")
