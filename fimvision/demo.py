"""`make demo`: colour versus monochrome FIM on the built-in synthetic data.

Generates the synthetic dataset if missing, trains the same small CNN (ResNet-18) on colour, on colour
with background normalisation (each crop divided by its own background colour, so the held-out
antibody's tint does not mislead the model) and on mono, with the same seed and budget, evaluates them
on a leave-one-antibody-out fold, and prints a table, writing a bar chart and the confusion matrices. A
fourth row adds the particles' instrument-like measurements beside the image (late fusion).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from fimvision.cli import fit_and_test
from fimvision.console import make_parser, prepare_script, run_main
from fimvision.data.synthetic import SyntheticConfig, write_dataset
from fimvision.plots import grouped_bars_png

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "supervised"
METRICS = {"test_acc": "accuracy", "test_balanced_acc": "balanced accuracy", "test_f1_macro": "macro F1"}
# The demo's rows: name -> (config, extra arguments).
ROWS = {
    "color": ("resnet18_color", []),
    "color+bgnorm": ("resnet18_color", ["--data.init_args.color_norm=background"]),
    "mono": ("resnet18_mono", []),
    # The instrument-like measurements of each particle beside its image (late fusion).
    "color+bgnorm+features": ("resnet18_color_features", ["--data.init_args.color_norm=background"]),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = make_parser("fimvision-demo", __doc__ or "")
    parser.add_argument("--data", type=Path, default=Path("datasets/synthetic-demo"),
                        help="synthetic dataset folder (generated when missing)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for runs, table and plots")
    parser.add_argument("--antibodies", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=150, help="particles per class per antibody")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--fold", type=int, default=0, help="which antibody is held out (sorted order)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def train_and_test(row: str, args: argparse.Namespace) -> tuple[dict, Path, str]:
    """Fit the ResNet-18 config of demo row ``row`` and test its best checkpoint; metrics, confusion PNG, held-out group."""
    config, extra = ROWS[row]
    done = fit_and_test([
        "--config", str(CONFIGS / f"{config}.yaml"),
        f"--seed_everything={args.seed}",
        f"--data.init_args.root={args.data}",
        "--data.init_args.split=group", f"--data.init_args.fold={args.fold}",
        f"--data.init_args.image_size={args.image_size}",
        "--data.init_args.num_workers=0",
        f"--trainer.max_epochs={args.epochs}",
        f"--trainer.default_root_dir={args.out / row}",
        f"--trainer.logger.init_args.save_dir={args.out}",
        f"--trainer.logger.init_args.name={row}",
        *extra,
    ])
    held_out = sorted(done.fit.datamodule.manifest.frame["group"].unique())[args.fold]
    return done.test_metrics, done.folder / "confusion_matrix.png", held_out


def main(argv: list[str] | None = None) -> int:
    """The `fimvision-demo` console script; returns its exit status (0, 2 bad input, 130, 1)."""
    prepare_script()
    return run_main(run, argv)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("fimvision").setLevel(logging.INFO)
    start = time.time()
    if not (args.data / "manifest.csv").is_file():
        print(f"generating SYNTHETIC colour-FIM data in {args.data} ...")
        write_dataset(args.data, SyntheticConfig(antibodies=args.antibodies, per_class=args.per_class, seed=args.seed))
    results, confusions = {}, {}
    for row in ROWS:
        print(f"\n=== ResNet-18, {row}: {args.epochs} epochs, seed {args.seed} ===")
        results[row], confusions[row], held_out = train_and_test(row, args)

    print(f"\nColour vs mono FIM on SYNTHETIC data, leave-one-antibody-out (held out: {held_out}), "
          f"ResNet-18 at {args.image_size} px, {args.epochs} epochs, seed {args.seed}, one run each")
    print(f"{'input':<22}" + "".join(f"{name:>20}" for name in METRICS.values()))
    for row, metrics in results.items():
        print(f"{row:<22}" + "".join(f"{metrics[key]:>20.3f}" for key in METRICS))
    print("(bgnorm: each crop divided by its own background colour, --data.init_args.color_norm=background;\n"
          " features: the particle's instrument measurements beside the image, configs/supervised/"
          "resnet18_color_features.yaml)")
    bars = grouped_bars_png({m: {METRICS[k]: results[m][k] for k in METRICS} for m in results},
                            args.out / "color_vs_mono.png", ylabel="test score",
                            title=f"SYNTHETIC data: colour, colour + background norm., mono; held-out antibody {held_out} (one seed)")
    print(f"\nbar chart:          {bars}")
    for row, path in confusions.items():
        print(f"confusion ({row}): {path}")
    print(f"done in {(time.time() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
