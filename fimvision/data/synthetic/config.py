"""Parameters of the synthetic data set: :class:`SyntheticConfig`, the classes and the fixed constants."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

INSTRUMENT = "synthetic-flowcam"
STRESS_CLASSES: tuple[str, ...] = ("heat", "mechanical")
EXTRA_CLASSES: tuple[str, ...] = ("silicone_oil", "air_bubble")
KNOWN_CLASSES: tuple[str, ...] = STRESS_CLASSES + EXTRA_CLASSES
BACKGROUND_RGB: tuple[int, int, int] = (157, 164, 230)
LUMA_BT601: tuple[float, float, float] = (0.299, 0.587, 0.114)
# Red up, blue down, green chosen so that 0.299*1 + 0.587*g + 0.114*(-1) == 0 (BT.601 luminance zero).
COLOUR_CUE_RGB: tuple[float, float, float] = (1.0, -(LUMA_BT601[0] - LUMA_BT601[2]) / LUMA_BT601[1], -1.0)
MANIFEST_COLUMNS: tuple[str, ...] = (
    "image", "label", "group", "sample", "instrument", "particle_id",
    "esd_um", "circularity", "aspect_ratio", "mean_intensity", "area_px",
    "convexity", "edge_gradient", "avg_red", "avg_green", "avg_blue",
)  # fmt: skip
# Measured features of the manifest (definitions: fimvision.data.synthetic.measure); named as curated
# FlowCam exports name the same measurement (fimvision.curation.flowcam).
FEATURE_COLUMNS: tuple[str, ...] = MANIFEST_COLUMNS[6:]


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


def particle_count(config: SyntheticConfig) -> int:
    """Number of particles the config generates."""
    return config.antibodies * len(config.all_classes) * config.per_class
