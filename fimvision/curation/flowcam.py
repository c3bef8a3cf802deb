"""FlowCam / VisualSpreadsheet run exports: readers and curation into a fimvision dataset.

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
- ``.ctx``: an INI file (``[Fluid] CalibrationConstant``, ``[Camera] CameraName``, ``[Software]
  SoftwareVersion`` and ``CameraMagnification``, ``[Fluid] FlowCellType``).
- ``.cla`` v3: ``v3``, the number of classifications (``1``), then per classification its name and
  number of classes, and per class its name, ``OR``/``AND``, the number of filter lines, the filter
  paths, the number of particles and their ids one a line. Particles in no class are unclassified.

Manifest columns written: ``image``, ``label``, ``particle_id`` (the .lst ``id``), ``image_id`` (the
GUID), ``run``, ``sample``, ``group``, ``instrument``, ``mask`` (with masks), the crop's place
(``collage_file``, ``image_x``, ``image_y``, ``image_w``, ``image_h``) and every per-particle feature
(``esd_um``, ``length_um``, ``width_um``, ``aspect_ratio``, ``circularity``, ``transparency``,
``intensity``, ``sigma_intensity``, ``avg_red``/``green``/``blue``, ``edge_gradient``, ...). Without a
.csv, ``aspect_ratio`` (Legendre minor/major axis; width/length for one-pixel-wide particles), ``circularity`` (min(1, 4 pi filled area /
perimeter^2)) and ``transparency`` (1 - ABD/ESD diameter) are derived from the .lst; on the real
exports these equal VisualSpreadsheet's values to the 4 decimals it writes.
"""

from __future__ import annotations

import configparser
import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fimvision.curation.errors import CurationError
from fimvision.curation.imageio import IMAGE_SUFFIXES, is_grey, read_image, write_png
from fimvision.curation.output import (
    OutputFolder,
    SkipLog,
    Summary,
    class_counts,
    unique_columns,
    write_manifest,
)

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


# ----------------------------------------------------------------------------------------------------------
# Readers


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")  # VisualSpreadsheet runs on Windows


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
    lines = _read_text(path).splitlines()
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
    lines = _read_text(path).splitlines()
    header = next((i for i, line in enumerate(lines[:100]) if "particle id" in line.lower()), None)
    if header is None:
        raise CurationError("no header line naming 'Particle ID' in the first 100 lines", file=path, line=1,
                            hint="export the particle data as CSV from VisualSpreadsheet, or leave the .csv out")
    try:
        frame = pd.read_csv(StringIO("\n".join(lines[header:])))
    except pd.errors.ParserError as err:
        raise CurationError(f"cannot be read as CSV ({err})", file=path,
                            hint="re-export the particle data, or leave the .csv out") from err
    frame.columns = unique_columns(frame.columns, normalise_header)
    if "particle_id" not in frame.columns:
        raise CurationError("no 'Particle ID' column", file=path, line=header + 1,
                            hint="the CSV is joined to the .lst by Particle ID")
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = frame[column].fillna("").astype(str).str.strip()
    frame["line"] = np.arange(len(frame)) + header + 2
    return frame


@dataclass
class FlowCamContext:
    """What the ``.ctx`` says about the instrument (``None`` where absent)."""

    path: Path | None = None
    cal_const_um_per_px: float | None = None
    camera: str | None = None
    magnification: str | None = None
    flow_cell: str | None = None
    software: str | None = None
    software_version: str | None = None
    sections: dict[str, dict[str, str]] = field(default_factory=dict)

    def instrument(self) -> str:
        """A short instrument description, e.g. ``FlowCam SONY_XCD_SC90CR 10x FC100``."""
        parts = ["FlowCam", self.camera or "", f"{self.magnification}x" if self.magnification else "",
                 self.flow_cell or ""]
        return " ".join(p for p in parts if p)


def read_ctx(path: str | Path) -> FlowCamContext:
    """Read a VisualSpreadsheet ``.ctx`` (INI) file."""
    path = Path(path)
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep the keys' case
    try:
        parser.read_string(_read_text(path), source=str(path))
    except configparser.Error as err:
        line = getattr(err, "lineno", None)
        raise CurationError(f"cannot be read as a context (INI) file ({err.__class__.__name__})", file=path,
                            line=line, hint="re-export the run, or leave the .ctx out") from err
    sections = {name: dict(parser[name]) for name in parser.sections()}

    def get(section: str, key: str) -> str | None:
        value = sections.get(section, {}).get(key, "").strip()
        return value or None

    cal = get("Fluid", "CalibrationConstant")
    try:
        cal_value = float(cal) if cal is not None else None
    except ValueError:
        raise CurationError(f"CalibrationConstant '{cal}' is not a number", file=path, column="[Fluid] CalibrationConstant",
                            hint="fix the value or leave the .ctx out") from None
    return FlowCamContext(path=path, cal_const_um_per_px=cal_value, camera=get("Camera", "CameraName"),
                          magnification=get("Software", "CameraMagnification"), flow_cell=get("Fluid", "FlowCellType"),
                          software=get("Software", "SoftwareName"), software_version=get("Software", "SoftwareVersion"),
                          sections=sections)


