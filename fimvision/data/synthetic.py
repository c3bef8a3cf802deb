"""Synthetic colour flow-imaging (FlowCam-like) particle data: the embedded default data set.

The generator draws subvisible protein particles of two stress sources (``heat``: compact, dark,
round, granular; ``mechanical``: larger, translucent, filmy or fibrous, irregular) and optionally
``silicone_oil`` droplets and ``air_bubble`` s, as FlowCam-like RGB tiles on a bluish background.
Class morphologies overlap, each antibody (``group``) carries its own nuisance (brightness, size,
background tint, class-specific shifts) and each vial (``sample``) a smaller one, so that a held-out
antibody is harder than a random split.

Colour cue: heat particles are shifted slightly towards red, mechanical ones towards blue, along
:data:`COLOUR_CUE_RGB`, a direction whose BT.601 luminance (0.299 R + 0.587 G + 0.114 B) is exactly
zero. A model on luminance (mono) images therefore cannot use it; a colour model can.

Every particle is a pure function of ``(config, index)``: its random numbers come from a numpy
Generator seeded by ``(seed, stream, index)``, so the output is byte-identical for a seed whatever
the number of worker processes.

The data are SYNTHETIC: the manifest's ``instrument`` column says ``synthetic-flowcam`` and the
folder holds a ``README.txt`` saying so.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import numbers
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "BACKGROUND_RGB",
    "COLOUR_CUE_RGB",
    "EXTRA_CLASSES",
    "INSTRUMENT",
    "KNOWN_CLASSES",
    "LUMA_BT601",
    "MANIFEST_COLUMNS",
    "STRESS_CLASSES",
    "SyntheticConfig",
    "SyntheticParticle",
    "iter_particles",
    "particle_count",
    "render_particle",
    "write_dataset",
]

INSTRUMENT = "synthetic-flowcam"
STRESS_CLASSES: tuple[str, ...] = ("heat", "mechanical")
EXTRA_CLASSES: tuple[str, ...] = ("silicone_oil", "air_bubble")
KNOWN_CLASSES: tuple[str, ...] = STRESS_CLASSES + EXTRA_CLASSES
BACKGROUND_RGB: tuple[int, int, int] = (157, 164, 230)
LUMA_BT601: tuple[float, float, float] = (0.299, 0.587, 0.114)
# Red up, blue down, green chosen so that 0.299*1 + 0.587*g + 0.114*(-1) == 0 (BT.601 luminance zero).
COLOUR_CUE_RGB: tuple[float, float, float] = (1.0, -(LUMA_BT601[0] - LUMA_BT601[2]) / LUMA_BT601[1], -1.0)
# Sign of the colour cue per class: heat reddish, mechanical bluish, the rest none.
_CUE_SIGN = {"heat": 1.0, "mechanical": -1.0}
MANIFEST_COLUMNS: tuple[str, ...] = (
    "image", "label", "group", "sample", "instrument", "particle_id",
    "esd_um", "circularity", "aspect_ratio", "mean_intensity", "area_px",
)  # fmt: skip

# Independent random streams, so adding draws to one never shifts another.
_STREAM_PARTICLE, _STREAM_ANTIBODY, _STREAM_GROUP_CLASS, _STREAM_VIAL_SIZES, _STREAM_VIAL = range(5)
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
_LUMA = np.asarray(LUMA_BT601, np.float32)
_CHUNK = 64  # particles a worker task: small enough for a smooth progress bar, large enough to amortise IPC


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic data set; the total is ``antibodies x len(classes + extra_classes) x per_class``.

    Attributes:
        antibodies: number of antibodies (products), the ``group`` column (``ab1`` ... ``abN``).
        per_class: particles per class per antibody.
        classes: the stress-source classes (a subset of ``heat``, ``mechanical``).
        extra_classes: further classes (``silicone_oil``, ``air_bubble``).
        seed: non-negative seed; the same seed gives byte-identical data.
        particles_per_vial: mean particles a vial (``sample``); each class of each antibody gets at
            least two vials when ``per_class >= 2``.
        um_per_px: pixel size used for ``esd_um`` (FlowCam 10x: 0.5544 um/px).
        border_px: background margin around the particle's bounding box.
        min_tile, max_tile: limits of a tile side in pixels.
        colour_cue: strength of the luminance-free colour cue, in 8-bit levels of red (0 turns it off).
        noise_sigma: per-pixel sensor noise (8-bit levels).
        background_rgb: mean tile background before the per-antibody tint (FlowCam colour camera).
    """

    antibodies: int = 8
    per_class: int = 1000
    classes: tuple[str, ...] = STRESS_CLASSES
    extra_classes: tuple[str, ...] = ()
    seed: int = 0
    particles_per_vial: int = 200
    um_per_px: float = 0.5544
    border_px: int = 5
    min_tile: int = 10
    max_tile: int = 150
    colour_cue: float = 3.0
    noise_sigma: float = 2.5
    background_rgb: tuple[int, int, int] = field(default=BACKGROUND_RGB)

    def __post_init__(self) -> None:
        for name in (
            "antibodies",
            "per_class",
            "seed",
            "particles_per_vial",
            "border_px",
            "min_tile",
            "max_tile",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"SyntheticConfig.{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        # Lists from YAML/CLI become tuples so the config stays hashable (it keys a cache).
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "extra_classes", tuple(self.extra_classes))
        object.__setattr__(self, "background_rgb", tuple(int(v) for v in self.background_rgb))
        self._validate()

    def _validate(self) -> None:
        if self.antibodies < 1:
            raise ValueError(f"SyntheticConfig.antibodies must be >= 1, got {self.antibodies}")
        if self.per_class < 1:
            raise ValueError(f"SyntheticConfig.per_class must be >= 1, got {self.per_class}")
        if self.seed < 0:
            raise ValueError(f"SyntheticConfig.seed must be >= 0, got {self.seed}")
        if self.particles_per_vial < 1:
            raise ValueError(
                f"SyntheticConfig.particles_per_vial must be >= 1, got {self.particles_per_vial}"
            )
        if self.um_per_px <= 0:
            raise ValueError(f"SyntheticConfig.um_per_px must be > 0, got {self.um_per_px}")
        if (
            self.border_px < 0
            or not 1 <= self.min_tile <= self.max_tile
            or 2 * self.border_px + 4 > self.max_tile
        ):
            raise ValueError(
                "SyntheticConfig needs border_px >= 0, 1 <= min_tile <= max_tile and max_tile >= 2*border_px + 4, got "
                f"border_px={self.border_px}, min_tile={self.min_tile}, max_tile={self.max_tile}"
            )
        unknown = [c for c in self.classes if c not in STRESS_CLASSES]
        if unknown:
            raise ValueError(
                f"unknown class(es) {unknown} in SyntheticConfig.classes; known: {list(STRESS_CLASSES)}"
            )
        unknown = [c for c in self.extra_classes if c not in EXTRA_CLASSES]
        if unknown:
            raise ValueError(
                f"unknown extra class(es) {unknown} in SyntheticConfig.extra_classes; known: {list(EXTRA_CLASSES)}"
            )
        names = self.all_classes
        if not names:
            raise ValueError("SyntheticConfig needs at least one class")
        if len(set(names)) != len(names):
            raise ValueError(f"SyntheticConfig classes repeat: {list(names)}")

    @property
    def all_classes(self) -> tuple[str, ...]:
        """Every label in generation order: ``classes`` then ``extra_classes``."""
        return self.classes + self.extra_classes


