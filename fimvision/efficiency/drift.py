"""Weight drift between paired training runs: a Lightning callback, the comparison and the paired runs.

Two runs that differ in one thing (the seed, the precision, the attention backend) start from the same
weights; their weights are compared every few steps, per parameter tensor and for the whole model
(all parameters as one vector), by the maximum absolute difference and the 1-D Wasserstein distance
between the two sets of weight values. The seed pair (same initial weights, another data order,
dropout and drop-path draw) is the yardstick: a drift well below it is harmless.
"""

from __future__ import annotations

import copy
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)
MODEL = "__model__"  # the whole-model row of the drift table


def wasserstein_1d(u: torch.Tensor, v: torch.Tensor) -> float:
    """1-D Wasserstein (earth mover's) distance between the empirical distributions of ``u`` and ``v``'s
    values (equal weights), as ``scipy.stats.wasserstein_distance``; computed in fp64."""
    u = torch.sort(u.detach().reshape(-1).double()).values
    v = torch.sort(v.detach().reshape(-1).double()).values
    if u.numel() == v.numel():
        return (u - v).abs().mean().item()
    # Integral of |F_u - F_v| over the merged support.
    values = torch.sort(torch.cat([u, v])).values
    deltas = values[1:] - values[:-1]
    cdf_u = torch.searchsorted(u, values[:-1], right=True).double() / u.numel()
    cdf_v = torch.searchsorted(v, values[:-1], right=True).double() / v.numel()
    return ((cdf_u - cdf_v).abs() * deltas).sum().item()


def weight_drift(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], per_tensor: bool = True) -> list[dict]:
    """Max-abs difference and Wasserstein distance between two state dicts of the same model:
    one row per tensor (when ``per_tensor``) and one for the whole model (``tensor == "__model__"``)."""
    if a.keys() != b.keys():
        raise ValueError(f"the snapshots hold different tensors: {sorted(set(a) ^ set(b))[:5]}")
    rows = []
    if per_tensor:
        for name in a:
            rows.append({"tensor": name, "numel": a[name].numel(),
                         "max_abs": (a[name].double() - b[name].double()).abs().max().item(),
                         "wasserstein": wasserstein_1d(a[name], b[name])})
    flat_a = torch.cat([t.reshape(-1).float() for t in a.values()])
    flat_b = torch.cat([t.reshape(-1).float() for t in b.values()])
    rows.append({"tensor": MODEL, "numel": flat_a.numel(), "max_abs": (flat_a - flat_b).abs().max().item(),
                 "wasserstein": wasserstein_1d(flat_a, flat_b)})
    return rows


def snapshot_path(dirpath: str | Path, step: int) -> Path:
    return Path(dirpath) / f"step_{step:07d}.pt"


