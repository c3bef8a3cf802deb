"""Particle shapes and looks per class: outlines, fibres and films in float pixel coordinates, and how each
class is drawn (opacity, rim, highlight, blur) under the nuisance shifts of its antibody and vial."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Nuisance:
    """Multiplicative/additive shifts shared by all particles of one antibody, class or vial."""

    size: float = 1.0
    darkness: float = 1.0
    opacity: float = 0.0
    blur: float = 0.0
    tint: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def compose(self, other: Nuisance) -> Nuisance:
        """Both shifts at once: factors multiply, offsets add."""
        return Nuisance(
            size=self.size * other.size,
            darkness=self.darkness * other.darkness,
            opacity=self.opacity + other.opacity,
            blur=self.blur + other.blur,
            tint=tuple(a + b for a, b in zip(self.tint, other.tint, strict=True)),
        )


@dataclass
class Shape:
    """A particle's geometry: filled polygons and thick polylines in float pixel coordinates."""

    polygons: list[np.ndarray] = field(default_factory=list)  # each (n, 2) closed, filled
    lines: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (points (n, 2), thickness)
    folds: list[np.ndarray] = field(default_factory=list)  # thin inner lines (film folds), not in the mask

    def points(self) -> np.ndarray:
        pts = [p for p in self.polygons] + [p for p, _ in self.lines]
        return np.concatenate(pts, axis=0)

    def transform(self, scale: float, offset: np.ndarray) -> Shape:
        return Shape(
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


def _heat_shape(rng: np.random.Generator, d: float) -> Shape:
    """Compact aggregate: a roundish core with a few overlapping lobes (granular, bumpy outline).

    About one in three is a looser, elongated cluster, overlapping with mechanical flakes.
    """
    loose = rng.random() < 0.3
    roughness = _uniform(rng, 0.12, 0.3) if loose else _uniform(rng, 0.03, 0.14)
    aspect = _uniform(rng, 1.4, 2.6) if loose else _uniform(rng, 1.0, 1.5)
    core = d / 2 * 0.85
    shape = Shape(polygons=[_blob(rng, core, roughness, 4, aspect)])
    spread = d * (0.3 if loose else 0.17)
    for _ in range(rng.poisson(min(1.0 + d / 12, 5.0))):
        radius = d / 2 * _uniform(rng, 0.3, 0.55)
        centre = rng.normal(0.0, spread, 2)
        # Lobes stay attached to the core: one particle, one connected mask.
        reach = 0.6 * core / math.sqrt(aspect) + radius
        centre *= min(1.0, reach / max(float(np.hypot(*centre)), 1e-9))
        shape.polygons.append(_circle(radius, centre))
    return shape


def _film_shape(rng: np.random.Generator, d: float) -> Shape:
    """Translucent film: large irregular outline, often elongated, with a few folds inside."""
    outline = _blob(rng, d / 2, _uniform(rng, 0.18, 0.4), 6, _uniform(rng, 1.2, 3.0))
    folds = []
    for _ in range(rng.integers(0, 3)):
        ends = outline[rng.integers(len(outline), size=2)] * _uniform(rng, 0.3, 0.7)
        bend = ends.mean(0) + rng.normal(0.0, d * 0.08, 2)
        folds.append(np.stack([ends[0], bend, ends[1]]))
    return Shape(polygons=[outline], folds=folds)


def _fibre_shape(rng: np.random.Generator, d: float) -> Shape:
    """Fibres: one to three smooth random walks from a common point, thin and long."""
    thickness = _clamp(d * _uniform(rng, 0.15, 0.3), 1.2, 6.0)
    length = d * d / thickness * _uniform(rng, 0.5, 0.9)  # area ~ length x thickness ~ d^2
    shape = Shape()
    n_fibres = int(rng.integers(1, 4))
    for _ in range(n_fibres):
        steps = 12
        heading = _uniform(rng, 0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.25, steps))
        step = length / n_fibres / steps
        path = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], axis=1) * step, axis=0)
        shape.lines.append((np.vstack([[0.0, 0.0], path]), thickness))
    return shape


def _flake_shape(rng: np.random.Generator, d: float) -> Shape:
    """Irregular flake, the mechanical shape closest to heat aggregates."""
    return Shape(polygons=[_blob(rng, d / 2, _uniform(rng, 0.03, 0.22), 5, _uniform(rng, 1.0, 1.6))])


