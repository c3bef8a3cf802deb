#!/usr/bin/env python
"""Cut FlowCam collages without metadata into particle tiles and write them as a fimvision dataset."""

from __future__ import annotations

from collections.abc import Sequence

from fimvision.console import make_parser, run_tool
from fimvision.curation.cli import add_output_arguments

EPILOG = """\
Tiles are the connected regions of non-black pixels (tiles sit on a pure black canvas with a black
gap between them). Regions that are not filled rectangles are taken apart into their largest
rectangles; marks drawn on a monochrome collage (coloured pixels) are ignored; regions smaller than
--min-size are rejected. Rejected regions are listed in skipped.csv; the number of tiles found is
printed per collage. Monochrome collages (R = G = B) give one-channel crops.

examples:
  python tools/split_collages.py exports/mono-collages/*.tif --out datasets/mono-tiles
  python tools/split_collages.py exports/mono-collages/mAb7_*.tif --out datasets/mab7 \\
      --group mAb7 --label mab7_silicone_oil_mix
  python tools/split_collages.py RUN/RUN_000001.tif --out datasets/check --check-lst RUN/RUN.lst
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("split_collages.py", __doc__ or "", EPILOG)
    parser.add_argument("collages", nargs="+", metavar="COLLAGE", help="collage image (TIFF, PNG, ...)")
    add_output_arguments(parser)
    parser.add_argument("--min-size", type=int, default=8, help="smallest tile side in pixels (default 8)")
    parser.add_argument("--black-level", type=int, default=0,
                        help="brightest value still counted as canvas (default 0: pure black)")
    parser.add_argument("--min-fill", type=float, default=0.95,
                        help="share of a region's bounding box it must fill to be one tile (default 0.95)")
    parser.add_argument("--mode", choices=("auto", "rgb", "grey"), default="auto",
                        help="crop channels: auto (grey when the tiles are grey), rgb or grey")
    parser.add_argument("--label", default="", help="label of every tile (default: empty, unclassified)")
    parser.add_argument("--group", default="", help="group (antibody / product) of every tile")
    parser.add_argument("--sample", help="sample of every tile (default: the collage's file name)")
    parser.add_argument("--instrument", default="", help="instrument column")
    parser.add_argument("--check-lst", metavar="LST", help="compare the tiles with the particles this .lst places")
    args = parser.parse_args(argv)

    from fimvision.curation.collages import split_collages

    summary = split_collages(
        args.collages, args.out, min_size=args.min_size, black_level=args.black_level, min_fill=args.min_fill,
        mode=args.mode, label=args.label, group=args.group, sample=args.sample, instrument=args.instrument,
        check_lst=args.check_lst, overwrite=args.overwrite, progress=not args.quiet,
    )
    print(summary.format())
    return 0


if __name__ == "__main__":
    run_tool(main)
