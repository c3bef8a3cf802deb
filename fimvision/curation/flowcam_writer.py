"""Writing particles as a VisualSpreadsheet-style run export (synthetic runs with known truth).

A run folder gets what a VisualSpreadsheet 4.19 export holds, in the same layouts that
:mod:`fimvision.curation.flowcam` reads: collages ``RUN_00000N.tif`` (RGB tiles on black, packed row
by row with a 2-px black gap, 1292 x 964 px like the camera), masks ``RUN_00000N_bin.tif`` (0/255),
``RUN.lst`` (format 017, the same 65 fields), ``RUN.csv`` (the same 72 columns), ``RUN.cla`` (v3,
one class a label; unlabelled particles are in none), ``RUN.ctx`` and ``RUN_run_summary.txt`` (with a
``Fluid Volume Imaged`` of the particle count / :data:`PARTICLES_PER_ML`). A class library
(:func:`write_flowcam_library`) gets ``LIB.flb`` (the same 017 layout) and collages
``LIB_lib_images_00000N.tif`` with their ``_bin.tif`` masks.

Particle ids are 1..N in the order given, image ids deterministic GUIDs of (run, id), so a run
written twice is byte-identical. Features the particle carries (``esd_um``, ``circularity``,
``aspect_ratio``, ...) are written as given; the rest are measured from the tile and mask.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fimvision.console import tqdm_disable
from fimvision.curation.flowcam.formats import LST_NAMES, normalise_header
from fimvision.data.synthetic.measure import contours, convexity, edge_gradient, mean_rgb, rgb
from fimvision.errors import CurationError
from fimvision.files import OutputFolder
from fimvision.imageio import write_tiff

LST_FIELDS: tuple[tuple[str, str], ...] = tuple((name, "int32") for name in (
    "id", "image_x", "image_y", "image_w", "image_h", "src_x", "src_y", "src_image", "cal_image", "ppc", "camera",
)) + (("cal_const", "double"), ("fringe_size", "double"), ("sphere_count", "int32")) + tuple(
    (name, "double") for name in (
        "raw_sphere_volume", "raw_sphere_complement", "raw_sphere_unknown", "raw_area", "raw_feret_max",
        "raw_feret_min", "raw_feret_mean", "raw_perimeter", "raw_convex_perimeter", "raw_legendre_major",
        "raw_legendre_minor", "abd_area", "abd_diameter", "length", "width", "esd_diameter", "fd_diameter",
        "perimeter", "convex_perimeter", "intensity", "sigma_intensity", "sum_intensity", "compactness",
        "elongation", "roughness", "edge_gradient", "elapsed_time", "circle_fit", "symmetry", "circularity_hu",
        "intensity_calimage", "raw_convex_hull_area", "raw_filled_area", "filled_area", "feret_max_angle",
        "feret_min_angle", "avg_red", "avg_green", "avg_blue", "ch1_peak", "ch1_width", "ch1_area", "ch2_peak",
        "ch2_width", "ch2_area", "ch3_peak", "ch3_width", "ch3_area",
    )
) + (("timestamp", "timestamp"), ("collage_file", "string"), ("image_id", "guid"))  # fmt: skip

CSV_COLUMNS: tuple[str, ...] = (
    "Particle ID", "Area (ABD)", "Area (Filled)", "Aspect Ratio", "Average Blue", "Average Green", "Average Red",
    "Calibration Factor", "Calibration Image", "Camera", "Capture X", "Capture Y", "Ch1 Area", "Ch1 Peak",
    "Ch1 Width", "Ch2 Area", "Ch2 Peak", "Ch2 Width", "Ch2/Ch1 Ratio", "Circle Fit", "Circularity",
    "Circularity (Hu)", "Compactness", "Convex Perimeter", "Convexity", "Date", "Diameter (ABD)", "Diameter (ESD)",
    "Diameter (FD)", "Edge Gradient", "Elapsed Time", "Elongation", "Feret Angle Max", "Feret Angle Min",
    "Fiber Curl", "Fiber Straightness", "Filter Score", "Geodesic Aspect Ratio", "Geodesic Length",
    "Geodesic Thickness", "Image File", "Image Height", "Image Width", "Image X", "Image Y", "Intensity", "Length",
    "Original Reference ID", "Particles Per Chain", "Perimeter", "Ratio Blue/Green", "Ratio Red/Blue",
    "Ratio Red/Green", "Roughness", "Scatter Area", "Scatter Peak", "Scatter Width", "Sigma Intensity",
    "Source Image", "Sphere Complement", "Sphere Count", "Sphere Unknown", "Sphere Volume", "Sum Intensity",
    "Symmetry", "Time", "Timestamp", "Transparency", "Volume (ABD)", "Volume (ESD)", "Width",
)  # fmt: skip

# Manifest names of the .csv columns that have no .lst field (a particle's own value goes there).
_CSV_ONLY = frozenset(normalise_header(c) for c in CSV_COLUMNS) - {LST_NAMES.get(n, n) for n, _ in LST_FIELDS}
# A synthetic run's concentration: its summary's "Fluid Volume Imaged" is particles / this (ml). The
# real colour runs imaged 7,054 and 10,295 particles/ml.
PARTICLES_PER_ML = 10_000.0
CANVAS = (964, 1292)  # collage height, width: the camera frame of the real exports
GAP = 2  # black pixels between tiles, as in the real collages
_NAMESPACE = uuid.UUID("6f1c8f1e-5a4e-4c1b-9d1e-2b7c3f0a9e55")  # fixed, so image ids are reproducible
_START = datetime(2025, 1, 1, 12, 0, 0)


class ParticleLike(Protocol):
    """What the writer needs of a particle (``fimvision.data.synthetic.SyntheticParticle`` fits)."""

    image: np.ndarray
    mask: np.ndarray
    label: str
    features: dict[str, float]


def _measure(image: np.ndarray, mask: np.ndarray, cal: float) -> dict[str, float]:
    """.lst values measured from a tile and its mask (pixel and µm units as VisualSpreadsheet).

    Convexity, edge gradient and mean colours use the synthetic data's definitions
    (:mod:`fimvision.data.synthetic.measure`), so a particle measured here or there gets one value.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        mask = np.ones(mask.shape, bool)
    area = float(np.count_nonzero(mask))
    outline = contours(mask)
    points = np.concatenate(outline)
    perimeter = sum(cv2.arcLength(c, True) + math.pi for c in outline)
    hull = cv2.convexHull(points)
    hull_perimeter = cv2.arcLength(hull, True) + math.pi
    (_, _), (rw, rh), angle = cv2.minAreaRect(points)
    length, width = max(rw, rh, 1.0), max(min(rw, rh), 1.0)
    moments = cv2.moments(mask.astype(np.uint8), binaryImage=True)
    mu20, mu02, mu11 = (moments[k] / max(moments["m00"], 1.0) for k in ("mu20", "mu02", "mu11"))
    root = math.sqrt(max(0.0, ((mu20 - mu02) / 2) ** 2 + mu11**2))
    major = 4 * math.sqrt(max(1e-12, (mu20 + mu02) / 2 + root))
    minor = 4 * math.sqrt(max(1e-12, (mu20 + mu02) / 2 - root))
    grey = rgb(image)[mask].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    red, green, blue = mean_rgb(image, mask)
    abd = 2 * math.sqrt(area / math.pi) * cal
    return {
        "raw_area": area, "raw_filled_area": area, "raw_convex_hull_area": float(cv2.contourArea(hull)),
        "raw_perimeter": perimeter, "raw_convex_perimeter": hull_perimeter, "raw_feret_max": length,
        "raw_feret_min": width, "raw_feret_mean": (length + width) / 2, "raw_legendre_major": major,
        "raw_legendre_minor": minor, "abd_area": area * cal**2, "filled_area": area * cal**2, "abd_diameter": abd,
        "esd_diameter": abd, "fd_diameter": abd, "length": length * cal, "width": width * cal,
        "perimeter": perimeter * cal, "convex_perimeter": hull_perimeter * cal, "intensity": float(grey.mean()),
        "sigma_intensity": float(grey.std()), "sum_intensity": float(grey.sum()),
        "compactness": perimeter**2 / (4 * math.pi * area), "elongation": length / width,
        "roughness": perimeter / max(hull_perimeter, 1e-9), "edge_gradient": edge_gradient(image, mask),
        "circle_fit": 0.0, "symmetry": 0.0, "circularity_hu": 0.0, "feret_max_angle": float(angle),
        "feret_min_angle": float(angle) - 90.0, "avg_red": red, "avg_green": green, "avg_blue": blue,
    }  # fmt: skip


