"""Loggers for runs that many processes start side by side (sweep agents, study workers).

:class:`RunCSVLogger` is Lightning's CSV logger with two changes: a new run claims its version folder
with an atomic ``mkdir`` (two runs started at the same moment in one working directory never share a
folder), and a run continued in its own folder (resume, ``test``, ``predict`` on its checkpoint)
appends to ``metrics.csv`` instead of deleting it. :class:`RunConfigSaver` saves each command's resolved config
beside them, never over an earlier one.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.utilities.rank_zero import rank_zero_only
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from fimvision.tracking import WandbTracking

log = logging.getLogger(__name__)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, keeping the rows an earlier stage of the same run wrote."""

    def _check_log_dir_exists(self) -> None:  # private: ExperimentWriter's only step before the first write
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))

    def drop_rows_after(self, epoch: int, step: int) -> int:
        """Remove rows logged after a checkpoint of (``epoch``, ``step``): the part of an interrupted epoch
        that the resumed run repeats. Returns how many rows were removed."""
        if not os.path.isfile(self.metrics_file_path):
            return 0
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            fields, rows = reader.fieldnames or [], list(reader)

        def after(row: dict) -> bool:
            if row.get("epoch", "") != "":
                return int(float(row["epoch"])) > epoch
            return row.get("step", "") != "" and int(float(row["step"])) >= step

        kept = [row for row in rows if not after(row)]
        if len(kept) < len(rows):
            tmp = f"{self.metrics_file_path}.tmp"
            with open(tmp, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=fields)
                writer.writeheader()
                writer.writerows(kept)
            os.replace(tmp, self.metrics_file_path)
        return len(rows) - len(kept)


class RunCSVLogger(CSVLogger):
    """CSV logger (``metrics.csv``, ``hparams.yaml``) with one folder per run, claimed atomically.

    Args:
        save_dir: folder under which runs are kept.
        name: sub-folder of ``save_dir`` for this kind of run (``lightning_logs`` by default).
        version: the run's folder name or number; by default the next free ``version_N``, claimed with an
            atomic ``mkdir``.
        prefix: text put before every metric name.
        flush_logs_every_n_steps: how often rows are written to disk.
    """

    def __init__(self, save_dir: str, name: str | None = "lightning_logs", version: int | str | None = None,
                 prefix: str = "", flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(save_dir=save_dir, name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)

    def _get_next_version(self) -> int:  # private: CSVLogger has no public way to choose the next version
        version = super()._get_next_version()
        if rank_zero_only.rank != 0:  # only rank 0 writes; other ranks must not claim folders
            return version
        root = Path(self.root_dir)
        while True:
            try:
                (root / f"version_{version}").mkdir(parents=True, exist_ok=False)
                return version
            except FileExistsError:  # another run claimed it between the listing and now
                version += 1

    @property
    def experiment(self) -> _AppendingWriter:  # type: ignore[override]
        if self._experiment is None:
            if rank_zero_only.rank != 0:
                return super().experiment  # Lightning's dummy on other ranks
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def drop_rows_after(self, epoch: int, step: int) -> None:
        """See :meth:`_AppendingWriter.drop_rows_after` (rank 0 only)."""
        if rank_zero_only.rank == 0:
            removed = self.experiment.drop_rows_after(epoch, step)
            if removed:
                log.info("metrics.csv: removed %d row(s) logged after the checkpoint (epoch %d, step %d); the "
                         "resumed run logs them again", removed, epoch, step)


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config in the run's folder, never over an earlier one: ``config.yaml`` for a new
    fit, ``config_resume.yaml`` for a resumed one, ``config_test.yaml`` (``_validate``, ``_predict``) for
    evaluations; numbered (``config_test_2.yaml``) when the name is taken."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        stage = str(getattr(stage, "value", stage))
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        resumed = stage == "fit" and bool(self.config.get("ckpt_path"))
        stem = "config" if stage == "fit" and not resumed else f"config_{'resume' if resumed else stage}"
        name, n = f"{stem}.yaml", 2
        if trainer.is_global_zero:
            while (log_dir / name).exists():
                name, n = f"{stem}_{n}.yaml", n + 1
        self.config_filename = trainer.strategy.broadcast(name)
        self.path = log_dir / self.config_filename
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Rank 0 only: no collective calls here (trainer.log_dir would be one).
        # The file goes with the W&B run too (the run config already holds its values).
        path = self.path
        for run in WandbTracking.runs(trainer):
            run.save(str(path), base_path=str(path.parent), policy="now")
