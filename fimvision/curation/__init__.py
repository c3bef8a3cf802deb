"""Instrument export readers and dataset curation: FlowCam (VisualSpreadsheet) runs, collages without
metadata, MFI exports, quality control, splits, merging and previews.

The ``tools/`` scripts are thin command lines over these functions; every one writes a new dataset
folder atomically (see :class:`fimvision.files.OutputFolder`) and reports bad input as
:class:`~fimvision.errors.CurationError` naming the file and line.
"""

from fimvision.curation.collages import find_tiles, split_collages
from fimvision.curation.flowcam import (
    FlowCamOptions,
    curate_flowcam,
    find_run,
    read_cla,
    read_ctx,
    read_flowcam_csv,
    read_lst,
)
from fimvision.curation.flowcam_writer import write_flowcam_library, write_flowcam_run, write_flowcam_runs
from fimvision.curation.merge import merge_datasets
from fimvision.curation.mfi import curate_mfi, read_mfi_csv
from fimvision.curation.qc import FilterSettings, class_balance, filter_dataset, phash
from fimvision.curation.splits import split_dataset
from fimvision.errors import CurationError

__all__ = ["CurationError", "FilterSettings", "FlowCamOptions", "class_balance", "curate_flowcam", "curate_mfi",
           "filter_dataset", "find_run", "find_tiles", "merge_datasets", "phash", "read_cla", "read_ctx",
           "read_flowcam_csv", "read_lst", "read_mfi_csv", "split_collages", "split_dataset",
           "write_flowcam_library", "write_flowcam_run", "write_flowcam_runs"]