@dataclass
class SyntheticParticle:
    """One rendered particle: the RGB tile (background and border included), its mask and metadata."""

    image: np.ndarray  # uint8 H x W x 3, RGB
    mask: np.ndarray  # bool H x W, True on the particle
    label: str
    group: str
    sample: str
    particle_id: int
    features: dict[str, float]


@dataclass(frozen=True)
class _Nuisance:
    """Multiplicative/additive shifts shared by all particles of one antibody, class or vial."""

    size: float = 1.0
    darkness: float = 1.0
    opacity: float = 0.0
    blur: float = 0.0
    tint: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def compose(self, other: _Nuisance) -> _Nuisance:
        """Both shifts at once: factors multiply, offsets add."""
        return _Nuisance(
            size=self.size * other.size,
            darkness=self.darkness * other.darkness,
            opacity=self.opacity + other.opacity,
            blur=self.blur + other.blur,
            tint=tuple(a + b for a, b in zip(self.tint, other.tint, strict=True)),
        )


def _rng(config: SyntheticConfig, stream: int, *key: int) -> np.random.Generator:
    """A Generator that depends only on the seed, the stream and the key (order-free, worker-free)."""
    return np.random.default_rng([config.seed, stream, *key])


def _draw_nuisance(rng: np.random.Generator, scale: float, tint: float) -> _Nuisance:
    """Random shifts: ``scale`` sizes the particle ones, ``tint`` the background's (8-bit levels, std)."""
    return _Nuisance(
        size=float(np.exp(rng.normal(0.0, 0.18 * scale))),
        darkness=float(np.exp(rng.normal(0.0, 0.12 * scale))),
        opacity=float(rng.normal(0.0, 0.07 * scale)),
        blur=float(rng.normal(0.0, 0.25 * scale)),
        tint=tuple(float(v) for v in rng.normal(0.0, tint, 3)),
    )


def _vial_sizes(config: SyntheticConfig, antibody: int, cls: int) -> np.ndarray:
    """Particles per vial for one class of one antibody: unequal, each >= 1, summing to ``per_class``."""
    n = config.per_class
    n_vials = min(n, max(2, round(n / config.particles_per_vial)))
    weights = _rng(config, _STREAM_VIAL_SIZES, antibody, cls).uniform(0.7, 1.2, n_vials)
    share = weights / weights.sum() * (n - n_vials)
    sizes = 1 + np.floor(share).astype(np.int64)
    leftover = n - int(sizes.sum())
    sizes[np.argsort(-(share - np.floor(share)), kind="stable")[:leftover]] += 1
    return sizes


