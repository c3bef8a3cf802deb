"""Weight drift between paired training runs: a Lightning callback, the comparison and the paired runs.

Two runs that differ in one thing (the seed, the precision, the attention backend) start from the same
weights; their weights are compared every few steps, per parameter tensor and for the whole model
(all parameters as one vector), by the maximum absolute difference and the 1-D Wasserstein distance
between the two sets of weight values. The seed pair (same initial weights, another data order,
dropout and drop-path draw) is the yardstick: a drift well below it is harmless.

Each run is a Lightning Trainer fitting a copy of the LightningModule (its own ``training_step``, optimizer and
schedule) on the same training samples, drawn once (real or the model's synthetic batches; multi-view for
self-supervised methods), reshuffled by the run's seed.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from scipy.stats import wasserstein_distance
from torch.utils.data import StackDataset

from fimvision.efficiency.attention import attention_modules
from fimvision.efficiency.precision import get_precision, prepare_model
from fimvision.efficiency.steps import require_automatic_optimization
from fimvision.efficiency.summary import show, write_csv

log = logging.getLogger(__name__)
MODEL = "__model__"  # the whole-model row of the drift table


def _wasserstein(u: torch.Tensor, v: torch.Tensor) -> float:
    """1-D Wasserstein distance between the empirical distributions of ``u``'s and ``v``'s values."""
    return float(wasserstein_distance(u.detach().reshape(-1).double().cpu().numpy(),
                                      v.detach().reshape(-1).double().cpu().numpy()))


def weight_drift(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], per_tensor: bool = True) -> list[dict]:
    """Max-abs difference and Wasserstein distance (``scipy.stats.wasserstein_distance`` of the weight values)
    between two state dicts of the same model:
    one row per tensor (when ``per_tensor``) and one for the whole model (``tensor == "__model__"``)."""
    if a.keys() != b.keys():
        raise ValueError(f"the snapshots hold different tensors: {sorted(set(a) ^ set(b))[:5]}")
    rows = []
    if per_tensor:
        for name in a:
            rows.append({"tensor": name, "numel": a[name].numel(),
                         "max_abs": (a[name].double() - b[name].double()).abs().max().item(),
                         "wasserstein": _wasserstein(a[name], b[name])})
    flat_a = torch.cat([t.reshape(-1).float() for t in a.values()])
    flat_b = torch.cat([t.reshape(-1).float() for t in b.values()])
    rows.append({"tensor": MODEL, "numel": flat_a.numel(), "max_abs": (flat_a - flat_b).abs().max().item(),
                 "wasserstein": _wasserstein(flat_a, flat_b)})
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
class DriftSettings:
    """Options of `drift`.

    Args:
        pairs: context pairs against the base run: ``seed`` (seed vs seed+1, same initial weights),
            ``precision`` (other_precision vs precision), ``backend`` (other_backend vs backend).
        steps: optimizer steps per run.
        every_n_steps: snapshot interval.
        batch_size: batch size.
        seed: seed of the base run.
        precision: precision of the base run.
        backend: attention backend of the base run.
        other_precision: precision of the precision pair's other run.
        other_backend: backend of the backend pair's other run.
        per_tensor: also write per-tensor rows.
        keep_snapshots: keep the weight snapshots (they take model size x snapshots x runs on disk).
    """

    pairs: list[Literal["seed", "precision", "backend"]] = field(default_factory=lambda: ["seed", "precision", "backend"])
    steps: int = 30
    every_n_steps: int = 5
    batch_size: int = 8
    seed: int = 0
    precision: str = "32-true"
    backend: str = "math"
    other_precision: str = "bf16-mixed"
    other_backend: str = "flash"
    per_tensor: bool = True
    keep_snapshots: bool = False


@dataclass
class RunSpec:
    """One training run of a drift study."""

    name: str
    seed: int
    precision: str
    backend: str


def pair_runs(s: DriftSettings, has_attention: bool = True) -> tuple[RunSpec, dict[str, RunSpec]]:
    """The base run and, per pair of ``s.pairs``, the run that differs from it in one thing."""
    base = RunSpec("base", s.seed, s.precision, s.backend if has_attention else "auto")
    others = {}
    for pair in s.pairs:
        if pair == "seed":
            others[f"seed {s.seed} vs {s.seed + 1}"] = replace(base, name=pair, seed=s.seed + 1)
        elif pair == "precision":
            others[f"{s.other_precision} vs {s.precision}"] = replace(base, name=pair, precision=s.other_precision)
        elif pair == "backend" and has_attention:
            others[f"{s.other_backend} vs {s.backend}"] = replace(base, name=pair, backend=s.other_backend)
        elif pair == "backend":
            log.warning("the model has no attention modules: the backend pair is skipped")
        else:
            raise ValueError(f"unknown drift pair '{pair}'; use seed, precision or backend")
    return base, others


def batch_dataset(batch: dict) -> torch.utils.data.Dataset:
    """The samples of one training batch (images a tensor or a list of views), for loaders that reshuffle them."""
    return StackDataset(**{k: StackDataset(*v) if isinstance(v, (list, tuple)) else v for k, v in batch.items()})


def train_run(module: pl.LightningModule, spec: RunSpec, loader_fn, out: Path, *, steps: int, every_n_steps: int,
              device: str, progress: bool = False, tracking=None, config: dict | None = None) -> tuple[Path, dict]:
    """Train a copy of ``module`` with a Lightning Trainer for ``steps`` optimizer steps as ``spec`` says.

    Returns its snapshot folder and a summary: steps taken, the last ``train_loss`` the module logged and how
    far the weights moved from the first snapshot to the last (``moved_max_abs``, ``moved_wasserstein``).
    """
    model = prepare_model(module, "32-true", device, backend=spec.backend)
    pl.seed_everything(spec.seed, verbose=False)
    snapshots = out / "snapshots" / spec.name
    shutil.rmtree(snapshots, ignore_errors=True)
    callback = WeightDriftCallback(str(snapshots), every_n_steps)
    logger = False
    if tracking is not None and tracking.enabled:  # each run of the study is a W&B run of the "drift" group
        logger = tracking.make_logger({**(config or {}), "drift_run": asdict(spec)}, out, name=f"drift-{spec.name}",
                                      group=tracking.group or "drift")
    trainer = pl.Trainer(accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1,
                         precision=get_precision(spec.precision).lightning, max_steps=steps, logger=logger,
                         enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[callback],
                         log_every_n_steps=every_n_steps)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`validation_step` but have no `val_dataloader`.*")
        trainer.fit(model, train_dataloaders=loader_fn(spec.seed))
    first, last = (torch.load(snapshot_path(snapshots, step), weights_only=True) for step in (callback.steps[0],
                                                                                                callback.steps[-1]))
    moved = weight_drift(first, last, per_tensor=False)[-1]
    loss = trainer.callback_metrics.get("train_loss")
    if logger:
        from fimvision.tracking import WandbTracking

        WandbTracking.finish(trainer)
    return snapshots, {"steps": trainer.global_step, "train_loss": float("nan" if loss is None else loss),
                       "moved_max_abs": moved["max_abs"], "moved_wasserstein": moved["wasserstein"]}


def run_drift(target, s: DriftSettings, device: str, out: Path) -> dict:
    """`fimvision-efficiency drift`: the base run and one run per pair, all on the same ``steps x batch_size``
    training samples (drawn once, reshuffled by each run's seed); ``drift.csv``, ``drift.png`` and a table."""
    require_automatic_optimization(target.module)
    samples = batch_dataset(target.batch(s.steps * s.batch_size, seed=12345))

    def loader(seed: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(samples, batch_size=s.batch_size, shuffle=True, drop_last=True,
                                           generator=torch.Generator().manual_seed(seed))

    base, others = pair_runs(s, has_attention=bool(attention_modules(target.module)))
    kw = {"tracking": target.tracking, "config": target.resolved, "steps": s.steps, "every_n_steps": s.every_n_steps,
          "device": device}
    base_dir, base_summary = train_run(target.module, base, loader, out, **kw)
    rows, runs = [], {}
    for pair, spec in others.items():
        other_dir, runs[pair] = train_run(target.module, spec, loader, out, **kw)
        rows += [{"pair": pair, **r} for r in compare_runs(other_dir, base_dir, per_tensor=s.per_tensor)]
        if not s.keep_snapshots:
            shutil.rmtree(other_dir)
    if not s.keep_snapshots:
        shutil.rmtree(base_dir)
    write_csv(rows, out / "drift.csv")
    drift_png(rows, out / "drift.png", title=f"weight drift, {target.name}: base = {base.precision}, {base.backend}, seed {base.seed}")
    slope = slopes(rows)
    final = []
    for pair in others:
        last = [r for r in rows if r["pair"] == pair and r["tensor"] == MODEL][-1]
        final.append({"pair": pair, "step": last["step"], "max_abs": last["max_abs"], "wasserstein": last["wasserstein"],
                      "slope_max_abs": slope[pair]["max_abs"], "slope_wasserstein": slope[pair]["wasserstein"]})
    show(f"whole-model weight drift after {s.steps} steps ({target.name}, {device}); slopes per step", final)
    print(f"base run: train_loss {base_summary['train_loss']:.4g}; its weights moved max-abs "
          f"{base_summary['moved_max_abs']:.4g}, Wasserstein {base_summary['moved_wasserstein']:.4g} from the start")
    return {"model": target.name, "base": {**asdict(base), **base_summary},
            "runs": {k: {**asdict(v), **runs[k]} for k, v in others.items()}, "final": final, "slopes": slope}