@dataclass
class Classification:
    """One classification of a ``.cla``: class name -> particle ids (in file order)."""

    name: str
    classes: dict[str, list[int]]

    def labels(self) -> dict[int, str]:
        """Particle id -> class name."""
        return {pid: name for name, ids in self.classes.items() for pid in ids}


def read_cla(path: str | Path) -> list[Classification]:
    """Read a VisualSpreadsheet ``.cla`` (v3): every classification in it, in file order.

    A particle listed in two classes of one classification raises :class:`CurationError`.
    """
    path = Path(path)
    lines = _read_text(path).splitlines()
    position = 0

    def take(what: str) -> str:
        nonlocal position
        if position >= len(lines):
            raise CurationError(f"truncated .cla: the file ends where {what} should be", file=path, line=position + 1,
                                hint="re-export the classification, or leave the .cla out")
        position += 1
        return lines[position - 1].strip()

    def take_int(what: str) -> int:
        text = take(what)
        try:
            value = int(text)
        except ValueError:
            raise CurationError(f"expected {what} (a whole number), found '{text[:40]}'", file=path, line=position,
                                hint="the .cla is damaged or not format v3; re-export it") from None
        if value < 0:
            raise CurationError(f"{what} is negative ({value})", file=path, line=position, hint="re-export the .cla")
        return value

    version = take("the format line")
    if version.lower() != "v3":
        raise CurationError(f"unsupported classification format '{version[:20]}' (expected v3)", file=path, line=1,
                            hint="re-export the classification from VisualSpreadsheet 4")
    result = []
    for _ in range(take_int("the number of classifications")):
        name = take("the classification name")
        classes: dict[str, list[int]] = {}
        seen: dict[int, tuple[str, int]] = {}
        for _ in range(take_int("the number of classes")):
            cls = take("a class name")
            take("the filter operator (OR/AND)")
            for _ in range(take_int("the number of filter lines")):
                take("a filter path")
            ids = []
            for _ in range(take_int(f"the particle count of class '{cls}'")):
                pid = take_int(f"a particle id of class '{cls}'")
                if pid in seen and seen[pid][0] != cls:
                    raise CurationError(f"particle {pid} is in class '{cls}' and in class '{seen[pid][0]}' "
                                        f"(line {seen[pid][1]})", file=path, line=position,
                                        hint="a particle may have one class; fix the classification in VisualSpreadsheet")
                seen[pid] = (cls, position)
                ids.append(pid)
            classes[cls] = ids
        result.append(Classification(name=name, classes=classes))
    return result


# ----------------------------------------------------------------------------------------------------------
# Runs


@dataclass
class FlowCamRun:
    """The files of one exported run (``None`` for optional files that are absent)."""

    folder: Path
    name: str
    lst: Path
    csv: Path | None
    cla: Path | None
    ctx: Path | None


def find_run(path: str | Path) -> FlowCamRun:
    """The run in a folder (which must hold exactly one ``.lst``), or the run of a given ``.lst``."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".lst":
        lst = path
    elif path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".lst")
        if not found:
            raise CurationError("no .lst file in the run folder", file=path,
                                hint="give the folder VisualSpreadsheet exported (it holds RUN.lst and the collages)")
        if len(found) > 1:
            raise CurationError(f"{len(found)} .lst files in one folder ({', '.join(p.name for p in found[:4])})",
                                file=path, hint="give the .lst files themselves as the runs")
        lst = found[0]
    else:
        raise CurationError("run folder not found", file=path, hint="give a VisualSpreadsheet run folder or its .lst")
    folder, name = lst.parent, lst.stem

    def optional(suffix: str) -> Path | None:
        candidate = folder / f"{name}{suffix}"
        return candidate if candidate.is_file() else None

    return FlowCamRun(folder=folder, name=name, lst=lst, csv=optional(".csv"), cla=optional(".cla"),
                      ctx=optional(".ctx"))


def derive_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``aspect_ratio``, ``circularity`` and ``transparency`` from .lst columns where missing."""
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
        collages = sorted(p.name for p in run.folder.iterdir()
                          if re.fullmatch(rf"{re.escape(run.name)}_\d+\.tiff?", p.name))
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