@dataclass(frozen=True)
class _Layout:
    """Per (antibody, class) bookkeeping derived from the config: vial bounds and nuisances."""

    vial_ends: tuple[tuple[np.ndarray, ...], ...]  # [antibody][class] -> cumulative vial sizes
    nuisance: tuple[tuple[_Nuisance, ...], ...]  # [antibody][class] -> antibody + class nuisance


@lru_cache(maxsize=16)
def _layout(config: SyntheticConfig) -> _Layout:
    n_cls = len(config.all_classes)
    vial_ends, nuisance = [], []
    for a in range(config.antibodies):
        antibody = _draw_nuisance(_rng(config, _STREAM_ANTIBODY, a), 1.0, tint=5.0)
        # Class-specific particle shifts per antibody move the class boundary between antibodies; no
        # class-specific background tint, which would be a shortcut within an antibody.
        nuisance.append(
            tuple(
                antibody.compose(_draw_nuisance(_rng(config, _STREAM_GROUP_CLASS, a, c), 0.7, tint=0.0))
                for c in range(n_cls)
            )
        )
        vial_ends.append(tuple(np.cumsum(_vial_sizes(config, a, c)) for c in range(n_cls)))
    return _Layout(vial_ends=tuple(vial_ends), nuisance=tuple(nuisance))


@lru_cache(maxsize=4096)
def _nuisance(config: SyntheticConfig, antibody: int, cls: int, vial: int) -> _Nuisance:
    """Everything shared by a vial's particles: antibody, antibody-class and (smaller) vial shifts."""
    # Vials are imaged in separate runs: a small background shift each, as on a real instrument.
    vial_nz = _draw_nuisance(_rng(config, _STREAM_VIAL, antibody, cls, vial), 0.3, tint=1.5)
    return _layout(config).nuisance[antibody][cls].compose(vial_nz)


def particle_count(config: SyntheticConfig) -> int:
    """Number of particles the config generates."""
    return config.antibodies * len(config.all_classes) * config.per_class


def _locate(config: SyntheticConfig, index: int) -> tuple[int, int, int]:
    """(antibody, class, vial) of a particle index; particles are ordered antibody, class, vial."""
    if not 0 <= index < particle_count(config):
        raise IndexError(f"particle index {index} out of range [0, {particle_count(config)})")
    antibody, rest = divmod(index, len(config.all_classes) * config.per_class)
    cls, k = divmod(rest, config.per_class)
    vial = int(np.searchsorted(_layout(config).vial_ends[antibody][cls], k, side="right"))
    return antibody, cls, vial


# ----------------------------------------------------------------------------------------------------------
# Geometry: each shape is a list of polygons and thick polylines in float pixel coordinates.


@dataclass
class _Shape:
    polygons: list[np.ndarray] = field(default_factory=list)  # each (n, 2) closed, filled
    lines: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (points (n, 2), thickness)
    folds: list[np.ndarray] = field(default_factory=list)  # thin inner lines (film folds), not in the mask

    def points(self) -> np.ndarray:
        pts = [p for p in self.polygons] + [p for p, _ in self.lines]
        return np.concatenate(pts, axis=0)

    def transform(self, scale: float, offset: np.ndarray) -> _Shape:
        return _Shape(
            polygons=[p * scale + offset for p in self.polygons],
            lines=[(p * scale + offset, t * scale) for p, t in self.lines],
            folds=[p * scale + offset for p in self.folds],
        )

    def half_width(self) -> float:
        return max((t for _, t in self.lines), default=0.0) / 2


