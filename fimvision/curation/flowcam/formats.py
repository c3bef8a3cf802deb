"""Readers of a VisualSpreadsheet run's particle tables, ``.lst`` and ``.csv``, and the manifest names of
their columns (the run's other files: :mod:`.metadata`).

A run folder holds ``RUN.lst`` (the particle list), collages ``RUN_00000N.tif`` (RGB or grey tiles on
black) with masks ``RUN_00000N_bin.tif``, and optionally ``RUN.csv`` (the exported spreadsheet),
``RUN.cla`` (classification) and ``RUN.ctx`` (run context: calibration, camera, flow cell).

Formats, as checked on VisualSpreadsheet 4.19.3 exports:

- ``.lst`` format 017: line 1 the format number (``017``), line 2 ``num-fields|N``, then N lines
  ``name|type`` (types int32, double, string, guid, timestamp), then one ``|``-separated row a
  particle. A particle's crop is ``collage[image_y:image_y+image_h, image_x:image_x+image_w]``
  (0-based, end exclusive) in the collage named by ``collage_file``; its mask the same slice of the
  ``_bin.tif``.
- Older ``.lst`` files (assumption; no public sample): line 1 a format number, then ``:``-separated
  rows without a header. Columns are named from ``legacy_fields`` when given; otherwise the first nine
  take the 017 names by position (``id, image_x, image_y, image_w, image_h, src_x, src_y, src_image,
  cal_image``), a column holding only ``.tif`` names is ``collage_file``, one holding only GUIDs is
  ``image_id``, and the rest are ``field_<n>``. Without a ``collage_file`` column the run must have
  exactly one collage.
- ``.csv``: one row a particle, ``Particle ID`` equal to the .lst ``id`` and ``Original Reference ID``
  to its ``image_id``. Headers are normalised to snake_case names with their unit (``Diameter (ESD)``
  and ``Diameter (ESD) (µm)`` both become ``esd_um``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd

from fimvision.curation.output import read_export_csv, read_text
from fimvision.errors import CurationError

GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
LST_NUMERIC_TYPES = {"int32": "Int64", "int": "Int64", "int64": "Int64", "double": "float64", "float": "float64"}
LST_TYPES = set(LST_NUMERIC_TYPES) | {"string", "guid", "timestamp", "bool"}
GEOMETRY = ("image_x", "image_y", "image_w", "image_h")
LEGACY_LEADING_FIELDS = ("id", "image_x", "image_y", "image_w", "image_h", "src_x", "src_y", "src_image", "cal_image")

# .lst field -> manifest column: units in the name (µm, µm², px, s, deg).
LST_NAMES = {
    "id": "particle_id", "esd_diameter": "esd_um", "abd_diameter": "abd_um", "fd_diameter": "fd_um",
    "length": "length_um", "width": "width_um", "abd_area": "area_abd_um2", "filled_area": "area_filled_um2",
    "perimeter": "perimeter_um", "convex_perimeter": "convex_perimeter_um", "cal_const": "cal_const_um_per_px",
    "elapsed_time": "elapsed_time_s", "feret_max_angle": "feret_max_angle_deg",
    "feret_min_angle": "feret_min_angle_deg", "raw_area": "raw_area_px", "raw_filled_area": "raw_filled_area_px",
    "raw_convex_hull_area": "raw_convex_hull_area_px", "raw_feret_max": "raw_feret_max_px",
    "raw_feret_min": "raw_feret_min_px", "raw_feret_mean": "raw_feret_mean_px", "raw_perimeter": "raw_perimeter_px",
    "raw_convex_perimeter": "raw_convex_perimeter_px", "raw_legendre_major": "raw_legendre_major_px",
    "raw_legendre_minor": "raw_legendre_minor_px",
}  # fmt: skip

# .csv header (lower case, unit suffix removed) -> manifest column, matching LST_NAMES where both exist.
CSV_NAMES = {
    "particle id": "particle_id", "original reference id": "image_id", "area (abd)": "area_abd_um2",
    "area (filled)": "area_filled_um2", "aspect ratio": "aspect_ratio", "average blue": "avg_blue",
    "average green": "avg_green", "average red": "avg_red", "calibration factor": "cal_const_um_per_px",
    "calibration image": "cal_image", "camera": "camera", "capture x": "src_x", "capture y": "src_y",
    "circle fit": "circle_fit", "circularity": "circularity", "circularity (hu)": "circularity_hu",
    "compactness": "compactness", "convex perimeter": "convex_perimeter_um", "convexity": "convexity",
    "diameter (abd)": "abd_um", "diameter (esd)": "esd_um", "diameter (fd)": "fd_um",
    "edge gradient": "edge_gradient", "elapsed time": "elapsed_time_s", "elongation": "elongation",
    "feret angle max": "feret_max_angle_deg", "feret angle min": "feret_min_angle_deg",
    "geodesic length": "geodesic_length_um", "geodesic thickness": "geodesic_thickness_um",
    "image file": "collage_file", "image height": "image_h", "image width": "image_w", "image x": "image_x",
    "image y": "image_y", "intensity": "intensity", "length": "length_um", "perimeter": "perimeter_um",
    "sigma intensity": "sigma_intensity", "source image": "src_image", "sum intensity": "sum_intensity",
    "transparency": "transparency", "volume (abd)": "volume_abd_um3", "volume (esd)": "volume_esd_um3",
    "width": "width_um",
}  # fmt: skip

# A trailing "(unit)" in newer headers, e.g. "Diameter (ESD) (µm)", "Area (ABD) (µm²)", "Elapsed Time (s)".
_UNIT = re.compile(r"\s*\(\s*((?:µ|u|micro)?m(?:\^?[23²³])?|px|pixels?|s|sec|deg|degrees|°|%)\s*\)\s*$", re.I)


@dataclass
class LstTable:
    """A parsed ``.lst``: typed columns named as in the file, plus ``line`` (the row's line number)."""

    path: Path
    version: str
    fields: list[str]
    types: list[str]
    frame: pd.DataFrame
    legacy: bool = False
    bad_rows: list[tuple[int, str]] = field(default_factory=list)


def _legacy_names(rows: list[list[str]], n: int, given: Sequence[str] | None, path: Path, first_line: int) -> list[str]:
    if given is not None:
        if len(given) != n:
            raise CurationError(f"num-fields mismatch: the rows have {n} ':'-separated values but {len(given)} "
                                "field names were given", file=path, line=first_line,
                                hint="give one name a value (--lst-fields)")
        return list(given)
    names = [LEGACY_LEADING_FIELDS[i] if i < len(LEGACY_LEADING_FIELDS) else f"field_{i + 1}" for i in range(n)]
    for i in range(n):
        values = [row[i] for row in rows]
        if all(v.lower().endswith((".tif", ".tiff")) for v in values) and "collage_file" not in names:
            names[i] = "collage_file"
        elif all(GUID.fullmatch(v) for v in values) and "image_id" not in names:
            names[i] = "image_id"
    return names


def _parse_rows(lines: list[str], numbers: list[int], fields: list[str], types: list[str], separator: str,
                path: Path) -> pd.DataFrame:
    """Typed columns from checked rows (pandas' C parser; the slow path only to name a bad value's line)."""
    numeric = {name: LST_NUMERIC_TYPES[kind] for name, kind in zip(fields, types, strict=True)
               if kind in LST_NUMERIC_TYPES}
    options = dict(sep=separator, header=None, names=fields, keep_default_na=False, quoting=csv.QUOTE_NONE,
                   na_values={name: [""] for name in numeric}, skipinitialspace=True)
    if not lines:
        return pd.DataFrame({name: pd.Series(dtype=numeric.get(name, object)) for name in fields})
    text = "\n".join(lines)
    try:
        frame = pd.read_csv(StringIO(text), dtype={name: numeric.get(name, str) for name in fields}, **options)
    except (ValueError, TypeError):
        frame = pd.read_csv(StringIO(text), dtype=str, **options)
        for name, kind in numeric.items():
            values = pd.to_numeric(frame[name], errors="coerce")
            broken = values.isna() & frame[name].notna()
            if broken.any():
                i = int(np.flatnonzero(broken.to_numpy())[0])
                raise CurationError(f"'{frame[name].iloc[i]}' is not a number ({kind})", file=path, line=numbers[i],
                                    column=name, hint="the file is damaged; re-export the run") from None
            frame[name] = values.astype(kind) if kind != "Int64" or (values.dropna() % 1 == 0).all() else values
    for name in fields:
        if name not in numeric:
            frame[name] = frame[name].fillna("").astype(str).str.strip()
    return frame


def read_lst(path: str | Path, *, legacy_fields: Sequence[str] | None = None, skip_bad: bool = False) -> LstTable:
    """Read a VisualSpreadsheet ``.lst`` (format 017 with a ``num-fields`` header, or the older
    ``:``-separated layout without names).

    A truncated file, a ``num-fields`` that does not match the field names or a row's values, and a
    value of the wrong type raise :class:`CurationError` naming the line. With ``skip_bad`` rows with
    the wrong number of values are left out and listed in ``bad_rows`` instead.
    """
    path = Path(path)
    if not path.is_file():
        raise CurationError(".lst file not found", file=path, hint="give the run folder exported by VisualSpreadsheet")
    lines = read_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise CurationError("the .lst file is empty", file=path, hint="re-export the run from VisualSpreadsheet")
    version = lines[0].strip()
    if not version.isdigit():
        raise CurationError(f"line 1 should be the list format number (such as 017), found '{version[:40]}'",
                            file=path, line=1, hint="is this a VisualSpreadsheet .lst file?")
    if len(lines) < 2:
        raise CurationError("truncated .lst: it ends after the format line", file=path, line=1,
                            hint="re-export the run from VisualSpreadsheet")

    legacy = not lines[1].lower().startswith("num-fields")
    if not legacy:
        head = re.split(r"[|:]", lines[1].strip())
        try:
            n = int(head[1])
        except (IndexError, ValueError):
            raise CurationError(f"cannot read the number of fields from '{lines[1].strip()}'", file=path, line=2,
                                hint="line 2 should read num-fields|N") from None
        if n < 1:
            raise CurationError(f"num-fields is {n}", file=path, line=2, hint="line 2 should read num-fields|N, N >= 1")
        fields, types = [], []
        for k in range(n):
            index = 2 + k
            if index >= len(lines):
                raise CurationError(f"truncated .lst: num-fields is {n} but the file ends after {k} field names",
                                    file=path, line=index, hint="re-export the run from VisualSpreadsheet")
            parts = lines[index].strip().split("|")
            if len(parts) != 2 or parts[1].strip().lower() not in LST_TYPES:
                raise CurationError(f"num-fields mismatch: line 2 declares {n} fields but line {index + 1} is not a "
                                    f"'name|type' line after {k} field names", file=path, line=index + 1,
                                    hint="the header is damaged; re-export the run")
            fields.append(parts[0].strip())
            types.append(parts[1].strip().lower())
        first = 2 + n
        if first < len(lines):
            parts = lines[first].strip().split("|")
            if len(parts) == 2 and parts[1].strip().lower() in LST_TYPES:
                raise CurationError(f"num-fields mismatch: line 2 declares {n} fields but line {first + 1} is one "
                                    "more 'name|type' line", file=path, line=first + 1,
                                    hint="the header is damaged; re-export the run")
        separator = "|"
    else:
        first, separator = 1, ":"

    kept: list[str] = []
    numbers: list[int] = []
    bad: list[tuple[int, str]] = []
    expected = n if not legacy else lines[first].count(separator) + 1 if first < len(lines) else 0
    for index in range(first, len(lines)):
        count = lines[index].count(separator) + 1
        if count != expected:
            last = index == len(lines) - 1
            if last and count < expected:
                problem = f"truncated .lst: the last row has {count} of {expected} fields"
                hint = "the export was cut short; re-export the run, or pass --skip-bad to leave that row out"
            else:
                problem = f"num-fields mismatch: the row has {count} fields, the header declares {expected}"
                hint = "the file is damaged; re-export the run, or pass --skip-bad to leave such rows out"
            if not skip_bad:
                raise CurationError(problem, file=path, line=index + 1, hint=hint)
            bad.append((index + 1, problem))
            continue
        kept.append(lines[index])
        numbers.append(index + 1)

    if legacy:
        rows = [[v.strip() for v in line.split(separator)] for line in kept]
        fields = _legacy_names(rows, expected, legacy_fields, path, first + 1)
        types = []
        for i in range(expected):
            column = pd.to_numeric(pd.Series([r[i] for r in rows], dtype=object), errors="coerce")
            is_number = bool(rows) and column.notna().all()
            types.append(("int32" if (column % 1 == 0).all() else "double") if is_number else "string")
    if len(set(fields)) != len(fields):
        duplicated = sorted({f for f in fields if fields.count(f) > 1})
        raise CurationError(f"field name(s) {duplicated} appear twice in the header", file=path, line=2,
                            hint="the header is damaged; re-export the run")
    frame = _parse_rows(kept, numbers, fields, types, separator, path)
    frame["line"] = numbers
    return LstTable(path=path, version=version, fields=fields, types=types, frame=frame, legacy=legacy, bad_rows=bad)


def normalise_header(name: str) -> str:
    """Manifest column for a VisualSpreadsheet CSV header (``Diameter (ESD) (µm)`` -> ``esd_um``)."""
    text = str(name).strip().replace("\ufeff", "")
    unit = _UNIT.search(text)
    base = text[: unit.start()] if unit and text[: unit.start()].strip() else text
    known = CSV_NAMES.get(re.sub(r"\s+", " ", base.strip().lower()))
    if known:
        return known
    snake = text.lower().replace("µ", "u").replace("²", "2").replace("³", "3").replace("°", "deg").replace("%", "pct")
    return re.sub(r"[^0-9a-z]+", "_", snake).strip("_") or "column"


def read_flowcam_csv(path: str | Path) -> pd.DataFrame:
    """Read a VisualSpreadsheet particle ``.csv`` with normalised column names (see :func:`normalise_header`).

    Also takes exports with a few metadata lines above the header: the header is the first line that
    names ``Particle ID``. Adds ``line`` (the row's line in the file).
    """
    path = Path(path)
    frame, header = read_export_csv(path, lambda line: "particle id" in line.lower(), normalise_header,
                                    missing="naming 'Particle ID'", hint="export the particle data as CSV from "
                                    "VisualSpreadsheet again, or leave the .csv out")
    if "particle_id" not in frame.columns:
        raise CurationError("no 'Particle ID' column", file=path, line=header + 1,
                            hint="the CSV is joined to the .lst by Particle ID")
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = frame[column].fillna("").astype(str).str.strip()
    return frame
