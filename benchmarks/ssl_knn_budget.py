"""kNN accuracy each self-supervised method reaches on synthetic FIM data after a fixed budget.

For each method (configs/ssl/models/<method>_<backbone>.yaml on configs/ssl/pretrain.yaml) this runs the real CLI: ``validate``
at random initialisation, then ``fit`` for ``--epochs`` epochs, and reads ``val_knn_acc`` (weighted
kNN, k=20, T=0.07, bank = labelled training particles, query = validation particles, split grouped
by vial). Budget and data are printed with the table; results go to ``--out`` as CSV and a PNG.

Usage: python benchmarks/ssl_knn_budget.py [--methods simclr moco byol dino] [--backbone resnet18]
       [--epochs 10] [--image-size 32] [--per-class 60] [--batch-size 64] [--out runs/bench/ssl_knn]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from fimvision.cli import build_cli as cli  # noqa: E402
from fimvision.data.synthetic import SyntheticConfig, write_dataset  # noqa: E402
from fimvision.plots import plt, save_figure  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "ssl"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["simclr", "moco", "byol", "dino"])
    parser.add_argument("--backbone", default="resnet18", choices=["resnet18", "vit"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=60, help="particles per class and antibody (3 antibodies)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/ssl_knn"))
    parser.add_argument("--moco-queue", type=int, default=128,
                        help="MoCo queue size: the config's 4096 exceeds this small dataset, whose own old keys "
                             "would then crowd the negatives")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = args.out / "data"
    if not (data / "manifest.csv").is_file():
        write_dataset(data, SyntheticConfig(antibodies=3, per_class=args.per_class, particles_per_vial=10, seed=1),
                      progress=False)
    rows = []
    for method in args.methods:
        model = CONFIGS / "models" / f"{method}_{args.backbone}.yaml"
        out = args.out / f"{method}_{args.backbone}"
        common = ["--config", str(CONFIGS / "pretrain.yaml"), "--model", str(model), f"--data.init_args.root={data}",
                  f"--data.init_args.image_size={args.image_size}", f"--data.init_args.batch_size={args.batch_size}",
                  "--data.init_args.num_workers=0", f"--trainer.default_root_dir={out}",
                  f"--trainer.logger.init_args.save_dir={out}", "--trainer.enable_progress_bar=false",
                  f"--seed_everything={args.seed}"]
        if method == "dino":  # multi-crop local views at half the global size
            common += ["--data", str(CONFIGS / "data" / "synthetic_color_multicrop.yaml"),
                       f"--data.init_args.local_size={args.image_size // 2}"]
        if method == "moco":
            common.append(f"--model.init_args.queue_size={args.moco_queue}")
        initial = cli(["validate", *common]).trainer.callback_metrics["val_knn_acc"].item()
        start = time.perf_counter()
        fitted = cli(["fit", *common, f"--trainer.max_epochs={args.epochs}",
                      f"--trainer.check_val_every_n_epoch={args.epochs}",
                      f"--model.init_args.warmup_epochs={max(1, args.epochs // 10)}"])
        seconds = time.perf_counter() - start
        metrics = fitted.trainer.callback_metrics
        rows.append({"method": method, "backbone": args.backbone, "knn_acc_random_init": initial,
                     "knn_acc": metrics["val_knn_acc"].item(), "train_z_std": metrics["train_z_std"].item(),
                     "steps": fitted.trainer.global_step, "seconds": round(seconds, 1)})
        print(rows[-1], flush=True)

    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / f"knn_budget_{args.backbone}.csv", index=False)
    n_data = len(pd.read_csv(data / "manifest.csv"))
    print(f"\nBudget: {args.epochs} epochs, batch {args.batch_size}, {args.image_size} px, {args.backbone}, "
          f"seed {args.seed}; data: synthetic colour FIM, {n_data} particles (3 antibodies, 2 classes), "
          "split grouped by vial; kNN k=20, T=0.07 on validation particles against labelled training particles.")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    fig, ax = plt.subplots(figsize=(5, 3))
    x = range(len(table))
    ax.bar([i - 0.2 for i in x], table["knn_acc_random_init"], width=0.4, label="random init")
    ax.bar([i + 0.2 for i in x], table["knn_acc"], width=0.4, label=f"after {args.epochs} epochs")
    ax.set_xticks(list(x), table["method"])
    ax.set_ylabel("val kNN accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title(f"{args.backbone}, {args.image_size} px, synthetic FIM")
    save_figure(fig, args.out / f"knn_budget_{args.backbone}.png")
    print(f"wrote {args.out / f'knn_budget_{args.backbone}.csv'} and .png")


if __name__ == "__main__":
    main()