# ----------------------------------------------------------------------------------------------------------
# Labels and groups


def labels_from_folders(root: str | Path) -> dict[str, str]:
    """Image id (GUID, upper case) -> class, from a folder-per-class export of crops.

    Each subfolder of ``root`` is a class; a crop is matched by the GUID in its file name.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CurationError("label folder not found", file=root, hint="give the folder holding one subfolder a class")
    labels: dict[str, str] = {}
    where: dict[str, Path] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            match = GUID.search(path.name)
            if not match:
                continue
            key = match.group(0).upper()
            if key in labels and labels[key] != folder.name:
                raise CurationError(f"image id {key} is in class '{folder.name}' and in class '{labels[key]}' "
                                    f"({where[key]})", file=path, hint="keep each particle in one class folder")
            labels[key], where[key] = folder.name, path
    if not labels:
        raise CurationError("no crop file name holds an image id (GUID)", file=root,
                            hint="crops must be named like RUN_<GUID>.png inside one folder a class")
    return labels


def _read_table(path: Path, required_any: Sequence[Sequence[str]], what: str) -> pd.DataFrame:
    if not path.is_file():
        raise CurationError(f"{what} not found", file=path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise CurationError(f"cannot be read as CSV ({err})", file=path, hint="give a comma-separated table with a header") from err
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    for option in required_any:
        if all(c in frame.columns for c in option):
            break
    else:
        wanted = " or ".join("+".join(o) for o in required_any)
        raise CurationError(f"{what} needs columns {wanted}; found {list(frame.columns)}", file=path, line=1,
                            hint="fix the header")
    for column in frame.columns:
        frame[column] = frame[column].str.strip()
    frame["line"] = np.arange(len(frame)) + 2
    return frame


def labels_from_csv(path: str | Path) -> pd.DataFrame:
    """A label table: ``label`` with ``image_id``, or with ``particle_id`` (and ``run`` for several runs)."""
    path = Path(path).expanduser()
    frame = _read_table(path, [("image_id", "label"), ("particle_id", "label")], "the label CSV")
    key = ["image_id"] if "image_id" in frame.columns else ["run", "particle_id"] if "run" in frame.columns else ["particle_id"]
    if key == ["image_id"]:
        frame["image_id"] = frame["image_id"].str.upper()
    keys = frame[key].astype(str).agg("|".join, axis=1)
    first: dict[str, tuple[str, int]] = {}
    for k, label, line in zip(keys, frame["label"], frame["line"], strict=True):
        if k in first and first[k][0] != label:
            raise CurationError(f"{'/'.join(key)} {k} has two labels ('{first[k][0]}' on line {first[k][1]} and "
                                f"'{label}')", file=path, line=int(line), column="label", hint="keep one label a particle")
        first.setdefault(k, (label, int(line)))
    frame = frame.drop_duplicates(key)
    frame.attrs["path"] = str(path)
    return frame


def groups_from_csv(path: str | Path) -> pd.DataFrame:
    """A run table: ``run`` and ``group``, optionally ``sample``, one row a run."""
    path = Path(path).expanduser()
    frame = _read_table(path, [("run", "group")], "the group CSV")
    return frame.drop_duplicates("run")


# ----------------------------------------------------------------------------------------------------------
# Curation


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


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
                   lst_fields: Sequence[str] | None = None, skip_bad: bool = False,
                   progress: bool = True) -> Summary:
    """Curate VisualSpreadsheet runs into a dataset folder ``out`` (see the module docstring).

    Labels come from ``label_csv``, else ``label_folders``, else each run's ``.cla`` (the first
    classification, or the one named ``classification``); particles without one get an empty label,
    or are left out with ``drop_unclassified``. ``group`` names every run's group; ``group_csv`` maps
    ``run`` to ``group`` (and optionally ``sample``; the default sample is the run name).

    Bad input raises :class:`CurationError` naming file and line; with ``skip_bad``, particles that
    cannot be cropped (missing collage, crop outside the collage, damaged .lst row) are left out and
    listed in ``skipped.csv`` instead. Nothing is written unless the whole dataset is.
    """
    found = [find_run(r) for r in runs]
    if not found:
        raise CurationError("no run given", hint="give one or more run folders")
    names = [r.name for r in found]
    if len(set(names)) != len(names):
        raise CurationError(f"run name(s) {sorted({n for n in names if names.count(n) > 1})} given twice",
                            hint="give each run once")
    if group is not None and group_csv is not None:
        raise CurationError("give either --group or --group-csv, not both")
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
    frames = []
    with OutputFolder(out, overwrite=overwrite, inputs=inputs) as tmp:
        for run in found:
            table = read_run_table(run, legacy_fields=lst_fields, skip_bad=skip_bad, skipped=summary.skipped,
                                   notes=summary.notes)
            context = read_ctx(run.ctx) if run.ctx is not None else FlowCamContext()
            table["run"] = run.name
            table["label"] = _labels_for_run(run, table, label_table, folder_labels, classification, len(found),
                                             summary.notes)
            if groups is not None:
                row = groups.loc[groups["run"] == run.name].iloc[0]
                table["group"] = row["group"]
                table["sample"] = row["sample"] if "sample" in groups.columns and row["sample"] else run.name
            else:
                table["group"] = group or ""
                table["sample"] = run.name
            table["instrument"] = instrument or context.instrument()
            if "image_id" in table.columns:
                table["image_id"] = table["image_id"].astype(str).str.upper()
            frames.append(_write_run(run, table, tmp, masks=masks, skip_bad=skip_bad,
                                     drop_unclassified=drop_unclassified, skipped=summary.skipped, progress=progress,
                                     details=summary.details))
        manifest = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["image", "label"])
        if manifest.empty:
            raise CurationError("no particle was written", hint="see the skipped reasons; nothing was changed")
        write_manifest(manifest.drop(columns=["line"], errors="ignore"), tmp)
        summary.written = len(manifest)
        summary.classes = class_counts(manifest["label"])
        summary.write(tmp)
    return summary


def _labels_for_run(run: FlowCamRun, table: pd.DataFrame, label_table: pd.DataFrame | None,
                    folder_labels: dict[str, str] | None, classification: str | None, n_runs: int,
                    notes: list[str]) -> pd.Series:
    if label_table is not None:
        if "image_id" in label_table.columns:
            mapping = dict(zip(label_table["image_id"], label_table["label"], strict=True))
            return table["image_id"].astype(str).str.upper().map(mapping).fillna("")
        rows = label_table
        if "run" in rows.columns:
            rows = rows[rows["run"] == run.name]
        elif n_runs > 1:
            raise CurationError("the label CSV maps particle ids but has no 'run' column, and particle ids repeat "
                                "between runs", file=label_table.attrs.get("path"),
                                hint="add a 'run' column or use 'image_id' (the GUID)")
        mapping = dict(zip(pd.to_numeric(rows["particle_id"], errors="coerce"), rows["label"], strict=True))
        return table["particle_id"].map(mapping).fillna("")
    if folder_labels is not None:
        if "image_id" not in table.columns:
            raise CurationError("the .lst has no image_id (GUID) column to match crops by", file=run.lst,
                                hint="use --label-csv with particle ids instead")
        return table["image_id"].astype(str).str.upper().map(folder_labels).fillna("")
    if run.cla is None:
        notes.append(f"{run.name}: no .cla; all particles are unlabelled")
        return pd.Series("", index=table.index)
    classifications = read_cla(run.cla)
    if not classifications:
        notes.append(f"{run.name}: the .cla holds no classification; all particles are unlabelled")
        return pd.Series("", index=table.index)
    chosen = classifications[0]
    if classification is not None:
        named = [c for c in classifications if c.name == classification]
        if not named:
            raise CurationError(f"no classification named '{classification}' (found: "
                                f"{[c.name for c in classifications]})", file=run.cla, hint="check --classification")
        chosen = named[0]
    mapping = chosen.labels()
    unknown = set(mapping) - set(table["particle_id"])
    if unknown:
        notes.append(f"{run.name}: {len(unknown)} particle id(s) of {run.cla.name} are not in the .lst "
                     f"(e.g. {sorted(unknown)[:3]})")
    return table["particle_id"].map(mapping).fillna("")


def _write_run(run: FlowCamRun, table: pd.DataFrame, tmp: Path, *, masks: bool, skip_bad: bool,
               drop_unclassified: bool, skipped: SkipLog, progress: bool, details: dict[str, object]) -> pd.DataFrame:
    """Crop every particle of one run into ``tmp/images/<run>/``; returns the rows written."""
    folder = _safe(run.name)
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
                raise CurationError(f"the collage '{collage_name}' named here is missing from the run folder "
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
    details.setdefault("runs", {})
    details["runs"][run.name] = (f"{len(written)} of {len(table)} particle(s) written"  # type: ignore[index]
                                 + (f", {sorted(channels)[0]}-channel crops" if len(channels) == 1 else ""))
    return written
