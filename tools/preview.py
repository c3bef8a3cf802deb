#!/usr/bin/env python
"""Look at a dataset: a montage per class, colour and mono side by side, and per-class ESD and
circularity histograms, on one PNG page."""

from __future__ import annotations

from collections.abc import Sequence

from fimvision.console import make_parser, run_tool

EPILOG = """\
Mono is the BT.601 luminance of the colour crop (what a mono model sees). Crops are padded to square
with their border colour. Histograms appear when the manifest has esd_um / circularity.

example:
  python tools/preview.py datasets/vs4 --out vs4-preview.png --per-class 16
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("preview.py", __doc__ or "", EPILOG)
    parser.add_argument("dataset", metavar="DATASET", help="dataset folder (with manifest.csv)")
    parser.add_argument("--out", required=True, metavar="FILE.png", help="PNG to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing FILE.png")
    parser.add_argument("--per-class", type=int, default=16, help="crops shown a class (default 16)")
    parser.add_argument("--columns", type=int, default=4, help="crops a montage row (default 4)")
    parser.add_argument("--cell", type=int, default=48, help="montage cell size in px (default 48)")
    parser.add_argument("--seed", type=int, default=0, help="which crops are picked")
    args = parser.parse_args(argv)

    from fimvision.curation.preview import preview

    shown = preview(args.dataset, args.out, per_class=args.per_class, columns=args.columns, cell=args.cell,
                    seed=args.seed, overwrite=args.overwrite)
    print(f"preview.py: wrote {args.out}")
    for name, count in shown.items():
        print(f"  {name}: {count} crop(s) shown")
    return 0


if __name__ == "__main__":
    run_tool(main)