_N_VERTICES = 48
_MAX_HARMONIC = 8
_THETA = np.linspace(0.0, 2 * np.pi, _N_VERTICES, endpoint=False)
_K = np.arange(2, _MAX_HARMONIC + 1)
# Rows cos(k theta) then -sin(k theta) for k = 2.._MAX_HARMONIC, scaled 1/sqrt(k-1) (rougher at low k);
# precomputed because an outline is drawn for every particle.
_HARMONICS = np.concatenate([np.cos(_K[:, None] * _THETA), -np.sin(_K[:, None] * _THETA)]) / np.sqrt(
    np.concatenate([_K, _K])[:, None] - 1
)
_UNIT_CIRCLE = np.stack([np.cos(_THETA), np.sin(_THETA)], axis=1)


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One uniform draw; ``rng.uniform`` costs ten times more for a scalar."""
    return lo + (hi - lo) * rng.random()


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, float(value)))


def _blob(
    rng: np.random.Generator, radius: float, roughness: float, harmonics: int, aspect: float
) -> np.ndarray:
    """A closed outline around the origin: a circle with random Fourier wobble, stretched and rotated."""
    n = _MAX_HARMONIC - 1
    coefficients = np.zeros(2 * n)
    # Gaussian cosine and sine parts (random amplitude and phase), each of variance roughness^2 / 2.
    parts = rng.standard_normal(2 * harmonics) * (roughness / math.sqrt(2.0))
    coefficients[:harmonics], coefficients[n : n + harmonics] = parts[:harmonics], parts[harmonics:]
    r = radius * np.clip(1.0 + coefficients @ _HARMONICS, 0.3, 2.0)
    angle = _uniform(rng, 0, np.pi)
    c, s, stretch = math.cos(angle), math.sin(angle), math.sqrt(aspect)
    transform = np.array([[stretch * c, stretch * s], [-s / stretch, c / stretch]])  # stretch x, then rotate
    return (_UNIT_CIRCLE * r[:, None]) @ transform


def _circle(radius: float, centre: np.ndarray) -> np.ndarray:
    return _UNIT_CIRCLE * radius + centre


def _heat_shape(rng: np.random.Generator, d: float) -> _Shape:
    """Compact aggregate: a roundish core with a few overlapping lobes (granular, bumpy outline).

    About one in three is a looser, elongated cluster, overlapping with mechanical flakes.
    """
    loose = rng.random() < 0.3
    roughness = _uniform(rng, 0.12, 0.3) if loose else _uniform(rng, 0.03, 0.14)
    aspect = _uniform(rng, 1.4, 2.6) if loose else _uniform(rng, 1.0, 1.5)
    core = d / 2 * 0.85
    shape = _Shape(polygons=[_blob(rng, core, roughness, 4, aspect)])
    spread = d * (0.3 if loose else 0.17)
    for _ in range(rng.poisson(min(1.0 + d / 12, 5.0))):
        radius = d / 2 * _uniform(rng, 0.3, 0.55)
        centre = rng.normal(0.0, spread, 2)
        # Lobes stay attached to the core: one particle, one connected mask.
        reach = 0.6 * core / math.sqrt(aspect) + radius
        centre *= min(1.0, reach / max(float(np.hypot(*centre)), 1e-9))
        shape.polygons.append(_circle(radius, centre))
    return shape


def _film_shape(rng: np.random.Generator, d: float) -> _Shape:
    """Translucent film: large irregular outline, often elongated, with a few folds inside."""
    outline = _blob(rng, d / 2, _uniform(rng, 0.18, 0.4), 6, _uniform(rng, 1.2, 3.0))
    folds = []
    for _ in range(rng.integers(0, 3)):
        ends = outline[rng.integers(len(outline), size=2)] * _uniform(rng, 0.3, 0.7)
        bend = ends.mean(0) + rng.normal(0.0, d * 0.08, 2)
        folds.append(np.stack([ends[0], bend, ends[1]]))
    return _Shape(polygons=[outline], folds=folds)


def _fibre_shape(rng: np.random.Generator, d: float) -> _Shape:
    """Fibres: one to three smooth random walks from a common point, thin and long."""
    thickness = _clamp(d * _uniform(rng, 0.15, 0.3), 1.2, 6.0)
    length = d * d / thickness * _uniform(rng, 0.5, 0.9)  # area ~ length x thickness ~ d^2
    shape = _Shape()
    n_fibres = int(rng.integers(1, 4))
    for _ in range(n_fibres):
        steps = 12
        heading = _uniform(rng, 0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.25, steps))
        step = length / n_fibres / steps
        path = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], axis=1) * step, axis=0)
        shape.lines.append((np.vstack([[0.0, 0.0], path]), thickness))
    return shape


def _flake_shape(rng: np.random.Generator, d: float) -> _Shape:
    """Irregular flake, the mechanical shape closest to heat aggregates."""
    return _Shape(polygons=[_blob(rng, d / 2, _uniform(rng, 0.03, 0.22), 5, _uniform(rng, 1.0, 1.6))])


def _round_shape(rng: np.random.Generator, d: float) -> _Shape:
    """Droplet or bubble: nearly a perfect circle."""
    return _Shape(polygons=[_blob(rng, d / 2, 0.01, 2, _uniform(rng, 1.0, 1.08))])


# ----------------------------------------------------------------------------------------------------------
# Appearance per class. Sizes are equivalent diameters in px (lognormal: most small, long tail).


@dataclass(frozen=True)
class _Look:
    """How a particle is drawn once its shape is fixed."""

    opacity: float  # body opacity (1: opaque)
    body_rgb: tuple[float, float, float]  # colour of an opaque body
    granular: float  # amplitude of fine texture in opacity
    smooth: float  # amplitude of coarse texture in opacity
    rim: float  # opacity added at the edge (refraction darkens outlines; droplets and bubbles are rings)
    rim_width: float  # px, width of the dark edge band
    rim_soft: float  # px, softness of the band's inner edge
    highlight: float  # brightness added at the centre (lens effect), 8-bit levels
    highlight_power: float  # higher: a smaller bright spot
    blur: float  # Gaussian defocus sigma, px


_BODY_RGB = np.array([62.0, 58.0, 78.0])  # dark, slightly bluish-grey like protein on this camera


def _diameter(rng: np.random.Generator, median: float, sigma: float, size: float) -> float:
    return _clamp(median * size * math.exp(rng.normal(0.0, sigma)), 2.5, 130.0)


def _design_heat(rng: np.random.Generator, nz: _Nuisance) -> tuple[_Shape, _Look]:
    d = _diameter(rng, 9.0, 0.45, nz.size)
    look = _Look(
        opacity=_clamp(_uniform(rng, 0.55, 0.9) + nz.opacity, 0.2, 0.97),
        body_rgb=tuple(_BODY_RGB / nz.darkness * _uniform(rng, 0.8, 1.15)),
        granular=_uniform(rng, 0.12, 0.3), smooth=0.0,
        rim=_uniform(rng, 0.1, 0.3), rim_width=max(1.0, d * 0.08), rim_soft=0.8,
        highlight=0.0, highlight_power=1.0,
        blur=_uniform(rng, 0.5, 1.5) + nz.blur,
    )  # fmt: skip
    return _heat_shape(rng, d), look


_MECHANICAL_KINDS = np.cumsum([0.4, 0.25])  # film 40 %, fibre 25 %, flake 35 %


def _design_mechanical(rng: np.random.Generator, nz: _Nuisance) -> tuple[_Shape, _Look]:
    d = _diameter(rng, 14.0, 0.6, nz.size)
    kind = int(np.searchsorted(_MECHANICAL_KINDS, rng.random()))  # film, fibre or flake
    shape = (_film_shape, _fibre_shape, _flake_shape)[kind](rng, d)
    base = _uniform(rng, *((0.15, 0.4), (0.35, 0.7), (0.35, 0.75))[kind])
    look = _Look(
        opacity=_clamp(base + nz.opacity, 0.08, 0.9),
        body_rgb=tuple(_BODY_RGB / nz.darkness * _uniform(rng, 0.9, 1.3)),
        granular=0.05, smooth=_uniform(rng, 0.1, 0.35),
        rim=_uniform(rng, 0.2, 0.45), rim_width=_uniform(rng, 0.8, 1.6), rim_soft=0.6,
        highlight=0.0, highlight_power=1.0,
        blur=_uniform(rng, 0.4, 1.4) + nz.blur,
    )  # fmt: skip
    return shape, look


def _design_silicone_oil(rng: np.random.Generator, nz: _Nuisance) -> tuple[_Shape, _Look]:
    d = _diameter(rng, 10.0, 0.45, nz.size)
    look = _Look(
        opacity=0.0, body_rgb=tuple(_BODY_RGB * 0.6), granular=0.0, smooth=0.0,
        rim=_uniform(rng, 0.75, 0.95), rim_width=max(0.8, d * _uniform(rng, 0.06, 0.1)), rim_soft=0.5,
        highlight=_uniform(rng, 30.0, 55.0), highlight_power=3.0, blur=_uniform(rng, 0.4, 1.0) + nz.blur,
    )  # fmt: skip
    return _round_shape(rng, d), look


def _design_air_bubble(rng: np.random.Generator, nz: _Nuisance) -> tuple[_Shape, _Look]:
    d = _diameter(rng, 22.0, 0.5, nz.size)
    look = _Look(
        opacity=0.0, body_rgb=tuple(_BODY_RGB * 0.5), granular=0.0, smooth=0.0,
        rim=_uniform(rng, 0.85, 1.0), rim_width=d * _uniform(rng, 0.12, 0.2), rim_soft=max(0.5, d * 0.02),
        highlight=_uniform(rng, 10.0, 25.0), highlight_power=1.5, blur=_uniform(rng, 0.5, 1.2) + nz.blur,
    )  # fmt: skip
    return _round_shape(rng, d), look


_DESIGNERS = {
    "heat": _design_heat,
    "mechanical": _design_mechanical,
    "silicone_oil": _design_silicone_oil,
    "air_bubble": _design_air_bubble,
}


# ----------------------------------------------------------------------------------------------------------
# Rendering.

_AA_SHIFT = 4  # cv2 sub-pixel bits: smooth outlines for small particles


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _AA_SHIFT)).astype(np.int32)


def _rasterise(shape: _Shape, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Anti-aliased coverage (float32 0-1) of the shape and of its folds (None: no folds) on an (h, w) canvas."""
    cover = np.zeros(size, np.uint8)
    for polygon in shape.polygons:  # one call each: a single call fills overlaps even-odd (holes)
        cv2.fillPoly(cover, [_fixed(polygon)], 255, cv2.LINE_AA, _AA_SHIFT)
    for pts, thickness in shape.lines:
        cv2.polylines(cover, [_fixed(pts)], False, 255, max(1, round(thickness)), cv2.LINE_AA, _AA_SHIFT)
    if not shape.folds:
        return cover.astype(np.float32) / 255.0, None
    folds = np.zeros(size, np.uint8)
    cv2.polylines(folds, [_fixed(pts) for pts in shape.folds], False, 255, 1, cv2.LINE_AA, _AA_SHIFT)
    return cover.astype(np.float32) / 255.0, folds.astype(np.float32) / 255.0


