"""Readers of a VisualSpreadsheet run's metadata files: ``.ctx`` (instrument), ``.cla`` (classification)
and the run summaries (fluid volume imaged). Its particle tables: :mod:`.formats`.

Formats, as checked on VisualSpreadsheet 4.19.3 exports:

- ``.ctx``: an INI file (``[Fluid] CalibrationConstant``, ``[Camera] CameraName``, ``[Software]
  SoftwareVersion`` and ``CameraMagnification``, ``[Fluid] FlowCellType``).
- ``.cla`` v3: ``v3``, the number of classifications (``1``), then per classification its name and
  number of classes, and per class its name, ``OR``/``AND``, the number of filter lines, the filter
  paths, the number of particles and their ids one a line. Particles in no class are unclassified.
- ``RUN_run_summary.txt`` (a line ``Fluid Volume Imaged: 0.1418 ml``) or ``RUN_summary.csv`` (a row
  ``Sample Volume Imaged ml,0.1418``).
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fimvision.curation.output import read_text
from fimvision.errors import CurationError

_VOLUME_TXT = re.compile(r"^\s*Fluid Volume Imaged\s*:\s*(?P<value>\S*)\s*(?P<unit>.*?)\s*$", re.I)
_VOLUME_CSV = re.compile(r"^\s*(?:Sample|Fluid) Volume Imaged\s*\(?\s*(?P<unit>ml)?\s*\)?\s*$", re.I)


def read_summary_volume(path: str | Path) -> float | None:
    """The fluid volume imaged (ml) in a run summary: ``RUN_run_summary.txt`` (a line ``Fluid Volume
    Imaged: 0.1418 ml``) or ``RUN_summary.csv`` (a row ``Sample Volume Imaged ml,0.1418``); None when
    the file does not give it. A value that is not a positive number in ml raises :class:`CurationError`.
    """
    path = Path(path)
    csv_file = path.suffix.lower() == ".csv"
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if csv_file:
            cells = line.split(",")
            match = _VOLUME_CSV.match(cells[0]) if len(cells) > 1 else None
            value, unit = (cells[1].strip(), "ml") if match else ("", "")
        else:
            match = _VOLUME_TXT.match(line)
            value, unit = (match["value"], match["unit"] or "ml") if match else ("", "")
        if not match:
            continue
        try:
            volume = float(value)
        except ValueError:
            volume = float("nan")
        if unit.lower() != "ml" or not (np.isfinite(volume) and volume > 0):
            raise CurationError(f"the fluid volume imaged '{line.strip()[:60]}' is not a positive number of ml",
                                file=path, line=number,
                                hint="fix the value, or delete the summary file (volume_imaged_ml is then left empty)")
        return volume
    return None


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
        parser.read_string(read_text(path), source=str(path))
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
    lines = read_text(path).splitlines()
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
