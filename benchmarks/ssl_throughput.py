"""Self-supervised pretraining throughput: fimvision's SimCLR (Lightning + lightly) against a plain PyTorch
SimCLR loop on the same batches, for ResNet-18 and ViT-Small/8 at 64 px.

Both loops train the same timm backbone, the same projection head shape, NT-Xent at the same
temperature and SGD at the same settings, on the very same pre-augmented two-view batches (made once
by SSLDataModule from synthetic data), so the ratio measures the framework overhead, not augmentation.
Runs alternate (plain, fimvision, plain, fimvision, ...) and the median of each is reported.

Usage: python benchmarks/ssl_throughput.py [--backbones resnet18 vit] [--steps 8] [--batch-size 32]
       [--repeats 3] [--threads 2] [--image-size 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from fimvision.data.ssl_data import SSLDataModule  # noqa: E402
from fimvision.data.synthetic import SyntheticConfig, write_dataset  # noqa: E402
from fimvision.models.backbones import create_backbone  # noqa: E402
from fimvision.models.ssl import SimCLR  # noqa: E402

BACKBONES = {"resnet18": ("resnet18", {}), "vit": ("vit_small_patch16_224", {"patch_size": 8})}
TEMPERATURE, LR, HIDDEN, OUT = 0.2, 0.05, 512, 128


def make_batches(n: int, batch_size: int, image_size: int, workdir: Path) -> list[dict]:
    """``n`` two-view batches from synthetic data, augmented once by SSLDataModule."""
    write_dataset(workdir / "data", SyntheticConfig(antibodies=2, per_class=n * batch_size // 2 + 4),
                  progress=False)
    data = SSLDataModule(root=str(workdir / "data"), image_size=image_size, batch_size=batch_size, split="random")
    data.setup("fit")
    batches = []
    for batch in data.train_dataloader():
        batches.append(batch)
        if len(batches) == n:
            return batches
    raise RuntimeError("not enough data for the requested number of batches")


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> torch.Tensor:
    """Plain NT-Xent (SimCLR): each view's positive is the other view of its particle, the rest negatives."""
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(-float("inf"))
    n = len(z0)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def plain_loop(name: str, kwargs: dict, batches: list[dict], warmup: int, image_size: int) -> float:
    """Seconds for the timed batches of a plain PyTorch SimCLR loop."""
    torch.manual_seed(0)
    backbone = create_backbone(name, in_chans=3, num_classes=0, img_size=image_size, **kwargs)
    head = nn.Sequential(nn.Linear(backbone.num_features, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, OUT))
    model = nn.Sequential(backbone, head).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-5)
    start = 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        v0, v1 = batch["image"]
        z0, z1 = model(torch.cat([v0, v1])).chunk(2)
        loss = nt_xent(z0, z1, TEMPERATURE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


class _Timer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.seconds = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seconds = time.perf_counter() - self.start


def fimvision_loop(name: str, kwargs: dict, batches: list[dict], warmup: int, image_size: int) -> float:
    """Seconds for the timed batches of fimvision's SimCLR under a Lightning Trainer."""
    torch.manual_seed(0)
    model = SimCLR(backbone=name, backbone_kwargs=kwargs, num_classes=0, in_chans=3, img_size=image_size,
                   temperature=TEMPERATURE, proj_hidden_dim=HIDDEN, proj_output_dim=OUT, optimizer="sgd", lr=LR,
                   weight_decay=1e-5, scheduler="cosine", warmup_epochs=0)
    timer = _Timer(warmup)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[timer], num_sanity_val_steps=0)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(model, train_dataloaders=loader)
    return timer.seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per run")
    parser.add_argument("--batch-size", type=int, default=32, help="particles per batch (two views each)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="fimvision-ssl-bench-") as tmp:
        batches = make_batches(args.warmup + args.steps, args.batch_size, args.image_size, Path(tmp))
    images = args.steps * args.batch_size * 2
    rows = []
    for key in args.backbones:
        name, kwargs = BACKBONES[key]
        times: dict[str, list[float]] = {"plain": [], "fimvision": []}
        for _ in tqdm(range(args.repeats), desc=key, leave=False):
            times["plain"].append(plain_loop(name, kwargs, batches, args.warmup, args.image_size))
            times["fimvision"].append(fimvision_loop(name, kwargs, batches, args.warmup, args.image_size))
        plain, ours = (images / statistics.median(times[k]) for k in ("plain", "fimvision"))
        rows.append((key, plain, ours, ours / plain, times))
        print(f"{key}: plain {plain:.1f} img/s, fimvision {ours:.1f} img/s, ratio {ours / plain:.3f}", flush=True)
    print(f"\nSimCLR training throughput at {args.image_size} px, batch {args.batch_size} particles x 2 views, "
          f"{args.steps} timed steps (after {args.warmup}), median of {args.repeats}, "
          f"{args.threads} thread(s), device cpu")
    print(f"{'backbone':<10} {'plain img/s':>12} {'fimvision img/s':>16} {'ratio':>7}")
    for key, plain, ours, ratio, times in rows:
        print(f"{key:<10} {plain:>12.1f} {ours:>16.1f} {ratio:>7.3f}   "
              f"(seconds plain {[round(t, 2) for t in times['plain']]}, "
              f"fimvision {[round(t, 2) for t in times['fimvision']]})")


if __name__ == "__main__":
    main()
