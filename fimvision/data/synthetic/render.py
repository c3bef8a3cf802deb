"""Rendering a particle tile: which antibody, class and vial an index is, the nuisance shifts they share,
then the shape rasterised, shaded, blurred and measured. Every particle is a pure function of
``(config, index)``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from fimvision.data.synthetic.config import COLOUR_CUE_RGB, SyntheticConfig, particle_count
from fimvision.data.synthetic.measure import measure_particle
from fimvision.data.synthetic.shapes import DESIGNERS, Look, Nuisance, Shape

# Sign of the colour cue per class: heat reddish, mechanical bluish, the rest none.
_CUE_SIGN = {"heat": 1.0, "mechanical": -1.0}
# Independent random streams, so adding draws to one never shifts another.
_STREAM_PARTICLE, _STREAM_ANTIBODY, _STREAM_GROUP_CLASS, _STREAM_VIAL_SIZES, _STREAM_VIAL = range(5)


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


def _rng(config: SyntheticConfig, stream: int, *key: int) -> np.random.Generator:
    """A Generator that depends only on the seed, the stream and the key (order-free, worker-free)."""
    return np.random.default_rng([config.seed, stream, *key])


def _draw_nuisance(rng: np.random.Generator, scale: float, tint: float) -> Nuisance:
    """Random shifts: ``scale`` sizes the particle ones, ``tint`` the background's (8-bit levels, std)."""
    return Nuisance(
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
    nuisance: tuple[tuple[Nuisance, ...], ...]  # [antibody][class] -> antibody + class nuisance


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
def _nuisance(config: SyntheticConfig, antibody: int, cls: int, vial: int) -> Nuisance:
    """Everything shared by a vial's particles: antibody, antibody-class and (smaller) vial shifts."""
    # Vials are imaged in separate runs: a small background shift each, as on a real instrument.
    vial_nz = _draw_nuisance(_rng(config, _STREAM_VIAL, antibody, cls, vial), 0.3, tint=1.5)
    return _layout(config).nuisance[antibody][cls].compose(vial_nz)


def _locate(config: SyntheticConfig, index: int) -> tuple[int, int, int]:
    """(antibody, class, vial) of a particle index; particles are ordered antibody, class, vial."""
    if not 0 <= index < particle_count(config):
        raise IndexError(f"particle index {index} out of range [0, {particle_count(config)})")
    antibody, rest = divmod(index, len(config.all_classes) * config.per_class)
    cls, k = divmod(rest, config.per_class)
    vial = int(np.searchsorted(_layout(config).vial_ends[antibody][cls], k, side="right"))
    return antibody, cls, vial


_AA_SHIFT = 4  # cv2 sub-pixel bits: smooth outlines for small particles


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _AA_SHIFT)).astype(np.int32)


def _rasterise(shape: Shape, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
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


def _place(shape: Shape, config: SyntheticConfig) -> tuple[Shape, tuple[int, int]]:
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
             look: Look, d_px: float) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
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
    shape: Shape, size: tuple[int, int], config: SyntheticConfig
) -> tuple[Shape, tuple[int, int]]:
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

    shape, look = DESIGNERS[label](rng, nuisance)
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
        group=group_name(antibody),
        sample=f"{group_name(antibody)}-{label}-v{vial + 1}",
        particle_id=index,
        features=measure_particle(tile, mask, config.um_per_px),
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


def group_name(antibody: int) -> str:
    return f"ab{antibody + 1}"
