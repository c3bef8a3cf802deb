"""FlowCam / VisualSpreadsheet run exports and class libraries: file readers (:mod:`.formats` for the
particle tables, :mod:`.metadata` for the rest), one run's files and particles (:mod:`.runs`), label
sources (:mod:`.labels`) and curation of runs into a fimvision dataset (:mod:`.curate`)."""

from fimvision.curation.flowcam.curate import FlowCamOptions, curate_flowcam
from fimvision.curation.flowcam.formats import read_flowcam_csv, read_lst
from fimvision.curation.flowcam.metadata import read_cla, read_ctx, read_summary_volume
from fimvision.curation.flowcam.runs import FlowCamRun, find_inputs, find_library, find_run

__all__ = ["FlowCamOptions", "FlowCamRun", "curate_flowcam", "find_inputs", "find_library", "find_run", "read_cla",
           "read_ctx", "read_flowcam_csv", "read_lst", "read_summary_volume"]
