"""One VisualSpreadsheet run or class library: finding its files (:class:`FlowCamRun`) and reading its
particle table (the .lst joined with the .csv, plus the features derived from the .lst).

Without a .csv, ``aspect_ratio`` (Legendre minor/major axis; width/length for one-pixel-wide
particles), ``circularity`` (min(1, 4 pi filled area / perimeter^2)), ``transparency`` (1 - ABD/ESD
diameter) and ``convexity`` (min(1, filled area / convex hull area), 0 without a hull area) are
derived from the .lst; on the real exports these equal VisualSpreadsheet's values to the 4 decimals
it writes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fimvision.curation.flowcam.formats import GEOMETRY, LST_NAMES, read_flowcam_csv, read_lst
from fimvision.curation.flowcam.metadata import read_summary_volume
from fimvision.curation.output import SkipLog
from fimvision.errors import CurationError

LIBRARY_CLASS_SOURCES = ("folder", "file")


@dataclass
class FlowCamRun:
    """The files of one exported run or class library (``None`` for optional files that are absent).

    ``name`` is the run's name in the manifest (``run``, default ``sample``); ``lst`` its particle list
    (a ``.lst``, or a library's ``.flb``). ``library_class`` is set for a class library: the label of
    every particle in it.
    """

    folder: Path
    name: str
    lst: Path
    csv: Path | None
    cla: Path | None
    ctx: Path | None
    summaries: tuple[Path, ...] = ()
    library_class: str | None = None

    @property
    def kind(self) -> str:
        return "library" if self.library_class is not None else "run"

    @property
    def collage_pattern(self) -> str:
        """Regular expression of the run's collage file names (``RUN_00000N.tif``, ``LIB_lib_images_00000N.tif``)."""
        infix = "_lib_images" if self.library_class is not None else ""
        return rf"{re.escape(self.lst.stem)}{infix}_\d+\.tiff?"


def _optional_files(lst: Path) -> dict[str, object]:
    folder, name = lst.parent, lst.stem

    def optional(suffix: str) -> Path | None:
        candidate = folder / f"{name}{suffix}"
        return candidate if candidate.is_file() else None

    summaries = tuple(p for p in (optional("_run_summary.txt"), optional("_summary.csv")) if p is not None)
    return {"csv": optional(".csv"), "cla": optional(".cla"), "ctx": optional(".ctx"), "summaries": summaries}


def find_run(path: str | Path) -> FlowCamRun:
    """The run in a folder (which must hold exactly one ``.lst``), or the run of a given ``.lst``."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".lst":
        lst = path
    elif path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".lst")
        if not found:
            raise CurationError("no .lst file in the run folder", file=path,
                                hint="give the folder VisualSpreadsheet exported (it holds RUN.lst and the collages), "
                                "or a class library (.flb) or a folder holding libraries")
        if len(found) > 1:
            raise CurationError(f"{len(found)} .lst files in one folder ({', '.join(p.name for p in found[:4])})",
                                file=path, hint="give the .lst files themselves as the runs")
        lst = found[0]
    else:
        raise CurationError("run folder not found", file=path, hint="give a VisualSpreadsheet run folder or its .lst")
    return FlowCamRun(folder=lst.parent, name=lst.stem, lst=lst, **_optional_files(lst))  # type: ignore[arg-type]


def find_library(flb: str | Path, library_class: str = "folder") -> FlowCamRun:
    """A VisualSpreadsheet class library (``LIB.flb``): its class is its folder's name (``folder``) or
    its file name (``file``)."""
    flb = Path(flb).expanduser()
    if library_class not in LIBRARY_CLASS_SOURCES:
        raise CurationError(f"unknown library class source '{library_class}'",
                            hint=f"use one of {', '.join(LIBRARY_CLASS_SOURCES)}")
    if not flb.is_file():
        raise CurationError("class library not found", file=flb, hint="give a .flb file or a folder holding them")
    cls = flb.parent.resolve().name if library_class == "folder" else flb.stem
    return FlowCamRun(folder=flb.parent, name=flb.stem, lst=flb, library_class=cls, **_optional_files(flb))  # type: ignore[arg-type]


def find_inputs(paths: Sequence[str | Path], library_class: str = "folder") -> list[FlowCamRun]:
    """The runs and class libraries given: run folders, ``.lst`` files, ``.flb`` files, or folders without a
    ``.lst`` that hold libraries (searched recursively: a folder of class folders each holding a library).

    Two libraries with one file name are told apart by their folder (``<folder>_<name>``).
    """
    found: list[FlowCamRun] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_file() and path.suffix.lower() == ".flb":
            found.append(find_library(path, library_class))
        elif path.is_dir() and not any(p.suffix.lower() == ".lst" for p in path.iterdir()):
            libraries = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".flb" and p.is_file())
            if not libraries:
                find_run(path)  # raises: no .lst and no library
            found += [find_library(p, library_class) for p in libraries]
        else:
            found.append(find_run(path))
    stems = [r.name for r in found if r.library_class is not None]
    for run in found:
        if run.library_class is not None and stems.count(run.name) > 1:
            run.name = f"{run.folder.resolve().name}_{run.name}"
    return found


def read_volume_imaged(run: FlowCamRun) -> float | None:
    """The run's fluid volume imaged (ml) from its summary files (the first that gives one), else None."""
    for path in run.summaries:
        volume = read_summary_volume(path)
        if volume is not None:
            return volume
    return None


def derive_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``aspect_ratio``, ``circularity``, ``transparency`` and ``convexity`` from .lst columns where missing."""
    frame = frame.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        if "aspect_ratio" not in frame and {"raw_legendre_minor_px", "raw_legendre_major_px"} <= set(frame):
            ratio = frame["raw_legendre_minor_px"] / frame["raw_legendre_major_px"]
            if {"width_um", "length_um"} <= set(frame):
                # one-pixel-wide particles have no Legendre ellipse; VisualSpreadsheet then uses width/length
                ratio = ratio.where(frame["raw_legendre_major_px"] > 0, frame["width_um"] / frame["length_um"])
            frame["aspect_ratio"] = ratio.round(4)
        if "circularity" not in frame and {"raw_filled_area_px", "raw_perimeter_px"} <= set(frame):
            value = 4 * np.pi * frame["raw_filled_area_px"] / frame["raw_perimeter_px"] ** 2
            frame["circularity"] = np.minimum(1.0, value).round(4)
        if "transparency" not in frame and {"abd_um", "esd_um"} <= set(frame):
            frame["transparency"] = (1 - frame["abd_um"] / frame["esd_um"]).round(4)
        if "convexity" not in frame and {"raw_filled_area_px", "raw_convex_hull_area_px"} <= set(frame):
            hull = frame["raw_convex_hull_area_px"]
            value = np.minimum(1.0, frame["raw_filled_area_px"] / hull).where(hull > 0, 0.0)
            frame["convexity"] = value.round(4)
    return frame


def read_run_table(run: FlowCamRun, *, legacy_fields: Sequence[str] | None = None, skip_bad: bool = False,
                   skipped: SkipLog | None = None, notes: list[str] | None = None) -> pd.DataFrame:
    """The particles of a run: .lst columns (renamed to manifest names), joined with the .csv's extra columns.

    Keeps ``line`` (the .lst line of each particle) for messages.
    """
    notes = notes if notes is not None else []
    table = read_lst(run.lst, legacy_fields=legacy_fields, skip_bad=skip_bad)
    for line, reason in table.bad_rows:
        if skipped is not None:
            skipped.add(run.lst, f"line {line}", f"bad .lst row: {reason}")
    frame = table.frame.rename(columns=LST_NAMES)
    missing = [c for c in ("particle_id", *GEOMETRY) if c not in frame.columns]
    if missing:
        raise CurationError(f"the .lst has no column(s) {missing}", file=run.lst, line=2,
                            hint="these are needed to crop particles; for an old .lst name the columns with --lst-fields")
    for column in ("particle_id", *GEOMETRY):
        if frame[column].isna().any():
            i = int(np.flatnonzero(frame[column].isna().to_numpy())[0])
            raise CurationError("empty value", file=run.lst, line=int(frame["line"].iloc[i]), column=column,
                                hint="every particle needs an id and a crop rectangle; re-export the run")
    duplicated = frame["particle_id"].duplicated()
    if duplicated.any():
        i = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise CurationError(f"particle id {frame['particle_id'].iloc[i]} appears twice", file=run.lst,
                            line=int(frame["line"].iloc[i]), column="id", hint="re-export the run")
    if "collage_file" not in frame.columns:
        collages = sorted(p.name for p in run.folder.iterdir() if re.fullmatch(run.collage_pattern, p.name))
        if len(collages) != 1:
            raise CurationError(f"the .lst names no collage file and the folder has {len(collages)} collages",
                                file=run.lst, hint="name the collage column with --lst-fields (…,collage_file,…)")
        frame["collage_file"] = collages[0]
    frame["particle_id"] = frame["particle_id"].astype("int64")

    if run.csv is not None:
        csv = read_flowcam_csv(run.csv)
        csv_ids = pd.to_numeric(csv["particle_id"], errors="coerce")
        if csv_ids.isna().any():
            i = int(np.flatnonzero(csv_ids.isna().to_numpy())[0])
            raise CurationError(f"Particle ID '{csv['particle_id'].iloc[i]}' is not a number", file=run.csv,
                                line=int(csv["line"].iloc[i]), column="Particle ID", hint="re-export the particle data")
        csv = csv.assign(particle_id=csv_ids.astype("int64")).drop_duplicates("particle_id")
        extra = [c for c in csv.columns if c not in frame.columns and c != "line"]
        frame = frame.merge(csv[["particle_id", *extra]], on="particle_id", how="left")
        unmatched = (~frame["particle_id"].isin(csv["particle_id"])).sum()
        if unmatched:
            notes.append(f"{run.name}: {unmatched} .lst particle(s) have no row in {run.csv.name}")
    return derive_features(frame)
