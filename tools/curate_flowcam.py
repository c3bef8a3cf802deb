#!/usr/bin/env python
"""Curate FlowCam / VisualSpreadsheet run exports and class libraries into a fimvision dataset (images + manifest.csv)."""

from __future__ import annotations

from collections.abc import Sequence

from fimvision.console import make_parser, run_tool
from fimvision.curation.cli import add_output_arguments

EPILOG = """\
Reads RUN.lst (format 017, or the older ':'-separated layout), the collages RUN_00000N.tif (and
RUN_00000N_bin.tif with --masks), and when present RUN.csv (features), RUN.cla (labels), RUN.ctx
(instrument) and RUN_run_summary.txt or RUN_summary.csv (volume_imaged_ml). Writes
images/<run>/<id>.png, manifest.csv, skipped.csv and curation_summary.json.

Class libraries: a LIB.flb (the .lst layout) with collages LIB_lib_images_00000N.tif, given as the
file or as a folder holding libraries (searched recursively, e.g. one class folder a library).
Every particle of a library gets the library's class: its folder name, or its file name with
--library-class file.

Labels of runs: --label-csv, else --label-folders, else each run's .cla; particles without a label
keep an empty one (or are left out with --drop-unclassified). Sample = run name unless --group-csv
says otherwise; --group-from run makes each run its own group (leave-one-run-out splits).

examples:
  python tools/curate_flowcam.py exports/flowcam/*/ --out datasets/vs4 --group protist
  python tools/curate_flowcam.py RUN1 RUN2 --out datasets/ab --group-csv runs.csv --masks
  python tools/curate_flowcam.py RUN --out datasets/r --label-folders exported_classes/ --drop-unclassified
  python tools/curate_flowcam.py exports/flowcam/*/ --out datasets/loro --group-from run
  python tools/curate_flowcam.py libraries/ --out datasets/lib            # libraries/<class>/<lib>.flb
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("curate_flowcam.py", __doc__ or "", EPILOG)
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run folder (holding one .lst), a .lst file, a class library (.flb) or a folder of libraries")
    add_output_arguments(parser)
    parser.add_argument("--masks", action="store_true", help="also write each particle's mask (from the _bin.tif)")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--label-folders", metavar="DIR",
                        help="folder-per-class export of crops, matched by the image id (GUID) in each file name")
    labels.add_argument("--label-csv", metavar="CSV",
                        help="CSV with label and image_id, or label and particle_id (plus run for several runs)")
    parser.add_argument("--classification", metavar="NAME", help="which classification of the .cla (default: the first)")
    parser.add_argument("--drop-unclassified", action="store_true", help="leave out particles without a label")
    groups = parser.add_mutually_exclusive_group()
    groups.add_argument("--group", metavar="NAME", help="group (antibody / product) of every run")
    groups.add_argument("--group-csv", metavar="CSV", help="CSV with run,group[,sample], one row a run")
    groups.add_argument("--group-from", choices=("run",),
                        help="run: each run (or library) is its own group, for leave-one-run-out splits")
    parser.add_argument("--instrument", metavar="TEXT", help="instrument column (default: from the .ctx)")
    parser.add_argument("--lst-fields", metavar="A,B,...",
                        help="column names of an old ':'-separated .lst (must include image_x, image_y, image_w, image_h)")
    parser.add_argument("--library-class", choices=("folder", "file"), default="folder",
                        help="class of a library's particles: its folder's name (default) or its file name")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out particles that cannot be cropped (listed in skipped.csv) instead of stopping")
    args = parser.parse_args(argv)

    from fimvision.curation.flowcam import FlowCamOptions, curate_flowcam

    options = FlowCamOptions(
        overwrite=args.overwrite, masks=args.masks, progress=not args.quiet, label_csv=args.label_csv,
        label_folders=args.label_folders, classification=args.classification,
        drop_unclassified=args.drop_unclassified, library_class=args.library_class, group=args.group,
        group_csv=args.group_csv, group_from=args.group_from, instrument=args.instrument,
        lst_fields=tuple(f.strip() for f in args.lst_fields.split(",")) if args.lst_fields else None,
        skip_bad=args.skip_bad,
    )
    summary = curate_flowcam(args.runs, args.out, options)
    print(summary.format())
    return 0


if __name__ == "__main__":
    run_tool(main)
