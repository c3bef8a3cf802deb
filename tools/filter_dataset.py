#!/usr/bin/env python
"""Quality control of a curated dataset: filter particles, remove duplicates, report the class balance."""

from __future__ import annotations

from collections.abc import Sequence

from fimvision.console import make_parser, run_tool

EPILOG = """\
Filters: ESD range (esd_um), edge particles (edge_particle, from MFI), crops smaller than --min-side,
blurred crops (variance of the Laplacian below --min-sharpness; real FlowCam crops score about
600-3000), exact duplicates (same pixels) and, with --dedupe near, near duplicates (perceptual hash
within --hash-distance bits and crop sizes within --size-tolerance). The first particle of a group
of duplicates is kept. Dropped particles are listed in skipped.csv with the reason; the class
balance before and after is printed and written to class_balance.csv.

examples:
  python tools/filter_dataset.py datasets/vs4 --report
  python tools/filter_dataset.py datasets/vs4 --out datasets/vs4-clean --esd-min 3 --esd-max 100 --dedupe near
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("filter_dataset.py", __doc__ or "", EPILOG)
    parser.add_argument("dataset", metavar="DATASET", help="curated dataset folder (with manifest.csv)")
    parser.add_argument("--out", help="dataset folder to write (new, or empty; written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--report", action="store_true", help="only print the class balance (per group), write nothing")
    parser.add_argument("--by", default="group", help="column the balance report is broken down by (default group)")
    parser.add_argument("--esd-min", type=float, help="smallest ESD kept, µm")
    parser.add_argument("--esd-max", type=float, help="largest ESD kept, µm")
    parser.add_argument("--drop-edge", action="store_true", help="leave out edge particles (edge_particle column)")
    parser.add_argument("--min-side", type=int, help="smallest crop side kept, px")
    parser.add_argument("--min-sharpness", type=float, help="smallest variance of the Laplacian kept")
    parser.add_argument("--dedupe", choices=("none", "exact", "near"), default="exact",
                        help="duplicate removal (default exact)")
    parser.add_argument("--hash-distance", type=int, default=4, help="near duplicates: most differing hash bits (default 4)")
    parser.add_argument("--size-tolerance", type=float, default=0.1,
                        help="near duplicates: largest relative difference of crop height and width (default 0.1)")
    parser.add_argument("--link", action="store_true", help="hard-link images instead of copying them")
    args = parser.parse_args(argv)

    from fimvision.curation.output import load_dataset
    from fimvision.curation.qc import FilterSettings, class_balance, filter_dataset, format_balance
    from fimvision.errors import CurationError

    if args.report:
        frame = load_dataset(args.dataset)
        print(f"{args.dataset}: {len(frame)} particle(s)\n" + format_balance(class_balance(frame, by=args.by)))
        return 0
    if not args.out:
        raise CurationError("--out is required unless --report is given")
    settings = FilterSettings(esd_min=args.esd_min, esd_max=args.esd_max, drop_edge=args.drop_edge,
                              min_side=args.min_side, min_sharpness=args.min_sharpness, dedupe=args.dedupe,
                              hash_distance=args.hash_distance, size_tolerance=args.size_tolerance)
    summary = filter_dataset(args.dataset, args.out, settings, overwrite=args.overwrite, link=args.link,
                             progress=not args.quiet)
    print(summary.format())
    print("class balance after filtering:\n" + format_balance(class_balance(load_dataset(args.out), by=args.by)))
    return 0


if __name__ == "__main__":
    run_tool(main)
