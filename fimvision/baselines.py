"""`fimvision-baseline`: the features-only baseline, scikit-learn's histogram gradient boosting on the
particle's instrument features, on exactly the splits a fimvision config gives its network.

Every comparison can then show image only / features only / fused on the same particles:

    fimvision-baseline --config configs/supervised/resnet18_color_features.yaml
    fimvision-baseline --config configs/supervised/resnet18_color_features.yaml --data.init_args.seed=1 --out runs/hgb

Any `fimvision fit` option is accepted (the data section is what counts); the model section is ignored.
Missing feature values are left to the booster, which handles them natively.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

from fimvision.cli import build_cli
from fimvision.console import make_parser, prepare_script, run_main
from fimvision.errors import ConfigError
from fimvision.models.trees import fit_booster

METRICS = ("test_acc", "test_balanced_acc", "test_f1_macro")


def features_baseline(datamodule, *, seed: int = 0, max_iter: int = 300) -> dict:
    """Fit the booster on the data module's training split (train + val: a booster needs no
    checkpoint selection) and score it on the test split. Returns the test metrics, confusion matrix
    and the features used."""
    if not datamodule.feature_names:
        raise ConfigError("the features-only baseline needs features: set `features:` on the data module "
                          "(e.g. --data.init_args.features=instrument, or a config such as "
                          "configs/supervised/resnet18_color_features.yaml).")
    split_of = datamodule.split_rows()
    features, targets = datamodule.features(), np.asarray(datamodule.manifest.targets())
    train = np.concatenate([np.flatnonzero(split_of == "train"), np.flatnonzero(split_of == "val")])
    test = np.flatnonzero(split_of == "test")
    x_train, y_train, x_test, y_test = features[train], targets[train], features[test], targets[test]
    model = fit_booster(x_train, y_train, max_iter=max_iter, seed=seed)
    predicted = model.predict(x_test)
    labels = np.arange(datamodule.num_classes)
    return {
        "test_acc": float(accuracy_score(y_test, predicted)),
        "test_balanced_acc": float(balanced_accuracy_score(y_test, predicted)),
        "test_f1_macro": float(f1_score(y_test, predicted, labels=labels, average="macro", zero_division=0)),
        "confusion_matrix": confusion_matrix(y_test, predicted, labels=labels).tolist(),
        "classes": list(datamodule.classes),
        "features": list(datamodule.feature_names),
        "n_train": len(y_train),
        "n_test": len(y_test),
    }


def run(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("fimvision-baseline", __doc__ or "")
    parser.add_argument("--out", type=Path, help="folder for baseline_metrics.json (default: print only)")
    parser.add_argument("--max-iter", type=int, default=300, help="boosting iterations (early stopping on)")
    args, fit_args = parser.parse_known_args(argv)
    if not any(a == "--config" or a.startswith("--config=") for a in fit_args):
        parser.error("give a fimvision config: --config FILE (its data section sets data, features and split)")
    cli = build_cli(list(fit_args), run=False)
    seed = cli.config.get("seed_everything")
    seed = seed if isinstance(seed, int) else 0
    result = features_baseline(cli.datamodule, seed=seed, max_iter=args.max_iter)
    print(f"features-only baseline (histogram gradient boosting, {len(result['features'])} features, "
          f"{result['n_train']} training / {result['n_test']} test particles):")
    print("  " + "  ".join(f"{k}={result[k]:.4f}" for k in METRICS))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "baseline_metrics.json").write_text(json.dumps(result, indent=2))
        print(f"  written: {args.out / 'baseline_metrics.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The `fimvision-baseline` console script; returns its exit status (0, 2 bad input, 130, 1)."""
    prepare_script()
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
