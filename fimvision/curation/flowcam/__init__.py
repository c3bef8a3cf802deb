"""FlowCam / VisualSpreadsheet run exports: file readers (:mod:`.formats`), label sources
(:mod:`.labels`) and curation of runs into a fimvision dataset (:mod:`.curate`)."""

from fimvision.curation.flowcam.curate import curate_flowcam, find_run
from fimvision.curation.flowcam.formats import read_cla, read_ctx, read_flowcam_csv, read_lst

__all__ = ["curate_flowcam", "find_run", "read_cla", "read_ctx", "read_flowcam_csv", "read_lst"]