def _override(values: dict[str, float], features: Mapping[str, float]) -> dict[str, float]:
    """Put the particle's own features (manifest names) in place of measured .lst values."""
    lst_of = {canonical: lst for lst, canonical in LST_NAMES.items()}
    lst_of["mean_intensity"] = "intensity"
    for name, value in features.items():
        target = lst_of.get(name, name)  # avg_red, edge_gradient, intensity, ...: the same name in the .lst
        if target in values and isinstance(value, int | float):
            values[target] = float(value)
    return values


def _fmt(value: object) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):.4f}"
    return str(value)


@dataclass
class RunWriter:
    """Streams particles into one run folder: tiles go onto collages as they come."""

    folder: Path
    name: str
    cal_const: float = 0.5544
    canvas: tuple[int, int] = CANVAS
    particles_per_ml: float = PARTICLES_PER_ML
    library: bool = False
    rows: list[dict[str, object]] = field(default_factory=list)
    extras: list[dict[str, float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    _collage: np.ndarray | None = None
    _mask: np.ndarray | None = None
    _number: int = 0
    _x: int = 0
    _y: int = 0
    _row_height: int = 0

    def _collage_name(self) -> str:
        return f"{self.name}{'_lib_images' if self.library else ''}_{self._number:06d}.tif"

    def _new_collage(self) -> None:
        self._flush()
        self._number += 1
        self._collage = np.zeros((*self.canvas, 3), np.uint8)
        self._mask = np.zeros(self.canvas, np.uint8)
        self._x = self._y = self._row_height = 0

    def close_collage(self) -> None:
        """Write the current collage now; the next particle starts a new one (bounds memory)."""
        self._flush()

    def _flush(self) -> None:
        if self._collage is not None and self._mask is not None:
            write_tiff(self.folder / self._collage_name(), self._collage)
            write_tiff(self.folder / self._collage_name().replace(".tif", "_bin.tif"), self._mask)
        self._collage = self._mask = None

    def add(self, particle: ParticleLike) -> int:
        """Place one particle; returns its particle id (1-based)."""
        image = rgb(particle.image)
        if image.dtype != np.uint8:
            raise CurationError(f"particle images must be uint8 RGB, got {image.dtype}", file=self.folder)
        h, w = image.shape[:2]
        if h > self.canvas[0] or w > self.canvas[1]:
            raise CurationError(f"a {w}x{h} px tile does not fit a {self.canvas[1]}x{self.canvas[0]} collage",
                                file=self.folder)
        if self._collage is None:
            self._new_collage()
        if self._x + w > self.canvas[1]:  # next row
            self._x, self._y, self._row_height = 0, self._y + self._row_height + GAP, 0
        if self._y + h > self.canvas[0]:
            self._new_collage()
        assert self._collage is not None and self._mask is not None
        x, y = self._x, self._y
        self._collage[y : y + h, x : x + w] = image
        self._mask[y : y + h, x : x + w] = np.where(particle.mask, 255, 0)
        self._x += w + GAP
        self._row_height = max(self._row_height, h)
        pid = len(self.rows) + 1
        values = _override(_measure(image, particle.mask, self.cal_const), particle.features)
        row: dict[str, object] = dict.fromkeys((n for n, _ in LST_FIELDS), 0)
        row.update(values)
        stamp = _START + timedelta(seconds=0.25 * pid)
        row.update({"id": pid, "image_x": x, "image_y": y, "image_w": w, "image_h": h, "src_image": pid, "cal_image": 1,
                    "ppc": 1, "cal_const": self.cal_const, "fringe_size": 4.5, "elapsed_time": 0.25 * pid,
                    "timestamp": stamp.isoformat(timespec="milliseconds"), "collage_file": self._collage_name(),
                    "image_id": str(uuid.uuid5(_NAMESPACE, f"{self.name}/{pid}")).upper()})
        self.rows.append(row)
        self.extras.append({k: float(v) for k, v in particle.features.items() if isinstance(v, int | float)})
        self.labels.append(particle.label or "")
        return pid

    @property
    def volume_imaged_ml(self) -> float:
        """The run's fluid volume imaged: its particles at :attr:`particles_per_ml` (ml)."""
        return len(self.rows) / self.particles_per_ml

    def finish(self, *, classification: str = "fimvision_truth") -> Path:
        """Write the last collage and the .lst, .csv, .cla, .ctx and run summary; returns the .lst.

        A class library (``library``) gets its ``.flb`` only (the .lst layout; no run files).
        """
        self._flush()
        listing = self.folder / f"{self.name}{'.flb' if self.library else '.lst'}"
        lines = ["017", f"num-fields|{len(LST_FIELDS)}", *(f"{n}|{t}" for n, t in LST_FIELDS)]
        lines += ["|".join(_fmt(row[n]) for n, _ in LST_FIELDS) for row in self.rows]
        listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if self.library:
            return listing
        self._write_csv()
        self._write_cla(classification)
        self._write_ctx()
        (self.folder / f"{self.name}_run_summary.txt").write_text(
            f"Run:\n\tFluid Volume Imaged: {self.volume_imaged_ml:.4f} ml\n\tParticle Count: {len(self.rows)}\n\n"
            f"Environment:\n\tSoftware: fimvision synthetic export (VisualSpreadsheet 4.19 layout)\n"
            f"\tCalibration Factor: {self.cal_const}\n", encoding="utf-8")
        return listing

    def _write_csv(self) -> None:
        records = []
        for row, extra in zip(self.rows, self.extras, strict=True):
            canonical = {LST_NAMES.get(k, k): v for k, v in row.items()}
            area, esd = float(row["raw_filled_area"]), float(row["esd_diameter"])
            canonical.update({
                "aspect_ratio": float(row["raw_legendre_minor"]) / max(float(row["raw_legendre_major"]), 1e-9),
                "circularity": min(1.0, 4 * math.pi * area / max(float(row["raw_perimeter"]), 1e-9) ** 2),
                "transparency": 1 - float(row["abd_diameter"]) / max(esd, 1e-9),
                "convexity": convexity(float(row["raw_filled_area"]), float(row["raw_convex_hull_area"])),
                "volume_abd_um3": math.pi / 6 * float(row["abd_diameter"]) ** 3, "volume_esd_um3": math.pi / 6 * esd**3,
                "date": str(row["timestamp"])[:10], "time": str(row["timestamp"])[11:19],
            })  # fmt: skip
            canonical.update({k: v for k, v in extra.items() if k in _CSV_ONLY})  # the particle's own values
            records.append([_fmt(canonical.get(normalise_header(c), 0)) for c in CSV_COLUMNS])
        pd.DataFrame(records, columns=list(CSV_COLUMNS)).to_csv(self.folder / f"{self.name}.csv", index=False)

    def _write_cla(self, classification: str) -> None:
        classes = sorted({label for label in self.labels if label})
        lines = ["v3", "1", classification, str(len(classes))]
        for cls in classes:
            ids = [str(row["id"]) for row, label in zip(self.rows, self.labels, strict=True) if label == cls]
            lines += [cls, "OR", "1", f"C:\\fimvision\\filters\\{cls}.flt", str(len(ids)), *ids]
        (self.folder / f"{self.name}.cla").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _write_ctx(self) -> None:
        text = (f"[Software]\nSoftwareName=fimvision synthetic\nSoftwareVersion=4.19.3\nCameraMagnification=10\n"
                f"[General]\nRunStartTime={_START:%Y-%m-%d %H:%M:%S}\n"
                f"[Camera]\nCameraName=SYNTHETIC_RGB\nImageWidth={self.canvas[1]}\nImageHeight={self.canvas[0]}\n"
                f"[Fluid]\nFlowCellType=FC100\nCalibrationConstant={self.cal_const:.4f}\nFringeSize=4.5000\n"
                f"[CaptureRegion]\nSaveImageFiles=1\nSaveBinaryImageFiles=1\n")
        (self.folder / f"{self.name}.ctx").write_text(text, encoding="utf-8")


def _write_one(out_dir: str | Path, particles: Iterable[ParticleLike], name: str | None, *, library: bool,
               cal_const: float, overwrite: bool, progress: bool) -> Path:
    out = Path(out_dir).expanduser().resolve()
    run_name = name or out.name
    with OutputFolder(out, overwrite=overwrite) as tmp:
        writer = RunWriter(folder=tmp, name=run_name, cal_const=cal_const, library=library)
        what = "library" if library else "run"
        for particle in tqdm(particles, desc=f"{what} {run_name}", unit="particle", disable=tqdm_disable(progress)):
            writer.add(particle)
        if not writer.rows:
            raise CurationError("no particle to write", file=out)
        writer.finish()
    return out


def write_flowcam_run(out_dir: str | Path, particles: Iterable[ParticleLike], *, name: str | None = None,
                      cal_const: float = 0.5544, overwrite: bool = False, progress: bool = False) -> Path:
    """Write ``particles`` as one run export in ``out_dir`` (named ``name``, default the folder's name).

    Returns the run folder. The folder is written atomically and refused if it exists and is not
    empty, unless ``overwrite``.
    """
    return _write_one(out_dir, particles, name, library=False, cal_const=cal_const, overwrite=overwrite,
                      progress=progress)


def write_flowcam_library(out_dir: str | Path, particles: Iterable[ParticleLike], name: str | None = None, *,
                          cal_const: float = 0.5544, overwrite: bool = False, progress: bool = False) -> Path:
    """Write ``particles`` as a VisualSpreadsheet class library in ``out_dir``: ``NAME.flb`` (the .lst 017
    layout) and its collages ``NAME_lib_images_00000N.tif`` with masks ``..._bin.tif``.

    ``name`` defaults to the folder's name. Returns the folder (written atomically; an existing
    non-empty one is refused unless ``overwrite``). The particles' labels are not written: a
    library's class is its folder or file name.
    """
    return _write_one(out_dir, particles, name, library=True, cal_const=cal_const, overwrite=overwrite,
                      progress=progress)


def write_flowcam_runs(out_dir: str | Path, particles: Iterable[ParticleLike], *, per: str = "sample",
                       cal_const: float = 0.5544, overwrite: bool = False, progress: bool = True,
                       total: int | None = None) -> Path:
    """Write particles as one run export a ``sample`` (vial; the default) or a ``group`` (antibody).

    ``out_dir`` gets one folder a run plus ``runs.csv`` (``run``, ``group``, ``sample``), which
    ``tools/curate_flowcam.py --group-csv`` takes to restore the groups. With ``per='group'`` the
    run's sample is the group.
    """
    if per not in ("sample", "group"):
        raise CurationError(f"unknown run grouping '{per}'", hint="use sample or group")
    out = Path(out_dir).expanduser().resolve()
    writers: dict[str, RunWriter] = {}
    groups: dict[str, str] = {}
    current = None
    with OutputFolder(out, overwrite=overwrite) as tmp:
        for particle in tqdm(particles, desc="flowcam runs", unit="particle", disable=tqdm_disable(progress), total=total):
            group = str(getattr(particle, "group", "") or "")
            run = str(getattr(particle, per, "") or "run")
            if current is not None and run != current:
                writers[current].close_collage()  # one open collage at a time, however many runs
            current = run
            if run not in writers:
                (tmp / run).mkdir()
                writers[run] = RunWriter(folder=tmp / run, name=run, cal_const=cal_const)
                groups[run] = group
            writers[run].add(particle)
        if not writers:
            raise CurationError("no particle to write", file=out)
        for writer in writers.values():
            writer.finish()
        pd.DataFrame({"run": list(writers), "group": [groups[r] for r in writers],
                      "sample": list(writers)}).to_csv(tmp / "runs.csv", index=False)
    return out
