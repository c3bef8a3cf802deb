"""Micro-Flow Imaging (MFI) exports: a particle CSV plus the camera frames, curated into a dataset.

No public MFI export was available, so this reader rests on written assumptions (tested on
fixtures generated from synthetic particles). Change them with the options in brackets.

Particle CSV
  One row a particle. The header is the first line (of the first 100) that names the bounding box
  columns, so metadata lines above it are skipped. Headers are matched case-insensitively, ignoring
  spaces, punctuation and units, so ``ECD(um)``, ``ECD (µm)`` and ``ECD`` are one column. Recognised:

  ==========================================================  =====================
  MFI header (aliases)                                         manifest column
  ==========================================================  =====================
  ``ECD (µm)``, ``ECD(um)``, ``ECD``                           ``esd_um``
  ``Circularity``                                             ``circularity``
  ``Aspect Ratio``                                            ``aspect_ratio``
  ``Intensity Mean``, ``Mean Intensity``                      ``intensity``
  ``Intensity STD``, ``Intensity Std Dev``                    ``sigma_intensity``
  ``Intensity Min`` / ``Intensity Max``                       ``intensity_min`` / ``intensity_max``
  ``Max Feret Diameter`` (µm)                                 ``max_feret_um``
  ``Area`` (µm²), ``Perimeter`` (µm)                          ``area_um2``, ``perimeter_um``
  ``X Left``, ``X Right``, ``Y Top``, ``Y Bottom``            ``x_left`` ... (pixels)
  ``Frame #``, ``Frame``, ``Frame Number``                    ``frame``
  ``Edge Particle`` (Yes/No, True/False, 1/0)                 ``edge_particle``
  ``Particle ID``, ``Particle #``, ``ID``                     ``particle_id`` (else the row number)
  ==========================================================  =====================

  Other columns are kept under their snake_case name.

Frames
  One image a frame (TIFF, PNG or BMP; 8- or 16-bit grey, or RGB), in one folder. A frame file is
  found by the last number in its name (``frame_000123.png``, ``Frame 123.tif``, ``00123.bmp`` are
  frame 123), matching the CSV's ``Frame #`` as written [``frame_pattern`` such as
  ``"img{frame:05d}.tif"`` names them exactly instead].

Coordinates
  Pixel indices counted from 0 at the top-left of the frame, both ends inclusive: ``X Right`` is the
  particle's last column, so the crop is ``frame[y_top:y_bottom+1, x_left:x_right+1]``
  [``exclusive=True`` for end-exclusive, ``one_based=True`` for indices counted from 1; ``pad``
  adds context pixels around the box, clipped to the frame].

Intensities
  Crops keep the frame's bit depth: 16-bit frames give 16-bit PNG crops with the values unchanged
  (nothing rescaled or clipped, so intensities above 255 survive); the manifest's ``bit_depth`` says
  which.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fimvision.console import tqdm_disable
from fimvision.curation.output import Summary, read_export_csv, safe_name
from fimvision.errors import CurationError
from fimvision.files import OutputFolder
from fimvision.imageio import IMAGE_SUFFIXES, read_image, write_png

ALIASES: dict[str, str] = {
    "ecd": "esd_um", "ecdum": "esd_um", "ecdmicrons": "esd_um", "equivalentcirculardiameter": "esd_um",
    "circularity": "circularity", "aspectratio": "aspect_ratio",
    "intensitymean": "intensity", "meanintensity": "intensity", "intensity": "intensity",
    "intensitystd": "sigma_intensity", "intensitystddev": "sigma_intensity", "intensitysd": "sigma_intensity",
    "intensitystandarddeviation": "sigma_intensity", "intensitymin": "intensity_min", "intensitymax": "intensity_max",
    "maxferetdiameter": "max_feret_um", "maxferetdiameterum": "max_feret_um", "maxferet": "max_feret_um",
    "area": "area_um2", "areaum2": "area_um2", "perimeter": "perimeter_um", "perimeterum": "perimeter_um",
    "xleft": "x_left", "xright": "x_right", "ytop": "y_top", "ybottom": "y_bottom",
    "frame": "frame", "framenumber": "frame", "frameno": "frame", "frameindex": "frame",
    "edgeparticle": "edge_particle", "edge": "edge_particle",
    "particleid": "particle_id", "particle": "particle_id", "particlenumber": "particle_id", "id": "particle_id",
}  # fmt: skip
BOX = ("x_left", "x_right", "y_top", "y_bottom")
TRUE = {"yes", "y", "true", "t", "1", "1.0"}
FALSE = {"no", "n", "false", "f", "0", "0.0", ""}


def _key(header: str) -> str:
    text = str(header).lower().replace("µ", "u").replace("μ", "u").replace("²", "2")
    text = re.sub(r"\((?:u|micro)?m2?\)|\(px\)|\(pixels?\)", "", text)  # units in brackets
    return re.sub(r"[^0-9a-z]+", "", text)


def mfi_column(header: str) -> str:
    """Manifest column for an MFI CSV header (``ECD (µm)`` -> ``esd_um``); unknown ones in snake_case."""
    known = ALIASES.get(_key(header))
    if known:
        return known
    snake = str(header).lower().replace("µ", "u").replace("²", "2").replace("#", "number")
    return re.sub(r"[^0-9a-z]+", "_", snake).strip("_") or "column"


def read_mfi_csv(path: str | Path) -> pd.DataFrame:
    """Read an MFI particle CSV with normalised columns (see the module docstring); adds ``line``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CurationError("MFI particle CSV not found", file=path)
    frame, header = read_export_csv(
        path, lambda line: set(BOX) <= {ALIASES.get(_key(cell)) for cell in line.split(",")}, mfi_column,
        missing="with X Left, X Right, Y Top and Y Bottom", hint="export the particle data with the bounding box columns",
        dtype=str, keep_default_na=False, skipinitialspace=True)
    if "frame" not in frame.columns:
        raise CurationError("no frame column (Frame #)", file=path, line=header + 1,
                            hint="each particle must name the frame it was imaged in")
    for column in (*BOX, "frame"):
        values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
        broken = values.isna() | (values % 1 != 0)
        if broken.any():
            i = int(np.flatnonzero(broken.to_numpy())[0])
            raise CurationError(f"'{frame[column].iloc[i]}' is not a whole number", file=path,
                                line=int(frame["line"].iloc[i]), column=column, hint="fix or remove the row")
        frame[column] = values.astype("int64")
    if "edge_particle" in frame.columns:
        flags = frame["edge_particle"].str.strip().str.lower()
        broken = ~flags.isin(TRUE | FALSE)
        if broken.any():
            i = int(np.flatnonzero(broken.to_numpy())[0])
            raise CurationError(f"'{frame['edge_particle'].iloc[i]}' is not yes/no", file=path,
                                line=int(frame["line"].iloc[i]), column="edge_particle", hint="use Yes/No or 1/0")
        frame["edge_particle"] = flags.isin(TRUE)
    if "particle_id" not in frame.columns:
        frame["particle_id"] = [str(i + 1) for i in range(len(frame))]
    for column in frame.columns:
        if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column]):
            numbers = pd.to_numeric(frame[column], errors="coerce")
            if column != "particle_id" and numbers.notna().all() and len(frame):
                frame[column] = numbers
    return frame


