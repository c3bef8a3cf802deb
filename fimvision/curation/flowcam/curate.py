"""Curating VisualSpreadsheet runs and class libraries into a fimvision dataset.

Manifest columns written: ``image``, ``label``, ``particle_id`` (the .lst ``id``), ``image_id`` (the
GUID), ``run``, ``sample``, ``group``, ``instrument``, ``mask`` (with masks), the crop's place
(``collage_file``, ``image_x``, ``image_y``, ``image_w``, ``image_h``), ``volume_imaged_ml`` (the run's
fluid volume imaged, from its summary; empty when unknown) and every per-particle feature
(``esd_um``, ``length_um``, ``width_um``, ``aspect_ratio``, ``circularity``, ``transparency``,
``convexity``, ``intensity``, ``sigma_intensity``, ``avg_red``/``green``/``blue``, ``edge_gradient``,
...). Without a .csv, ``aspect_ratio`` (Legendre minor/major axis; width/length for one-pixel-wide
particles), ``circularity`` (min(1, 4 pi filled area / perimeter^2)), ``transparency`` (1 - ABD/ESD
diameter) and ``convexity`` (min(1, filled area / convex hull area), 0 without a hull area) are
derived from the .lst; on the real exports these equal VisualSpreadsheet's values to the 4 decimals
it writes.

A class library (``LIB.flb``) has the .lst 017 layout and collages ``LIB_lib_images_00000N.tif``; it
is read like a run, and its class is the label of every particle in it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fimvision.curation.flowcam.formats import (
    GEOMETRY,
    LST_NAMES,
    FlowCamContext,
    read_ctx,
    read_flowcam_csv,
    read_lst,
    read_summary_volume,
)
from fimvision.curation.flowcam.labels import (
    groups_from_csv,
    labels_for_run,
    labels_from_csv,
    labels_from_folders,
)
from fimvision.curation.output import SkipLog, Summary, safe_name
from fimvision.errors import CurationError
from fimvision.files import OutputFolder
from fimvision.imageio import is_grey, read_image, write_png

LIBRARY_CLASS_SOURCES = ("folder", "file")
GROUP_SOURCES = ("run",)


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


def _bounds_problem(x: int, y: int, w: int, h: int, shape: tuple[int, ...]) -> str | None:
    if w < 1 or h < 1:
        return f"empty crop {w}x{h}"
    if x < 0 or y < 0 or x + w > shape[1] or y + h > shape[0]:
        return (f"crop x={x}..{x + w}, y={y}..{y + h} lies outside the collage ({shape[1]}x{shape[0]} px)")
    return None


def curate_flowcam(runs: Sequence[str | Path], out: str | Path, *, overwrite: bool = False, masks: bool = False,
                   label_folders: str | Path | None = None, label_csv: str | Path | None = None,
                   classification: str | None = None, drop_unclassified: bool = False, group: str | None = None,
                   group_csv: str | Path | None = None, instrument: str | None = None,
                   lst_fields: Sequence[str] | None = None, skip_bad: bool = False, group_from: str | None = None,
                   library_class: str = "folder", progress: bool = True) -> Summary:
    """Curate VisualSpreadsheet runs and class libraries into a dataset folder ``out`` (see the module
    docstring). ``runs`` are run folders, ``.lst`` files, ``.flb`` class libraries or folders holding
    libraries (:func:`find_inputs`).

    Labels of a run come from ``label_csv``, else ``label_folders``, else its ``.cla`` (the first
    classification, or the one named ``classification``); particles without one get an empty label,
    or are left out with ``drop_unclassified``. Every particle of a class library is labelled with its
    class: the library's folder name (``library_class='folder'``) or file name (``'file'``).
    ``group`` names every run's group; ``group_csv`` maps ``run`` to ``group`` (and optionally
    ``sample``; the default sample is the run name); ``group_from='run'`` makes each run its own group
    (for leave-one-run-out splits). ``volume_imaged_ml`` is each run's fluid volume imaged, from its
    ``RUN_run_summary.txt`` or ``RUN_summary.csv`` (empty when neither gives it).

    Bad input raises :class:`CurationError` naming file and line; with ``skip_bad``, particles that
    cannot be cropped (missing collage, crop outside the collage, damaged .lst row) are left out and
    listed in ``skipped.csv`` instead. Nothing is written unless the whole dataset is.
    """
    if library_class not in LIBRARY_CLASS_SOURCES:
        raise CurationError(f"unknown library class source '{library_class}'",
                            hint=f"use --library-class {' or '.join(LIBRARY_CLASS_SOURCES)}")
    found = find_inputs(runs, library_class)
    if not found:
        raise CurationError("no run given", hint="give one or more run folders")
    names = [r.name for r in found]
    if len(set(names)) != len(names):
        raise CurationError(f"run name(s) {sorted({n for n in names if names.count(n) > 1})} given twice",
                            hint="give each run once")
    if sum(option is not None for option in (group, group_csv, group_from)) > 1:
        raise CurationError("give one of --group, --group-csv and --group-from, not several")
    if group_from is not None and group_from not in GROUP_SOURCES:
        raise CurationError(f"unknown group source '{group_from}'", hint=f"use --group-from {' or '.join(GROUP_SOURCES)}")
    groups = groups_from_csv(group_csv) if group_csv is not None else None
    if groups is not None:
        absent = [n for n in names if n not in set(groups["run"])]
        if absent:
            raise CurationError(f"no row for run(s) {absent}", file=group_csv, column="run",
                                hint="add one row 'run,group' a run")
    label_table = labels_from_csv(label_csv) if label_csv is not None else None
    folder_labels = labels_from_folders(label_folders) if label_folders is not None and label_table is None else None
    inputs = [r.folder for r in found] + [p for p in (label_folders, label_csv, group_csv) if p is not None]

    summary = Summary(tool="curate_flowcam", out=Path(out).expanduser().resolve())
    libraries = sum(r.library_class is not None for r in found)
    if libraries and any(o is not None for o in (label_csv, label_folders, classification)):
        summary.notes.append(f"{libraries} class library(ies) labelled by {library_class} name; --label-csv, "
                             "--label-folders and --classification apply to runs only")
    frames = []
    with OutputFolder(out, overwrite=overwrite, inputs=inputs) as tmp:
        for run in found:
            table = read_run_table(run, legacy_fields=lst_fields, skip_bad=skip_bad, skipped=summary.skipped,
                                   notes=summary.notes)
            context = read_ctx(run.ctx) if run.ctx is not None else FlowCamContext()
            table["run"] = run.name
            if run.library_class is not None:
                table["label"] = run.library_class
            else:
                table["label"] = labels_for_run(run, table, label_table, folder_labels, classification, len(found),
                                                 summary.notes)
            if groups is not None:
                row = groups.loc[groups["run"] == run.name].iloc[0]
                table["group"] = row["group"]
                table["sample"] = row["sample"] if "sample" in groups.columns and row["sample"] else run.name
            else:
                table["group"] = run.name if group_from == "run" else group or ""
                table["sample"] = run.name
            table["instrument"] = instrument or context.instrument()
            volume = read_volume_imaged(run)
            table["volume_imaged_ml"] = np.nan if volume is None else volume
            if "image_id" in table.columns:
                table["image_id"] = table["image_id"].astype(str).str.upper()
            frames.append(_write_run(run, table, tmp, masks=masks, skip_bad=skip_bad,
                                     drop_unclassified=drop_unclassified, skipped=summary.skipped, progress=progress,
                                     details=summary.details))
        manifest = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["image", "label"])
        if manifest.empty:
            raise CurationError("no particle was written", hint="see the skipped reasons; nothing was changed")
        summary.finish(manifest.drop(columns=["line"], errors="ignore"), tmp)
    return summary


def _write_run(run: FlowCamRun, table: pd.DataFrame, tmp: Path, *, masks: bool, skip_bad: bool,
               drop_unclassified: bool, skipped: SkipLog, progress: bool, details: dict[str, object]) -> pd.DataFrame:
    """Crop every particle of one run into ``tmp/images/<run>/``; returns the rows written."""
    folder = safe_name(run.name, "run")
    (tmp / "images" / folder).mkdir(parents=True, exist_ok=True)
    if masks:
        (tmp / "masks" / folder).mkdir(parents=True, exist_ok=True)
    keep = np.ones(len(table), dtype=bool)
    image_paths = [""] * len(table)
    mask_paths = [""] * len(table)
    channels = set()
    bar = tqdm(total=len(table), desc=f"crop {run.name[:40]}", unit="particle", disable=not progress, leave=False)
    for collage_name, rows in table.groupby("collage_file", sort=False):
        positions = table.index.get_indexer(rows.index)
        collage_path = run.folder / str(collage_name)
        if not collage_path.is_file():
            problem = f"missing collage {collage_name}"
            if not skip_bad:
                raise CurationError(f"the collage '{collage_name}' named here is missing from the {run.kind} folder "
                                    f"({len(rows)} particle(s) use it)", file=run.lst, line=int(rows["line"].iloc[0]),
                                    column="collage_file",
                                    hint="copy the complete export, or pass --skip-bad to leave those particles out")
            for pos in positions:
                skipped.add(run.lst, table["particle_id"].iloc[pos], problem)
                keep[pos] = False
            bar.update(len(rows))
            continue
        collage = read_image(collage_path)
        if collage.ndim == 3 and is_grey(collage):
            collage = collage[:, :, 0]  # a mono camera saved as RGB: keep one channel
        channels.add(1 if collage.ndim == 2 else 3)
        mask_image = None
        if masks:
            mask_path = collage_path.with_name(collage_path.stem + "_bin" + collage_path.suffix)
            if not mask_path.is_file():
                raise CurationError(f"mask collage {mask_path.name} is missing", file=mask_path,
                                    hint="export binary collages, or curate without --masks")
            mask_image = read_image(mask_path)
            if mask_image.ndim == 3:
                mask_image = mask_image.max(axis=2)
            if mask_image.shape[:2] != collage.shape[:2]:
                raise CurationError(f"mask is {mask_image.shape[1]}x{mask_image.shape[0]} px but the collage is "
                                    f"{collage.shape[1]}x{collage.shape[0]}", file=mask_path, hint="re-export the run")
        boxes = rows[list(GEOMETRY)].to_numpy(dtype=np.int64)
        for pos, pid, label, line, (x, y, w, h) in zip(positions, rows["particle_id"].to_numpy(), rows["label"],
                                                       rows["line"].to_numpy(), boxes, strict=True):
            bar.update(1)
            pid = int(pid)
            if drop_unclassified and not label:
                skipped.add(run.lst, pid, "unclassified")
                keep[pos] = False
                continue
            problem = _bounds_problem(int(x), int(y), int(w), int(h), collage.shape)
            if problem is not None:
                if not skip_bad:
                    raise CurationError(f"particle {pid}: {problem}", file=run.lst, line=int(line),
                                        column="image_x/image_y/image_w/image_h",
                                        hint="the .lst and the collage do not belong together; re-export the run, "
                                        "or pass --skip-bad to leave the particle out")
                skipped.add(run.lst, pid, f"crop outside collage: {problem}")
                keep[pos] = False
                continue
            rel = f"images/{folder}/{pid:06d}.png"
            write_png(tmp / rel, collage[y : y + h, x : x + w], make_parents=False)
            image_paths[pos] = rel
            if mask_image is not None:
                mask_rel = f"masks/{folder}/{pid:06d}.png"
                write_png(tmp / mask_rel, np.where(mask_image[y : y + h, x : x + w] > 0, 255, 0).astype(np.uint8),
                          make_parents=False)
                mask_paths[pos] = mask_rel
    bar.close()
    table = table.assign(image=image_paths)
    if masks:
        table["mask"] = mask_paths
    written = table[keep].reset_index(drop=True)
    key = "libraries" if run.library_class is not None else "runs"
    details.setdefault(key, {})
    details[key][run.name] = (f"{len(written)} of {len(table)} particle(s) written"  # type: ignore[index]
                                 + (f", {sorted(channels)[0]}-channel crops" if len(channels) == 1 else ""))
    return written
