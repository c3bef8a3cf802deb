"""Curating VisualSpreadsheet runs and class libraries into a fimvision dataset.

Manifest columns written: ``image``, ``label``, ``particle_id`` (the .lst ``id``), ``image_id`` (the
GUID), ``run``, ``sample``, ``group``, ``instrument``, ``mask`` (with masks), the crop's place
(``collage_file``, ``image_x``, ``image_y``, ``image_w``, ``image_h``), ``volume_imaged_ml`` (the run's
fluid volume imaged, from its summary; empty when unknown) and every per-particle feature
(``esd_um``, ``length_um``, ``width_um``, ``aspect_ratio``, ``circularity``, ``transparency``,
``convexity``, ``intensity``, ``sigma_intensity``, ``avg_red``/``green``/``blue``, ``edge_gradient``,
...); without a .csv some are derived from the .lst (:mod:`.runs`).

A class library (``LIB.flb``) has the .lst 017 layout and collages ``LIB_lib_images_00000N.tif``; it
is read like a run, and its class is the label of every particle in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fimvision.console import tqdm_disable
from fimvision.curation.flowcam.formats import GEOMETRY
from fimvision.curation.flowcam.labels import (
    groups_from_csv,
    labels_for_run,
    labels_from_csv,
    labels_from_folders,
)
from fimvision.curation.flowcam.metadata import FlowCamContext, read_ctx
from fimvision.curation.flowcam.runs import (
    LIBRARY_CLASS_SOURCES,
    FlowCamRun,
    find_inputs,
    read_run_table,
    read_volume_imaged,
)
from fimvision.curation.output import SkipLog, Summary, safe_name
from fimvision.errors import CurationError
from fimvision.files import OutputFolder
from fimvision.imageio import is_grey, read_image, write_png

GROUP_SOURCES = ("run",)


@dataclass(frozen=True)
class FlowCamOptions:
    """How :func:`curate_flowcam` curates (``tools/curate_flowcam.py`` builds one from its flags).

    Output:

    - ``overwrite``: replace an existing non-empty output folder.
    - ``masks``: also write each particle's mask (``masks/<run>/<id>.png``, from the ``_bin.tif``).
    - ``progress``: show progress bars.

    Labels (of runs; every particle of a class library gets the library's class):

    - ``label_csv``: CSV with ``label`` and ``image_id``, or ``label`` and ``particle_id`` (plus ``run``
      for several runs). Wins over ``label_folders``.
    - ``label_folders``: folder-per-class export of crops, matched by the image id (GUID) in each file name.
    - ``classification``: which classification of each run's ``.cla`` (default: the first); used
      when neither of the above is given.
    - ``drop_unclassified``: leave out particles without a label (else they keep an empty one).
    - ``library_class``: a library's class is its folder's name (``"folder"``) or its file name (``"file"``).

    Groups and samples (at most one of the three; the default group is empty):

    - ``group``: the group (antibody / product) of every run.
    - ``group_csv``: CSV mapping ``run`` to ``group`` (and optionally ``sample``; the default sample
      is the run name), one row a run.
    - ``group_from``: ``"run"`` makes each run its own group (leave-one-run-out splits).

    Reading:

    - ``instrument``: the ``instrument`` column (default: from each run's ``.ctx``).
    - ``lst_fields``: column names of an old ``:``-separated ``.lst``.
    - ``skip_bad``: leave out particles that cannot be cropped (missing collage, crop outside the
      collage, damaged .lst row), listed in ``skipped.csv``, instead of stopping.
    """

    overwrite: bool = False
    masks: bool = False
    progress: bool = True
    label_csv: str | Path | None = None
    label_folders: str | Path | None = None
    classification: str | None = None
    drop_unclassified: bool = False
    library_class: str = "folder"
    group: str | None = None
    group_csv: str | Path | None = None
    group_from: str | None = None
    instrument: str | None = None
    lst_fields: tuple[str, ...] | None = None
    skip_bad: bool = False


def _bounds_problem(x: int, y: int, w: int, h: int, shape: tuple[int, ...]) -> str | None:
    if w < 1 or h < 1:
        return f"empty crop {w}x{h}"
    if x < 0 or y < 0 or x + w > shape[1] or y + h > shape[0]:
        return (f"crop x={x}..{x + w}, y={y}..{y + h} lies outside the collage ({shape[1]}x{shape[0]} px)")
    return None


def curate_flowcam(runs: Sequence[str | Path], out: str | Path, options: FlowCamOptions | None = None) -> Summary:
    """Curate VisualSpreadsheet runs and class libraries into a dataset folder ``out`` (see the module
    docstring), as ``options`` say (:class:`FlowCamOptions`; default: its defaults). ``runs`` are run
    folders, ``.lst`` files, ``.flb`` class libraries or folders holding libraries (:func:`find_inputs`).

    ``volume_imaged_ml`` is each run's fluid volume imaged, from its ``RUN_run_summary.txt`` or
    ``RUN_summary.csv`` (empty when neither gives it).

    Bad input raises :class:`CurationError` naming file and line; with ``skip_bad``, particles that
    cannot be cropped are left out and listed in ``skipped.csv`` instead. Nothing is written unless
    the whole dataset is.
    """
    options = options if options is not None else FlowCamOptions()
    if options.library_class not in LIBRARY_CLASS_SOURCES:
        raise CurationError(f"unknown library class source '{options.library_class}'",
                            hint=f"use --library-class {' or '.join(LIBRARY_CLASS_SOURCES)}")
    found = find_inputs(runs, options.library_class)
    if not found:
        raise CurationError("no run given", hint="give one or more run folders")
    names = [r.name for r in found]
    if len(set(names)) != len(names):
        raise CurationError(f"run name(s) {sorted({n for n in names if names.count(n) > 1})} given twice",
                            hint="give each run once")
    if sum(option is not None for option in (options.group, options.group_csv, options.group_from)) > 1:
        raise CurationError("give one of --group, --group-csv and --group-from, not several")
    if options.group_from is not None and options.group_from not in GROUP_SOURCES:
        raise CurationError(f"unknown group source '{options.group_from}'",
                            hint=f"use --group-from {' or '.join(GROUP_SOURCES)}")
    groups = groups_from_csv(options.group_csv) if options.group_csv is not None else None
    if groups is not None:
        absent = [n for n in names if n not in set(groups["run"])]
        if absent:
            raise CurationError(f"no row for run(s) {absent}", file=options.group_csv, column="run",
                                hint="add one row 'run,group' a run")
    label_table = labels_from_csv(options.label_csv) if options.label_csv is not None else None
    folder_labels = None
    if options.label_folders is not None and label_table is None:
        folder_labels = labels_from_folders(options.label_folders)
    label_and_group_files = (options.label_folders, options.label_csv, options.group_csv)
    inputs = [r.folder for r in found] + [p for p in label_and_group_files if p is not None]

    summary = Summary(tool="curate_flowcam", out=Path(out).expanduser().resolve())
    libraries = sum(r.library_class is not None for r in found)
    if libraries and any(v is not None for v in (options.label_csv, options.label_folders, options.classification)):
        summary.notes.append(f"{libraries} class library(ies) labelled by {options.library_class} name; "
                             "--label-csv, --label-folders and --classification apply to runs only")
    frames = []
    with OutputFolder(out, overwrite=options.overwrite, inputs=inputs) as tmp:
        for run in found:
            table = read_run_table(run, legacy_fields=options.lst_fields, skip_bad=options.skip_bad,
                                   skipped=summary.skipped, notes=summary.notes)
            context = read_ctx(run.ctx) if run.ctx is not None else FlowCamContext()
            table["run"] = run.name
            if run.library_class is not None:
                table["label"] = run.library_class
            else:
                table["label"] = labels_for_run(run, table, label_table, folder_labels, options.classification,
                                                 len(found), summary.notes)
            if groups is not None:
                row = groups.loc[groups["run"] == run.name].iloc[0]
                table["group"] = row["group"]
                table["sample"] = row["sample"] if "sample" in groups.columns and row["sample"] else run.name
            else:
                table["group"] = run.name if options.group_from == "run" else options.group or ""
                table["sample"] = run.name
            table["instrument"] = options.instrument or context.instrument()
            volume = read_volume_imaged(run)
            table["volume_imaged_ml"] = np.nan if volume is None else volume
            if "image_id" in table.columns:
                table["image_id"] = table["image_id"].astype(str).str.upper()
            frames.append(_write_run(run, table, tmp, options, skipped=summary.skipped, details=summary.details))
        manifest = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["image", "label"])
        if manifest.empty:
            raise CurationError("no particle was written", hint="see the skipped reasons; nothing was changed")
        summary.finish(manifest.drop(columns=["line"], errors="ignore"), tmp)
    return summary


def _write_run(run: FlowCamRun, table: pd.DataFrame, tmp: Path, options: FlowCamOptions, *, skipped: SkipLog,
               details: dict[str, object]) -> pd.DataFrame:
    """Crop every particle of one run into ``tmp/images/<run>/``; returns the rows written."""
    masks, skip_bad, drop_unclassified = options.masks, options.skip_bad, options.drop_unclassified
    folder = safe_name(run.name, "run")
    (tmp / "images" / folder).mkdir(parents=True, exist_ok=True)
    if masks:
        (tmp / "masks" / folder).mkdir(parents=True, exist_ok=True)
    keep = np.ones(len(table), dtype=bool)
    image_paths = [""] * len(table)
    mask_paths = [""] * len(table)
    channels = set()
    bar = tqdm(total=len(table), desc=f"crop {run.name[:40]}", unit="particle", disable=tqdm_disable(options.progress),
               leave=False)
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