def find_frames(folder: str | Path, *, pattern: str | None = None, numbers: Sequence[int] = ()) -> dict[int, Path]:
    """Frame number -> image file in ``folder`` (by the last number in each name, or by ``pattern``)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CurationError("frame folder not found", file=folder, hint="give the folder of exported frame images")
    if pattern is not None:
        found = {}
        for number in numbers:
            try:
                name = pattern.format(frame=number)
            except (KeyError, IndexError, ValueError) as err:
                raise CurationError(f"frame pattern '{pattern}' is not valid ({err})",
                                    hint="use a pattern like frame_{frame:06d}.png") from err
            if (folder / name).is_file():
                found[number] = folder / name
        return found
    frames: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        digits = re.findall(r"\d+", path.stem)
        if not digits:
            continue
        number = int(digits[-1])
        if number in frames:
            raise CurationError(f"two files are frame {number}: {frames[number].name} and {path.name}", file=folder,
                                hint="keep one file a frame, or name them exactly with --frame-pattern")
        frames[number] = path
    if not frames:
        raise CurationError("no numbered frame image in the folder", file=folder,
                            hint="frames must be images whose name ends in the frame number")
    return frames


def curate_mfi(particles_csv: str | Path, frames: str | Path, out: str | Path, *, exclusive: bool = False,
               one_based: bool = False, pad: int = 0, frame_pattern: str | None = None, drop_edge: bool = False,
               label: str = "", label_column: str | None = None, group: str = "", sample: str | None = None,
               instrument: str = "MFI", skip_bad: bool = False, overwrite: bool = False,
               progress: bool = True) -> Summary:
    """Crop every particle of an MFI export from its frame into a dataset (see the module docstring).

    A missing frame or a box outside its frame raises :class:`CurationError` naming the CSV line,
    or, with ``skip_bad``, leaves the particle out and lists it in ``skipped.csv``.
    """
    csv_path = Path(particles_csv).expanduser()
    table = read_mfi_csv(csv_path)
    if pad < 0:
        raise CurationError(f"pad must be >= 0, got {pad}")
    if label and label_column:
        raise CurationError("give either --label or --label-column, not both")
    if label_column is not None:
        column = mfi_column(label_column)
        if column not in table.columns:
            raise CurationError(f"no label column '{label_column}'", file=csv_path, hint="check --label-column")
        table["label"] = table[column].astype(str).str.strip()
    else:
        table["label"] = label
    frame_files = find_frames(frames, pattern=frame_pattern, numbers=sorted(set(table["frame"])))
    summary = Summary(tool="curate_mfi", out=Path(out).expanduser().resolve())
    shift = 1 if one_based else 0
    end = 0 if exclusive else 1
    keep = np.zeros(len(table), dtype=bool)
    images = [""] * len(table)
    depth = [0] * len(table)
    sample_name = sample or csv_path.stem
    folder = safe_name(sample_name, "particle")
    with OutputFolder(out, overwrite=overwrite, inputs=[csv_path, Path(frames)]) as tmp:
        bar = tqdm(total=len(table), desc="crop MFI particles", unit="particle", disable=tqdm_disable(progress))
        for number, rows in table.groupby("frame", sort=True):
            path = frame_files.get(int(number))
            positions = table.index.get_indexer(rows.index)
            if path is None:
                if not skip_bad:
                    raise CurationError(f"frame {number} has no image in {frames}", file=csv_path,
                                        line=int(rows["line"].iloc[0]), column="frame",
                                        hint="export the frames, check --frame-pattern, or pass --skip-bad")
                for pos in positions:
                    summary.skipped.add(csv_path, table["particle_id"].iloc[pos], f"missing frame: {number}")
                bar.update(len(rows))
                continue
            image = read_image(path)
            height, width = image.shape[:2]
            for pos in positions:
                bar.update(1)
                row = table.iloc[pos]
                pid = str(row["particle_id"])
                if drop_edge and bool(row.get("edge_particle", False)):
                    summary.skipped.add(csv_path, pid, "edge particle")
                    continue
                x0, y0 = int(row["x_left"]) - shift, int(row["y_top"]) - shift
                x1, y1 = int(row["x_right"]) - shift + end, int(row["y_bottom"]) - shift + end
                if x1 <= x0 or y1 <= y0 or x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                    problem = (f"box x={x0}..{x1}, y={y0}..{y1} (end exclusive, from 0) lies outside frame {number} "
                               f"({width}x{height} px) or is empty")
                    if not skip_bad:
                        raise CurationError(f"particle {pid}: {problem}", file=csv_path, line=int(row["line"]),
                                            column="X Left/X Right/Y Top/Y Bottom",
                                            hint="check the coordinate convention (--exclusive, --one-based) "
                                            "or pass --skip-bad")
                    summary.skipped.add(csv_path, pid, f"box outside frame: {problem}")
                    continue
                x0, y0 = max(0, x0 - pad), max(0, y0 - pad)
                x1, y1 = min(width, x1 + pad), min(height, y1 + pad)
                rel = f"images/{folder}/{pos + 1:06d}.png"  # row number: MFI ids may repeat between frames
                write_png(tmp / rel, np.ascontiguousarray(image[y0:y1, x0:x1]))
                images[pos], keep[pos] = rel, True
                depth[pos] = 16 if image.dtype == np.uint16 else 8
        bar.close()
        table = table.assign(image=images, bit_depth=depth, sample=sample_name, group=group,
                             instrument=instrument)
        written = table[keep].drop(columns=["line"]).reset_index(drop=True)
        if written.empty:
            raise CurationError("no particle was written", file=csv_path, hint="see the skipped reasons")
        summary.details["frames"] = f"{table['frame'].nunique()} frame(s), {len(frame_files)} frame file(s) found"
        summary.details["bit depth"] = ", ".join(f"{d}-bit: {n}" for d, n in sorted(written["bit_depth"].value_counts().items()))
        summary.finish(written, tmp)
    return summary
