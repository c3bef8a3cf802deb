#!/usr/bin/env python
"""Fetch a public data set that configs use into datasets/ (checksummed; skips files already there)."""

from __future__ import annotations

from collections.abc import Sequence

from fimvision.console import make_parser, run_tool

EPILOG = """\
data sets:
  domain-adaptation   MNIST_vs_USPS.mat and COIL1_vs_COIL2.mat -> datasets/domain-adaptation/
                      (configs/sfda/data/mnist_usps*.yaml, configs/study/fewshot_sfda.yaml)

examples:
  python tools/fetch_data.py domain-adaptation
  python tools/fetch_data.py domain-adaptation --from /mnt/shared/domain-adaptation    # no network: copy and check
"""


def main(argv: Sequence[str] | None = None) -> int:
    from fimvision.data.downloads import DATASETS, fetch

    parser = make_parser("fetch_data.py", __doc__ or "", EPILOG)
    parser.add_argument("dataset", choices=sorted(DATASETS), help="which data set")
    parser.add_argument("--out", help="folder to put the files in (default: datasets/<dataset>)")
    parser.add_argument("--from", dest="copy_from", metavar="DIR",
                        help="copy from this folder instead of downloading (checksums are still checked)")
    args = parser.parse_args(argv)
    for path in fetch(args.dataset, args.out or f"datasets/{args.dataset}", copy_from=args.copy_from):
        print(path)
    return 0


if __name__ == "__main__":
    run_tool(main)
