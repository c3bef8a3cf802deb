"""`fimvision fit` throughput against a plain PyTorch loop: same model, data, batch size, in one run.

Both train the model built from configs/supervised/resnet18_color.yaml on the same data loader;
the first steps are warm-up and not timed. The runs alternate (fit, plain, fit, plain, ...); the medians
of each and the median of the paired ratios are reported, so machine noise hits both alike. Target: ratio >= 0.9.

    python benchmarks/fit_throughput.py [--steps 30] [--repeats 3] [--config configs/supervised/resnet18_color.yaml]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from _common import synthetic_dataset

from fimvision.cli import FimvisionCLI, build_cli


class StepTimer(pl.Callback):
    """Wall time of training steps after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.images = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        if trainer.global_step >= self.warmup:
            self.images += len(batch["image"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def plain_loop(model: torch.nn.Module, loader, steps: int, warmup: int, lr: float, weight_decay: float,
               label_smoothing: float) -> float:
    """Images/s of a hand-written loop over the same loader."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    images, step, start = 0, 0, 0.0
    while step < steps + warmup:
        for batch in loader:
            if step == warmup:
                start = time.perf_counter()
            if step >= warmup:
                images += len(batch["image"])
            loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["target"],
                                                     label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps + warmup:
                break
    return images / (time.perf_counter() - start)


def fit_once(config: Path, root: Path, steps: int, warmup: int, out: Path) -> tuple[float, FimvisionCLI]:
    timer = StepTimer(warmup)
    cli = build_cli(run=False, args=[
                           "--config", str(config), f"--data.init_args.root={root}", "--data.init_args.num_workers=0",
                           f"--trainer.max_steps={steps + warmup}", "--trainer.limit_val_batches=0",
                           "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
                           "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={out}",
                           f"--trainer.logger.init_args.save_dir={out}"])
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    return timer.images / (timer.end - timer.start), cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/supervised/resnet18_color.yaml"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-fit"))
    args = parser.parse_args()
    root = synthetic_dataset()
    fit_rates, plain_rates = [], []
    for _ in range(args.repeats):
        rate, cli = fit_once(args.config, root, args.steps, args.warmup, args.out)
        fit_rates.append(rate)
        h = cli.model.hparams
        model = copy.deepcopy(cli.model.build_backbone(num_classes=cli.model.hparams.num_classes))  # same architecture, fresh weights
        plain_rates.append(plain_loop(model, cli.datamodule.train_dataloader(), args.steps, args.warmup,
                                      h.lr, h.weight_decay, h.label_smoothing))
        print(f"fit {fit_rates[-1]:.1f} img/s, plain {plain_rates[-1]:.1f} img/s, "
              f"ratio {fit_rates[-1] / plain_rates[-1]:.3f}", flush=True)
    fit, plain = statistics.median(fit_rates), statistics.median(plain_rates)
    pair_ratio = statistics.median(f / p for f, p in zip(fit_rates, plain_rates, strict=True))
    print(f"\n{args.config.name}, batch {cli.datamodule.hparams.batch_size}, {cli.datamodule.image_size} px, "
          f"{torch.get_num_threads()} threads, {args.steps} timed steps x {args.repeats}")
    print(f"fimvision fit: {fit:.1f} img/s (median)   plain PyTorch: {plain:.1f} img/s   ratio of medians: "
          f"{fit / plain:.3f}   median of paired ratios: {pair_ratio:.3f}")


if __name__ == "__main__":
    main()
