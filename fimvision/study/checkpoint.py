"""What a study records about the checkpoint a run tested."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def checkpoint_metrics(folder: Path, checkpoint: str | Path) -> dict[str, float]:
    """The epoch of ``checkpoint`` (``best_epoch``) and the ``val_*`` metrics of the validation it was saved
    after, from the run's ``metrics.csv``: what describes the checkpoint that is tested, not the last epoch.

    The epoch and step are the checkpoint's own (stored in it), not parsed from its file name, whose pattern
    a config may change. Of that epoch's validations (several with ``val_check_interval``), the last one at
    or before the checkpoint's step.
    """
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    epoch, step = int(state["epoch"]), int(state.get("global_step", 0))
    out: dict[str, float] = {"best_epoch": epoch}
    path = Path(folder) / "metrics.csv"
    if not path.is_file():
        return out
    logged = pd.read_csv(path)
    columns = [c for c in logged.columns if c.startswith("val_")]
    if not columns or "epoch" not in logged:
        return out
    rows = logged[(logged["epoch"] == epoch) & logged[columns].notna().any(axis=1)]
    if "step" in rows and (rows["step"] <= step).any():
        rows = rows[rows["step"] == rows.loc[rows["step"] <= step, "step"].max()]
    elif "step" in rows and len(rows):
        rows = rows[rows["step"] == rows["step"].min()]
    for column in columns:  # a metric may have its own row at that step
        values = rows[column].dropna()
        if len(values):
            out[column] = float(values.iloc[-1])
    return out