class WeightDriftCallback(pl.Callback):
    """Save the trainable weights every ``every_n_steps`` optimizer steps (and before the first) to
    ``dirpath/step_NNNNNNN.pt``; with ``reference`` (another run's ``dirpath``), also log the
    whole-model drift against that run's snapshot of the same step as ``drift_max_abs`` and
    ``drift_wasserstein``.

    Use it in a trainer config::

        callbacks:
          - class_path: fimvision.efficiency.drift.WeightDriftCallback
            init_args: {dirpath: runs/drift/a, every_n_steps: 50}

    Args:
        dirpath: folder for this run's snapshots.
        every_n_steps: snapshot interval in optimizer steps.
        reference: snapshot folder of the run to compare with (optional).
    """

    def __init__(self, dirpath: str, every_n_steps: int = 50, reference: str | None = None) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.reference = Path(reference) if reference else None
        self.steps: list[int] = []

    def _snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if self.steps and self.steps[-1] == step:
            return
        state = {n: p.detach().float().cpu().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save(state, snapshot_path(self.dirpath, step))
        self.steps.append(step)
        ref = snapshot_path(self.reference, step) if self.reference else None
        if ref is not None and ref.is_file() and trainer.logger is not None:
            row = weight_drift(state, torch.load(ref, weights_only=True), per_tensor=False)[-1]
            trainer.logger.log_metrics({"drift_max_abs": row["max_abs"], "drift_wasserstein": row["wasserstein"]}, step)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshot(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._snapshot(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshot(trainer, pl_module)


def compare_runs(dir_a: str | Path, dir_b: str | Path, per_tensor: bool = True) -> list[dict]:
    """Drift rows (with ``step``) for every step both snapshot folders hold."""
    steps_a = {int(p.stem.split("_")[1]) for p in Path(dir_a).glob("step_*.pt")}
    steps_b = {int(p.stem.split("_")[1]) for p in Path(dir_b).glob("step_*.pt")}
    rows = []
    for step in sorted(steps_a & steps_b):
        a = torch.load(snapshot_path(dir_a, step), weights_only=True)
        b = torch.load(snapshot_path(dir_b, step), weights_only=True)
        rows += [{"step": step, **row} for row in weight_drift(a, b, per_tensor)]
    return rows


def slopes(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Least-squares slope (per step) of the whole-model max-abs and Wasserstein curves of each pair."""
    out: dict[str, dict[str, float]] = {}
    for pair in dict.fromkeys(r["pair"] for r in rows):
        model = [r for r in rows if r["pair"] == pair and r["tensor"] == MODEL]
        steps = np.array([r["step"] for r in model], dtype=float)
        out[pair] = {m: float(np.polyfit(steps, [r[m] for r in model], 1)[0]) if len(model) > 1 else float("nan")
                     for m in ("max_abs", "wasserstein")}
    return out


def drift_png(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Whole-model max-abs and Wasserstein drift over training per pair (top) and their slopes (bottom)."""
    from fimvision.plots import plt, save_figure

    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    for pair in dict.fromkeys(r["pair"] for r in rows):
        model = [r for r in rows if r["pair"] == pair and r["tensor"] == MODEL]
        steps = np.array([r["step"] for r in model], dtype=float)
        for col, metric in enumerate(("max_abs", "wasserstein")):
            values = np.array([r[metric] for r in model])
            axes[0, col].plot(steps, values, marker="o", label=pair)
            if len(steps) > 1:
                axes[1, col].plot((steps[1:] + steps[:-1]) / 2, np.diff(values) / np.diff(steps), marker=".", label=pair)
    for col, metric in enumerate(("max abs difference", "Wasserstein distance")):
        axes[0, col].set_ylabel(metric)
        axes[0, col].set_yscale("symlog", linthresh=1e-8)
        axes[1, col].set_ylabel(f"slope of {metric} (per step)")
        axes[1, col].set_xlabel("training step")
        axes[1, col].axhline(0, color="grey", lw=0.5)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


@dataclass
class RunSpec:
    """One training run of a drift study."""

    name: str
    seed: int
    precision: str
    backend: str


PAIR_CHANGES = {"seed": "seed", "precision": "bf16-mixed vs 32-true", "backend": "flash vs math"}


def pair_runs(pairs: list[str], seed: int = 0, precision: str = "32-true", backend: str = "math",
              other_precision: str = "bf16-mixed", other_backend: str = "flash",
              has_attention: bool = True) -> tuple[RunSpec, dict[str, RunSpec]]:
    """The base run and, per pair, the run that differs from it in one thing."""
    base = RunSpec("base", seed, precision, backend if has_attention else "auto")
    others = {}
    for pair in pairs:
        if pair == "seed":
            others[f"seed {seed} vs {seed + 1}"] = RunSpec("seed", seed + 1, base.precision, base.backend)
        elif pair == "precision":
            others[f"{other_precision} vs {precision}"] = RunSpec("precision", seed, other_precision, base.backend)
        elif pair == "backend":
            if not has_attention:
                log.warning("the model has no attention modules: the backend pair is skipped")
                continue
            others[f"{other_backend} vs {backend}"] = RunSpec("backend", seed, base.precision, other_backend)
        else:
            raise ValueError(f"unknown drift pair '{pair}'; use seed, precision or backend")
    return base, others


class _SyntheticImages(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "target": self.y[i], "index": i}


def train_run(module: pl.LightningModule, spec: RunSpec, loader_fn, out: Path, *, steps: int, every_n_steps: int,
              accelerator: str, progress: bool = False) -> Path:
    """Train a copy of ``module`` for ``steps`` optimizer steps as ``spec`` says; return its snapshot folder."""
    from fimvision.efficiency.attention import attention_modules, set_attention_backend

    model = copy.deepcopy(module)
    if attention_modules(model):
        set_attention_backend(model, spec.backend, "cuda" if accelerator == "gpu" else "cpu")
    pl.seed_everything(spec.seed, verbose=False)
    snapshots = out / "snapshots" / spec.name
    shutil.rmtree(snapshots, ignore_errors=True)
    trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=spec.precision.replace("tf32", "32-true"),
                         max_steps=steps, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=progress, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[WeightDriftCallback(str(snapshots), every_n_steps)])
    trainer.fit(model, train_dataloaders=loader_fn(spec.seed))
    return snapshots
