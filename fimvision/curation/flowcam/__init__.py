"""FlowCam / VisualSpreadsheet run exports and class libraries: file readers (:mod:`.formats`), label
sources (:mod:`.labels`) and curation of runs into a fimvision dataset (:mod:`.curate`)."""

from fimvision.curation.flowcam.curate import curate_flowcam, find_inputs, find_library, find_run
from fimvision.curation.flowcam.formats import (
    read_cla,
    read_ctx,
    read_flowcam_csv,
    read_lst,
    read_summary_volume,
)

__all__ = ["curate_flowcam", "find_inputs", "find_library", "find_run", "read_cla", "read_ctx", "read_flowcam_csv",
           "read_lst", "read_summary_volume"]
