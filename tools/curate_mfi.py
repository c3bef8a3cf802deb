#!/usr/bin/env python
"""Curate a Micro-Flow Imaging (MFI) export (particle CSV + frame images) into a fimvision dataset."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from fimvision.console import make_parser, run_tool
from fimvision.curation import mfi
from fimvision.curation.cli import add_output_arguments

EXAMPLES = """\
examples:
  python tools/curate_mfi.py export/particles.csv --frames export/frames --out datasets/mfi-run1 --group mAb1
  python tools/curate_mfi.py particles.csv --frames frames --out ds --exclusive --pad 4 --drop-edge
"""


def main(argv: Sequence[str] | None = None) -> int:
    assumptions = textwrap.dedent((mfi.__doc__ or "").split("\n", 1)[-1])
    parser = make_parser("curate_mfi.py", __doc__ or "", "assumptions (no public MFI export exists):\n"
                         + assumptions + "\n" + EXAMPLES)
    parser.add_argument("particles", metavar="PARTICLES_CSV", help="the MFI particle table (CSV)")
    parser.add_argument("--frames", required=True, metavar="DIR", help="folder of frame images")
    add_output_arguments(parser)
    parser.add_argument("--exclusive", action="store_true", help="X Right / Y Bottom are one past the particle")
    parser.add_argument("--one-based", action="store_true", help="pixel indices count from 1")
    parser.add_argument("--pad", type=int, default=0, help="context pixels around each box (default 0)")
    parser.add_argument("--frame-pattern", metavar="PATTERN",
                        help="frame file name with {frame}, e.g. 'frame_{frame:06d}.png' (default: last number in a name)")
    parser.add_argument("--drop-edge", action="store_true", help="leave out particles flagged Edge Particle")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--label", default="", help="label of every particle (default: empty)")
    labels.add_argument("--label-column", metavar="COLUMN", help="CSV column holding each particle's label")
    parser.add_argument("--group", default="", help="group (antibody / product)")
    parser.add_argument("--sample", help="sample name (default: the CSV's file name)")
    parser.add_argument("--instrument", default="MFI", help="instrument column (default MFI)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out particles with a missing frame or a box outside it, instead of stopping")
    args = parser.parse_args(argv)

    summary = mfi.curate_mfi(
        args.particles, args.frames, args.out, exclusive=args.exclusive, one_based=args.one_based, pad=args.pad,
        frame_pattern=args.frame_pattern, drop_edge=args.drop_edge, label=args.label, label_column=args.label_column,
        group=args.group, sample=args.sample, instrument=args.instrument, skip_bad=args.skip_bad,
        overwrite=args.overwrite, progress=not args.quiet,
    )
    print(summary.format())
    return 0


if __name__ == "__main__":
    run_tool(main)