def _place(shape: _Shape, config: SyntheticConfig) -> tuple[_Shape, tuple[int, int]]:
    """Scale the shape into the tile limits and move it onto a canvas with room for the border."""
    pts = shape.points()
    pad = shape.half_width() + 1.0
    lo, hi = pts.min(0) - pad, pts.max(0) + pad
    extent = float((hi - lo).max())
    limit = config.max_tile - 2 * config.border_px - 2
    scale = min(1.0, limit / extent)
    margin = config.border_px + 3  # room for anti-aliasing and blur beyond the border
    placed = shape.transform(scale, -lo * scale + margin)
    w, h = np.ceil((hi - lo) * scale).astype(int) + 2 * margin
    return placed, (int(h), int(w))


def _noise_field(rng: np.random.Generator, size: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, roughly unit-variance Gaussian-smoothed noise."""
    field_ = rng.standard_normal(size, dtype=np.float32)
    if sigma > 0:
        field_ = cv2.GaussianBlur(field_, (0, 0), sigma)
        field_ *= np.float32(np.sqrt(4 * np.pi) * sigma)  # undo the variance loss of the blur
    return field_


def _opacity(rng: np.random.Generator, cover: np.ndarray, folds: np.ndarray | None, mask: np.ndarray,
             look: _Look, d_px: float) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """Per-pixel opacity of the particle and its centre highlight in 8-bit levels (None: no highlight)."""
    inside = cv2.distanceTransform(mask.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    # Logistic band: rim inside rim_width of the edge, fading over rim_soft (capped: no exp overflow).
    alpha = look.rim / (1.0 + np.exp(np.minimum((inside - look.rim_width) / look.rim_soft, 30.0)))
    if look.opacity > 0:  # body opacity with texture: opacity * (1 + granular * fine + smooth * coarse)
        alpha += look.opacity + (look.opacity * look.granular) * _noise_field(rng, cover.shape, 0.7)
        if look.smooth > 0:
            alpha += (look.opacity * look.smooth) * _noise_field(rng, cover.shape, max(1.0, d_px / 5))
    if folds is not None:
        alpha += 0.3 * folds
    alpha = np.clip(alpha, 0.0, 1.0) * cover
    if look.highlight <= 0:
        return alpha, None
    centre = (inside / max(float(inside.max()), 1.0)) ** look.highlight_power
    return alpha, look.highlight * centre * cover


def _measure(image: np.ndarray, mask: np.ndarray, um_per_px: float) -> dict[str, float]:
    """FlowCam-style features of a particle from its mask and RGB tile."""
    area = float(np.count_nonzero(mask))
    contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    # The contour runs through boundary pixel centres, half a pixel inside the outline: + pi (per
    # contour) restores the outline's length, so a rasterised disc scores ~0.9 whatever its size.
    perimeter = sum(cv2.arcLength(c, True) + np.pi for c in contours)
    circularity = min(1.0, 4 * np.pi * area / perimeter**2)
    (_, _), (w, h), _ = cv2.minAreaRect(contours[0] if len(contours) == 1 else np.concatenate(contours))
    aspect = min(w, h) / max(w, h) if max(w, h) > 0 else 1.0
    grey = image[mask].astype(np.float32) @ _LUMA
    return {
        "esd_um": 2.0 * math.sqrt(area / math.pi) * um_per_px,  # area-equivalent diameter
        "circularity": float(circularity),
        "aspect_ratio": float(aspect),  # width / length of the minimum-area rectangle, as FlowCam
        "mean_intensity": float(grey.mean()),
        "area_px": area,
    }


def _crop_box(mask: np.ndarray, config: SyntheticConfig) -> tuple[slice, slice]:
    """Bounding box of the mask plus the border, grown to ``min_tile`` around its centre."""
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    box = []
    for lo, hi, size in ((y, y + h, mask.shape[0]), (x, x + w, mask.shape[1])):
        lo, hi = lo - config.border_px, hi + config.border_px
        grow = max(0, config.min_tile - (hi - lo))
        lo, hi = lo - grow // 2, hi + grow - grow // 2
        box.append(slice(max(0, lo), min(size, hi)))
    return box[0], box[1]


def _ensure_room(
    shape: _Shape, size: tuple[int, int], config: SyntheticConfig
) -> tuple[_Shape, tuple[int, int]]:
    """Enlarge the canvas around the shape so a ``min_tile`` crop fits."""
    grow = [max(0, config.min_tile + 4 - s) for s in size]
    if not any(grow):
        return shape, size
    offset = np.array([grow[1] // 2, grow[0] // 2], float)
    return shape.transform(1.0, offset), (size[0] + grow[0], size[1] + grow[1])


def render_particle(config: SyntheticConfig, index: int) -> SyntheticParticle:
    """Render particle ``index`` (0 <= index < particle_count(config)); a pure function of (config, index)."""
    antibody, cls, vial = _locate(config, index)
    label = config.all_classes[cls]
    nuisance = _nuisance(config, antibody, cls, vial)
    rng = _rng(config, _STREAM_PARTICLE, index)

    shape, look = _DESIGNERS[label](rng, nuisance)
    shape, size = _ensure_room(*_place(shape, config), config)
    cover, folds = _rasterise(shape, size)
    mask = cover >= 0.5
    if not mask.any():  # a sub-pixel particle: keep whatever it touches
        mask = cover > 0
    d_px = 2.0 * math.sqrt(mask.sum() / math.pi)
    alpha, glow = _opacity(rng, cover, folds, mask, look, d_px)

    background = np.asarray(config.background_rgb, np.float32) + np.asarray(nuisance.tint, np.float32)
    background += rng.normal(0.0, 1.5, 3).astype(np.float32)  # flat-field drift between frames
    # The tile is linear in a few weight maps, each with its RGB colour: background, mixed towards the
    # body colour by the opacity, plus the colour cue on the particle, plus the centre highlight.
    maps = [alpha, cover]
    colours = [np.asarray(look.body_rgb, np.float32) - background, _colour_cue(rng, config, label)]
    if glow is not None:
        maps.append(glow)
        colours.append(np.ones(3, np.float32))
    weights = cv2.GaussianBlur(cv2.merge(maps), (0, 0), max(0.3, look.blur))  # defocus: blur is linear too

    rows, cols = _crop_box(mask, config)
    weights, mask = weights[rows, cols], np.ascontiguousarray(mask[rows, cols])
    # einsum, not @: its plain loops give the same bytes whatever BLAS and thread count are in use.
    image = np.einsum("hwk,kc->hwc", weights, np.stack(colours)) + background
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(config.noise_sigma)
    tile = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return SyntheticParticle(
        image=tile,
        mask=mask,
        label=label,
        group=_group_name(antibody),
        sample=f"{_group_name(antibody)}-{label}-v{vial + 1}",
        particle_id=index,
        features=_measure(tile, mask, config.um_per_px),
    )


def _colour_cue(rng: np.random.Generator, config: SyntheticConfig, label: str) -> np.ndarray:
    """RGB offset of the particle along :data:`COLOUR_CUE_RGB`; class sign plus per-particle jitter.

    The jitter (1.25x the class offset) keeps the cue weak: on its own it separates heat from
    mechanical only partly. Its BT.601 luminance is zero by construction of the direction.
    """
    jitter = rng.normal(0.0, 1.25)  # always drawn, so the cue strength never shifts other draws
    sign = _CUE_SIGN.get(label)
    coefficient = 0.0 if sign is None else config.colour_cue * (sign + jitter)
    return np.asarray(COLOUR_CUE_RGB, np.float32) * np.float32(coefficient)


def _group_name(antibody: int) -> str:
    return f"ab{antibody + 1}"


def iter_particles(config: SyntheticConfig) -> Iterator[SyntheticParticle]:
    """All particles of the config in index order (antibody, class, vial)."""
    for index in range(particle_count(config)):
        yield render_particle(config, index)


# ----------------------------------------------------------------------------------------------------------
# Writing a data set folder.


def _image_path(particle: SyntheticParticle, width: int) -> str:
    return f"images/{particle.group}/{particle.label}/{particle.particle_id:0{width}d}.png"


def _manifest_row(particle: SyntheticParticle, image: str) -> list[str]:
    f = particle.features
    return [
        image, particle.label, particle.group, particle.sample, INSTRUMENT, str(particle.particle_id),
        f"{f['esd_um']:.4f}", f"{f['circularity']:.4f}", f"{f['aspect_ratio']:.4f}",
        f"{f['mean_intensity']:.3f}", f"{int(f['area_px'])}",
    ]  # fmt: skip


def _write_chunk(args: tuple[SyntheticConfig, str, Sequence[int]]) -> list[list[str]]:
    """Render and save the particles ``indices`` under ``root``; return their manifest rows."""
    config, root, indices = args
    width = max(6, len(str(particle_count(config) - 1)))
    rows = []
    for index in indices:
        particle = render_particle(config, index)
        rel = _image_path(particle, width)
        path = os.path.join(root, rel)  # its folder exists: write_dataset makes them all first
        if not cv2.imwrite(path, particle.image[..., ::-1], _PNG_PARAMS):  # cv2 wants BGR
            raise OSError(f"could not write image {path}")
        rows.append(_manifest_row(particle, rel))
    return rows


def _init_worker() -> None:
    cv2.setNumThreads(1)  # tiles are tiny: OpenCV's own threads only add contention between workers


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def _rows(config: SyntheticConfig, root: Path, workers: int) -> Iterator[list[list[str]]]:
    """Manifest rows chunk by chunk, in index order, rendered in ``workers`` processes."""
    tasks = ((config, str(root), chunk) for chunk in _chunks(particle_count(config), _CHUNK))
    if workers <= 1:
        yield from map(_write_chunk, tasks)
        return
    # spawn: safe when the caller holds threads (torch, Lightning); costs ~0.5 s of start-up.
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap(_write_chunk, tasks)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("fimvision")
    except Exception:  # not installed (run from a source tree)
        return "unknown"


def _readme(config: SyntheticConfig, counts: dict[str, int]) -> str:
    """Text of README.txt: what the folder is (SYNTHETIC), how it was made, how to reproduce it."""
    lines = [
        "SYNTHETIC DATA - not real measurements.",
        "",
        f"Synthetic colour flow-imaging (FlowCam-like) particle images generated by fimvision {_version()}",
        "(fimvision.data.synthetic). Every image in this folder is drawn by a program; no instrument,",
        f"antibody or vial was involved. The manifest's instrument column reads '{INSTRUMENT}'.",
        "",
        "Layout: manifest.csv (columns: " + ", ".join(MANIFEST_COLUMNS) + ")",
        f"        images/<group>/<label>/<particle_id>.png (RGB tiles, background and {config.border_px} px border"
        " included)",
        "",
        "Particles per class: "
        + ", ".join(f"{k}={v}" for k, v in counts.items())
        + f" (total {sum(counts.values())})",
        "",
        "Colour cue: heat particles are shifted towards red and mechanical ones towards blue along",
        f"RGB direction {tuple(round(v, 6) for v in COLOUR_CUE_RGB)}, whose BT.601 luminance",
        "(0.299 R + 0.587 G + 0.114 B) is zero: a model on luminance (mono) images cannot use it.",
        "",
        "Generator parameters (SyntheticConfig):",
        json.dumps(asdict(config), indent=2),
        "",
        "Reproduce: python tools/make_synthetic.py --out DIR "
        f"--antibodies {config.antibodies} --per-class {config.per_class} --seed {config.seed} "
        f"--particles-per-vial {config.particles_per_vial}"
        + (f" --extra-classes {' '.join(config.extra_classes)}" if config.extra_classes else "")
        + " (other parameters: fimvision.data.synthetic.SyntheticConfig, as above)",
        "",
    ]
    return "\n".join(lines)


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it"
        )


def _sibling(out_dir: Path, tag: str) -> Path:
    """A new hidden folder next to ``out_dir`` (same file system, so renames are atomic)."""
    while True:
        path = out_dir.parent / f".{out_dir.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir()  # unlike mkdtemp, keeps the user's umask permissions
            return path
        except FileExistsError:
            continue


def _replace(tmp: Path, out_dir: Path) -> None:
    """Move the finished folder into place; an old folder is removed only after the new one is there."""
    old = None
    if out_dir.exists():
        old = _sibling(out_dir, "old")
        os.replace(out_dir, old / "data")
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        if old is not None:  # put the old data back
            os.replace(old / "data", out_dir)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_dataset(
    out_dir: str | os.PathLike[str],
    config: SyntheticConfig,
    *,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write the synthetic data set (``manifest.csv``, ``images/``, ``README.txt``) to ``out_dir``.

    The folder is built as a hidden temporary sibling and renamed into place at the end, so an
    interrupted run leaves nothing half-written. An existing non-empty ``out_dir`` is refused
    (:class:`FileExistsError`) unless ``overwrite``. Returns the folder.
    """
    from tqdm import tqdm  # here, not at the top: worker processes import this module and need no bar

    out_dir = Path(out_dir).expanduser().resolve()
    _check_target(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out_dir, "tmp")
    try:
        counts = dict.fromkeys(config.all_classes, 0)
        for antibody in range(config.antibodies):
            for label in config.all_classes:
                (tmp / "images" / _group_name(antibody) / label).mkdir(parents=True)
        with (
            open(tmp / "manifest.csv", "w", newline="", encoding="utf-8") as fh,
            tqdm(
                total=particle_count(config),
                desc="synthetic particles",
                unit="particle",
                disable=not progress,
            ) as bar,
        ):
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            for rows in _rows(config, tmp, max(1, int(workers))):
                writer.writerows(rows)
                for row in rows:
                    counts[row[1]] += 1
                bar.update(len(rows))
        (tmp / "README.txt").write_text(_readme(config, counts), encoding="utf-8")
        _replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
