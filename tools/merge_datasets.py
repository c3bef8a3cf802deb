#!/usr/bin/env python
"""Merge several curated datasets (runs, products, instruments) into one dataset folder."""

from __future__ import annotations

from collections.abc import Sequence

from fimvision.console import make_parser, run_tool
from fimvision.curation.cli import add_output_arguments

EPILOG = """\
Each source's images are copied under <source name>/, a 'source' column says where each row came
from, and --groups sets the group column of each source (in order), e.g. the antibody of each run.

example:
  python tools/merge_datasets.py datasets/run1 datasets/run2 --groups mAb1 mAb2 --out datasets/both
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("merge_datasets.py", __doc__ or "", EPILOG)
    parser.add_argument("datasets", nargs="+", metavar="DATASET", help="curated dataset folders")
    add_output_arguments(parser)
    parser.add_argument("--groups", nargs="+", metavar="NAME", help="one group name a dataset, in order")
    parser.add_argument("--link", action="store_true", help="hard-link images instead of copying them")
    args = parser.parse_args(argv)

    from fimvision.curation.merge import merge_datasets

    summary = merge_datasets(args.datasets, args.out, groups=args.groups, overwrite=args.overwrite, link=args.link,
                             progress=not args.quiet)
    print(summary.format())
    return 0


if __name__ == "__main__":
    run_tool(main)