def _round_shape(rng: np.random.Generator, d: float) -> Shape:
    """Droplet or bubble: nearly a perfect circle."""
    return Shape(polygons=[_blob(rng, d / 2, 0.01, 2, _uniform(rng, 1.0, 1.08))])


# ----------------------------------------------------------------------------------------------------------
# Appearance per class. Sizes are equivalent diameters in px (lognormal: most small, long tail).


@dataclass(frozen=True)
class Look:
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


def _design_heat(rng: np.random.Generator, nz: Nuisance) -> tuple[Shape, Look]:
    d = _diameter(rng, 9.0, 0.45, nz.size)
    look = Look(
        opacity=_clamp(_uniform(rng, 0.55, 0.9) + nz.opacity, 0.2, 0.97),
        body_rgb=tuple(_BODY_RGB / nz.darkness * _uniform(rng, 0.8, 1.15)),
        granular=_uniform(rng, 0.12, 0.3), smooth=0.0,
        rim=_uniform(rng, 0.1, 0.3), rim_width=max(1.0, d * 0.08), rim_soft=0.8,
        highlight=0.0, highlight_power=1.0,
        blur=_uniform(rng, 0.5, 1.5) + nz.blur,
    )  # fmt: skip
    return _heat_shape(rng, d), look


_MECHANICAL_KINDS = np.cumsum([0.4, 0.25])  # film 40 %, fibre 25 %, flake 35 %


def _design_mechanical(rng: np.random.Generator, nz: Nuisance) -> tuple[Shape, Look]:
    d = _diameter(rng, 14.0, 0.6, nz.size)
    kind = int(np.searchsorted(_MECHANICAL_KINDS, rng.random()))  # film, fibre or flake
    shape = (_film_shape, _fibre_shape, _flake_shape)[kind](rng, d)
    base = _uniform(rng, *((0.15, 0.4), (0.35, 0.7), (0.35, 0.75))[kind])
    look = Look(
        opacity=_clamp(base + nz.opacity, 0.08, 0.9),
        body_rgb=tuple(_BODY_RGB / nz.darkness * _uniform(rng, 0.9, 1.3)),
        granular=0.05, smooth=_uniform(rng, 0.1, 0.35),
        rim=_uniform(rng, 0.2, 0.45), rim_width=_uniform(rng, 0.8, 1.6), rim_soft=0.6,
        highlight=0.0, highlight_power=1.0,
        blur=_uniform(rng, 0.4, 1.4) + nz.blur,
    )  # fmt: skip
    return shape, look


def _design_silicone_oil(rng: np.random.Generator, nz: Nuisance) -> tuple[Shape, Look]:
    d = _diameter(rng, 10.0, 0.45, nz.size)
    look = Look(
        opacity=0.0, body_rgb=tuple(_BODY_RGB * 0.6), granular=0.0, smooth=0.0,
        rim=_uniform(rng, 0.75, 0.95), rim_width=max(0.8, d * _uniform(rng, 0.06, 0.1)), rim_soft=0.5,
        highlight=_uniform(rng, 30.0, 55.0), highlight_power=3.0, blur=_uniform(rng, 0.4, 1.0) + nz.blur,
    )  # fmt: skip
    return _round_shape(rng, d), look


def _design_air_bubble(rng: np.random.Generator, nz: Nuisance) -> tuple[Shape, Look]:
    d = _diameter(rng, 22.0, 0.5, nz.size)
    look = Look(
        opacity=0.0, body_rgb=tuple(_BODY_RGB * 0.5), granular=0.0, smooth=0.0,
        rim=_uniform(rng, 0.85, 1.0), rim_width=d * _uniform(rng, 0.12, 0.2), rim_soft=max(0.5, d * 0.02),
        highlight=_uniform(rng, 10.0, 25.0), highlight_power=1.5, blur=_uniform(rng, 0.5, 1.2) + nz.blur,
    )  # fmt: skip
    return _round_shape(rng, d), look


DESIGNERS = {
    "heat": _design_heat,
    "mechanical": _design_mechanical,
    "silicone_oil": _design_silicone_oil,
    "air_bubble": _design_air_bubble,
}
