#!/usr/bin/env python
"""Write split (train/val/test) and fold columns into a copy of a curated dataset."""

from __future__ import annotations

from collections.abc import Sequence

from fimvision.console import make_parser, run_tool
from fimvision.curation.cli import add_output_arguments

EPILOG = """\
strategies (only labelled particles get a split; the logic is fimvision.data.splits):
  stratified  particles at random, stratified by class (samples end up on both sides: leaks)
  sample      whole samples (vials) per split, stratified by class (default)
  group       leave-one-group-out: group number --fold (sorted names) is the test set; fold = group index
  kfold       --n-folds folds of samples; fold --fold is the test set; fold = each sample's fold

examples:
  python tools/split_dataset.py datasets/vs4 --out datasets/vs4-split --strategy sample
  python tools/split_dataset.py datasets/all --out datasets/all-loao-2 --strategy group --fold 2
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("split_dataset.py", __doc__ or "", EPILOG)
    parser.add_argument("dataset", metavar="DATASET", help="curated dataset folder (with manifest.csv)")
    add_output_arguments(parser)
    parser.add_argument("--strategy", choices=("stratified", "sample", "group", "kfold"), default="sample")
    parser.add_argument("--fold", type=int, default=0, help="held-out group or fold (group, kfold)")
    parser.add_argument("--n-folds", type=int, default=5, help="folds for kfold (default 5)")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--link", action="store_true", help="hard-link images instead of copying them")
    args = parser.parse_args(argv)

    from fimvision.curation.splits import split_dataset

    summary = split_dataset(args.dataset, args.out, strategy=args.strategy, fold=args.fold, n_folds=args.n_folds,
                            val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
                            overwrite=args.overwrite, link=args.link, progress=not args.quiet)
    print(summary.format())
    return 0


if __name__ == "__main__":
    run_tool(main)
