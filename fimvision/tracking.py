"""Experiment tracking with Weights & Biases for every model family: one switch, nothing else to change.

Add ``--config configs/loggers/wandb.yaml`` (or ``--wandb.enabled=true``) to any ``fimvision`` command,
or start it from a W&B sweep agent (which it detects): a W&B logger joins the run's CSV logger and
writes into the run's own folder. ``WANDB_MODE=offline`` writes an offline run that ``wandb sync``
uploads later; ``WANDB_MODE=disabled`` turns W&B off; neither needs an account.

Logged (docs/tracking.md): every metric the model logs and the learning rate; the resolved config, as
the run config and as a file; a grid of training images per class at the start of fitting, as the
model sees them; the confusion matrix and per-class recall after ``test``; a predictions table with
thumbnails after ``predict``; optionally the checkpoints (``log_model``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


def under_sweep_agent() -> bool:
    """Whether a W&B sweep agent started this process (it sets WANDB_SWEEP_ID)."""
    return bool(os.environ.get("WANDB_SWEEP_ID"))


def describe_run(config: dict) -> tuple[str, list[str]]:
    """A run name and tags from a resolved `fimvision` config: model (and backbone), modality, fold, seed,
    and for adaptation the method and shots."""
    model = config.get("model") or {}
    data = (config.get("data") or {}).get("init_args") or {}
    args = model.get("init_args") or {}
    parts = {
        "model": str(model.get("class_path", "model")).rsplit(".", 1)[-1],
        "backbone": args.get("backbone") if "source_checkpoint" not in args else None,
        "modality": data.get("modality") if "channels" not in data else None,
        "fold": f"fold{data['fold']}" if data.get("split") in ("group", "kfold") else None,
        "shots": f"{data['n_shot']}shot" if data.get("n_shot") and model.get("class_path", "").endswith(
            "FewShotFinetune") else None,
        "seed": f"seed{config.get('seed_everything')}",
    }
    values = [str(v) for v in parts.values() if v not in (None, "", "None")]
    return "-".join(values), values[:-1]


def flat(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> dotted keys (the same keys as the command line and sweep files)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{name}."))
        else:
            out[name] = value
    return out


class WandbTracking(pl.Callback):
    """Weights & Biases tracking of a run (see the module docstring).

    Args:
        enabled: log to W&B; by default only when a W&B sweep agent started the run.
        project: W&B project.
        entity: W&B team or user (default: yours).
        name: run name (default: model, backbone, modality, fold, shots and seed from the config).
        group: run group (e.g. a study's name; sweeps group by sweep anyway).
        tags: tags besides those taken from the config.
        log_model: upload checkpoints as artifacts: ``true`` the best at the end, ``all`` every one.
        images_per_class: training images per class in the grid logged when fitting starts (0: none).
        prediction_rows: most rows of the predictions table logged after ``predict``.
    """

    def __init__(self, enabled: bool | None = None, project: str = "fimvision", entity: str | None = None,
                 name: str | None = None, group: str | None = None, tags: list[str] | None = None,
                 log_model: bool | Literal["all"] = False, images_per_class: int = 8,
                 prediction_rows: int = 500) -> None:
        self.enabled = under_sweep_agent() if enabled is None else enabled
        self.project, self.entity, self.name, self.group = project, entity, name, group
        self.tags, self.log_model = list(tags or []), log_model
        self.images_per_class, self.prediction_rows = images_per_class, prediction_rows

    def make_logger(self, config: dict, save_dir: str | Path, name: str | None = None, group: str | None = None):
        """The W&B logger of a run, writing under ``save_dir`` (the run's folder), with ``config`` as its config
        (``name`` and ``group`` override the configured or derived ones)."""
        from pytorch_lightning.loggers import WandbLogger

        derived, tags = describe_run(config)
        return WandbLogger(project=self.project, entity=self.entity, name=name or self.name or derived,
                           group=group or self.group,
                           tags=[*tags, *self.tags], log_model=self.log_model, save_dir=str(save_dir),
                           config=flat(config))

    @staticmethod
    def runs(trainer: pl.Trainer) -> list:
        """The W&B run objects of the trainer's W&B loggers (rank 0 only)."""
        from pytorch_lightning.loggers import WandbLogger

        if not trainer.is_global_zero:
            return []
        return [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)]

    @classmethod
    def finish(cls, trainer: pl.Trainer) -> None:
        """End the trainer's W&B runs and W&B's process-wide state, so the next command in this process starts
        afresh (with the WANDB_MODE it finds then)."""
        runs = cls.runs(trainer)
        for run in runs:
            run.finish()
        if runs:
            import wandb

            wandb.teardown()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        runs = self.runs(trainer)
        if runs and self.images_per_class > 0:
            images = training_images(trainer, self.images_per_class)
            for run in runs:
                run.log({"train_images": images}, commit=False)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        png = Path(trainer.log_dir or trainer.default_root_dir) / "confusion_matrix.png"  # on every process
        runs, confusion = self.runs(trainer), getattr(pl_module, "test_confusion_result", None)
        if not runs or confusion is None:
            return
        import wandb  # only with W&B on: its import is slow

        matrix, names = confusion
        support = matrix.sum(axis=1)
        recall = [float(trainer.callback_metrics.get(f"test_recall_{n}", 0.0)) for n in names]  # the base logged them
        table = wandb.Table(columns=["class", "recall", "support"],
                            data=[[n, float(r), int(s)] for n, r, s in zip(names, recall, support, strict=True)])
        for run in runs:
            payload = {"test_confusion_matrix": wandb.Table(columns=["true", *names],
                                                            data=[[n, *map(int, row)] for n, row in
                                                                  zip(names, matrix, strict=True)]),
                       "test_recall_per_class": wandb.plot.bar(table, "class", "recall",
                                                                title="test recall per class")}
            if png.is_file():
                payload["test_confusion_matrix_png"] = wandb.Image(str(png))
            run.log(payload)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from fimvision.prediction import PredictionWriter

        runs = self.runs(trainer)
        writer = next((cb for cb in trainer.callbacks if isinstance(cb, PredictionWriter)), None)
        if not runs or writer is None or not (writer.folder(trainer) / "predictions.csv").is_file():
            return
        table = predictions_table(pd.read_csv(writer.folder(trainer) / "predictions.csv", keep_default_na=False),
                                  trainer.datamodule, self.prediction_rows)
        for run in runs:
            run.log({"predictions": table})


def _denormalise(image: torch.Tensor, transform) -> np.ndarray:
    """A normalised C x H x W tensor back to uint8 H x W x C, with the pipeline's own statistics."""
    mean = torch.tensor(getattr(transform, "mean", (0.5,) * image.shape[0]))[:, None, None]
    std = torch.tensor(getattr(transform, "std", (0.5,) * image.shape[0]))[:, None, None]
    pixels = ((image.float() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return pixels[..., 0] if pixels.shape[2] == 1 else pixels


def training_images(trainer: pl.Trainer, per_class: int) -> list:
    """Up to ``per_class`` training images of each class as the model receives them (augmented, in the
    modality it trains on), as captioned W&B images."""
    import wandb

    loader = trainer.train_dataloader
    dataset = getattr(loader, "dataset", None)
    if dataset is None or not hasattr(dataset, "targets"):
        return []
    transform = getattr(dataset.transform, "pipelines", lambda: [dataset.transform])()[0]
    names = list(getattr(trainer.lightning_module, "class_names", []))
    images = []
    for target in sorted(set(dataset.targets.tolist())):
        for i in np.flatnonzero(dataset.targets == target)[:per_class]:
            view = dataset[int(i)]["image"]
            view = view[0] if isinstance(view, list) else view
            caption = names[target] if 0 <= target < len(names) else "unlabelled"
            images.append(wandb.Image(_denormalise(view, transform), caption=caption))
    return images


def predictions_table(predictions: pd.DataFrame, datamodule, rows: int):
    """A W&B table of the first ``rows`` predictions: particle, sample, label, predicted, confidence and a
    thumbnail of the particle image."""
    import wandb

    columns = ["particle_id", "sample", "label", "predicted", "confidence"]
    table = wandb.Table(columns=[*columns, "image"])
    root = Path(getattr(getattr(datamodule, "manifest", None), "root", "."))
    for _, row in predictions.head(rows).iterrows():
        path = root / str(row["image"])
        table.add_data(*[row[c] for c in columns], wandb.Image(str(path)) if path.is_file() else None)
    return table


def log_summary(name: str, project: str, group: str | None, images: dict[str, Path], tables: dict[str, pd.DataFrame],
                save_dir: str | Path) -> None:
    """Log a grid's summary (plots and tables) as a W&B run of its own (job type ``report``)."""
    import wandb

    run = wandb.init(project=project, group=group, name=name, job_type="report", dir=str(save_dir), reinit="finish_previous")
    run.log({**{k: wandb.Image(str(v)) for k, v in images.items() if Path(v).is_file()},
             **{k: wandb.Table(dataframe=v) for k, v in tables.items()}})
    run.finish()
