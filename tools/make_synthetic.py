#!/usr/bin/env python
"""Write a SYNTHETIC colour flow-imaging (FlowCam-like) particle dataset: manifest.csv + PNG tiles.

Defaults mirror the founding study: 8 antibodies x 2 stress sources (heat, mechanical) x 1,000
particles = 16,000 particles. The images are generated, not measured; the folder's README.txt and
the manifest's `instrument` column (synthetic-flowcam) say so. Measured features (esd_um, circularity,
aspect_ratio, convexity, edge_gradient, avg_red/avg_green/avg_blue, ...) come from each tile's mask and
pixels; --format flowcam writes them into the matching .lst/.csv fields, so curating that export with
tools/curate_flowcam.py gives the same values.

examples:
    python tools/make_synthetic.py --out datasets/synthetic
    python tools/make_synthetic.py --out /tmp/tiny --antibodies 2 --per-class 50 --extra-classes silicone_oil air_bubble
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from fimvision.console import make_parser, run_tool
from fimvision.data.manifest import class_counts
from fimvision.data.synthetic import EXTRA_CLASSES, SyntheticConfig, write_dataset
from fimvision.errors import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = SyntheticConfig()
    parser = make_parser("make_synthetic.py", __doc__ or "")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    parser.add_argument(
        "--antibodies",
        type=int,
        default=defaults.antibodies,
        help=f"number of antibodies (groups ab1..abN; default {defaults.antibodies})",
    )
    parser.add_argument(
        "--per-class",
        type=int,
        default=defaults.per_class,
        help=f"particles per class per antibody (default {defaults.per_class})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help=f"random seed; the same seed gives byte-identical files (default {defaults.seed})",
    )
    parser.add_argument(
        "--extra-classes",
        nargs="*",
        default=[],
        choices=EXTRA_CLASSES,
        metavar="CLASS",
        help=f"further classes besides heat and mechanical: {', '.join(EXTRA_CLASSES)}",
    )
    parser.add_argument(
        "--particles-per-vial",
        type=int,
        default=defaults.particles_per_vial,
        help=f"mean particles per vial, the `sample` column (default {defaults.particles_per_vial})",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists and is not empty"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (default: min(2, CPU count)); the output does not depend on it",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--format",
        choices=("folder", "flowcam"),
        default="folder",
        help="folder: manifest.csv + PNGs (default); flowcam: one VisualSpreadsheet-style run export a vial "
        "(collages, _bin.tif, .lst, .csv, .cla, .ctx) plus runs.csv, for tools/curate_flowcam.py --group-csv",
    )
    return parser.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = SyntheticConfig(
            antibodies=args.antibodies,
            per_class=args.per_class,
            extra_classes=tuple(args.extra_classes),
            seed=args.seed,
            particles_per_vial=args.particles_per_vial,
        )
        if args.format == "flowcam":
            from fimvision.curation.flowcam_writer import write_flowcam_runs
            from fimvision.data.synthetic import iter_particles, particle_count

            root = write_flowcam_runs(args.out, iter_particles(config), per="sample", overwrite=args.overwrite,
                                      progress=not args.no_progress, total=particle_count(config))
            print(f"Wrote SYNTHETIC FlowCam run exports (one a vial) to {root}; runs.csv maps run -> group")
            return 0
        root = write_dataset(
            args.out, config, overwrite=args.overwrite, workers=args.workers, progress=not args.no_progress
        )
    except (ValueError, FileExistsError) as error:  # the generator's own checks: bad input, not a crash
        raise ConfigError(str(error)) from error
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        counts = class_counts(row["label"] for row in csv.DictReader(fh))
    print(f"Wrote SYNTHETIC data (generated images, not measurements) to {root}")
    for label, n in counts.items():
        print(f"  {label}: {n}")
    print(f"  total: {sum(counts.values())} particles, {config.antibodies} antibodies, seed {config.seed}")
    return 0


if __name__ == "__main__":
    run_tool(main)
