"""Image geometry for particle crops and the albumentations pipelines (train, eval).

Particle crops are small (10-200 px) and their size is a cue, so they are never stretched: a crop is
padded to a square with its own tile background, then resized (or, with ``keep_scale``, padded or
centre-cropped to a fixed canvas without resizing, so absolute size stays visible to the model).
"""

from __future__ import annotations

import os
import random

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# One-channel input gets explicit statistics: the BT.601 luminance of ImageNet's mean and a matching std.
MONO_MEAN = (0.458,)
MONO_STD = (0.226,)


def normalisation(in_chans: int, mono: bool = False) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std (0-1 scale) for ``in_chans``-channel input; ``mono`` for luminance replicated to 3."""
    if in_chans not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {in_chans}")
    if in_chans == 1 or mono:
        return MONO_MEAN * in_chans, MONO_STD * in_chans
    return IMAGENET_MEAN, IMAGENET_STD


def border_background(image: np.ndarray) -> np.ndarray:
    """The tile background: the per-channel median of the crop's outermost pixels."""
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]], axis=0)
    return np.median(border.reshape(-1, image.shape[2]), axis=0)


def _pad(image: np.ndarray, height: int, width: int, fill: np.ndarray) -> np.ndarray:
    """Centre ``image`` on a ``height`` x ``width`` canvas of colour ``fill`` (crops what does not fit)."""
    h, w, c = image.shape
    canvas = np.empty((height, width, c), dtype=image.dtype)
    canvas[...] = fill.astype(image.dtype)
    # Source and destination windows, centred; negative margins mean the image is cropped.
    top, left = (height - h) // 2, (width - w) // 2
    sy, sx = max(0, -top), max(0, -left)
    dy, dx = max(0, top), max(0, left)
    ch, cw = min(h, height), min(w, width)
    canvas[dy:dy + ch, dx:dx + cw] = image[sy:sy + ch, sx:sx + cw]
    return canvas


def pad_to_square(image: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
    """Pad ``image`` (HxWxC) to a centred square with ``fill`` (default: its border background)."""
    fill = border_background(image) if fill is None else fill
    side = max(image.shape[:2])
    return _pad(image, side, side, np.rint(fill))


def to_canvas(image: np.ndarray, size: int, *, keep_scale: bool = False) -> np.ndarray:
    """A crop as a ``size`` x ``size`` image: padded to square and resized, or (``keep_scale``) padded or
    centre-cropped to the canvas at 1:1 scale."""
    fill = np.rint(border_background(image))
    if keep_scale:
        return _pad(image, size, size, fill)
    square = pad_to_square(image, fill)
    if square.shape[0] != size:
        interpolation = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_LINEAR
        square = cv2.resize(square, (size, size), interpolation=interpolation)
        if square.ndim == 2:  # cv2 drops a single channel axis
            square = square[:, :, None]
    return square


class Pipeline:
    """An albumentations pipeline as a callable from a uint8 HxWxC array to a normalised CxHxW tensor.

    albumentations keeps its own random state, which global seeding does not reach: it is seeded from
    torch's generator when built (so ``seed_everything`` makes runs repeatable), and re-seeded in each
    DataLoader worker from that worker's torch seed (so workers do not repeat each other)."""

    def __init__(self, transforms: list, in_chans: int, mono: bool = False) -> None:
        mean, std = normalisation(in_chans, mono)
        self.in_chans, self.mean, self.std = in_chans, mean, std
        self.seed = int(torch.randint(2**31 - 1, ()).item())
        self.compose = A.Compose([*transforms, A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
                                  ToTensorV2()], strict=True)
        self._seed(self.seed)
        self._pid = os.getpid()

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._seed((self.seed + torch.initial_seed()) % 2**32)
        return self.compose(image=image)["image"]

    def _seed(self, seed: int) -> None:
        # One generator pair shared by every transform (albumentations' own seeding gives each transform a
        # copy), so the pipeline's whole random state is two objects a checkpoint can carry.
        self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def pipelines(self) -> list[Pipeline]:
        """The pipelines with random state in this transform: itself."""
        return [self]

    @property
    def rng_state(self) -> dict:
        """The state of the pipeline's random generators (plain values; saved in checkpoints)."""
        return {"numpy": self.compose.random_generator.bit_generator.state, "python": self.compose.py_random.getstate()}

    @rng_state.setter
    def rng_state(self, state: dict) -> None:
        # In place: every transform of the pipeline shares these two generators.
        self.compose.random_generator.bit_generator.state = state["numpy"]
        self.compose.py_random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))

    def __repr__(self) -> str:
        return f"Pipeline({self.compose})"


def eval_transform(in_chans: int, mono: bool = False) -> Pipeline:
    """Normalisation only: validation, test and prediction images."""
    return Pipeline([], in_chans, mono)


def train_transform(in_chans: int, mono: bool = False, *, brightness: float = 0.1, contrast: float = 0.1,
                    tint: float = 0.0) -> Pipeline:
    """Training augmentation: the dihedral group (particles have no orientation) and mild
    brightness/contrast. No hue or saturation change: colour is the very signal colour FIM adds.
    ``tint`` > 0 multiplies each channel by its own gain in [1 - tint, 1 + tint]: a shift of colour
    temperature or tint, as another instrument's illumination or a tinted buffer gives, which the
    particle's colour contrast against its background survives."""
    tinting = [A.MultiplicativeNoise(multiplier=(1 - tint, 1 + tint), per_channel=True, elementwise=False, p=0.8)
               ] if tint > 0 else []
    return Pipeline([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=1.0),
        A.RandomBrightnessContrast(brightness_limit=brightness, contrast_limit=contrast, p=0.5),
        *tinting,
    ], in_chans, mono)


def ssl_view_transform(in_chans: int, size: int, mono: bool = False, *, scale: tuple[float, float] = (0.35, 1.0),
                       ratio: tuple[float, float] = (0.75, 4 / 3), brightness: float = 0.2, contrast: float = 0.2,
                       saturation: float = 0.0, hue: float = 0.0, color_jitter_p: float = 0.8, gray_p: float = 0.0,
                       blur_p: float = 0.3, noise_p: float = 0.3, noise_std: float = 0.03) -> Pipeline:
    """One self-supervised view of a padded particle crop, as a normalised ``size`` x ``size`` tensor
    (``mono``: luminance, possibly replicated to 3 channels).

    A random resized crop (scale kept above ~1/3 of the canvas, so a view still shows the particle
    rather than background), the dihedral group (particles have no orientation), brightness/contrast
    jitter, Gaussian blur and sensor-like Gaussian noise. Saturation and hue jitter and random
    greyscale are off by default: in colour FIM they would erase the signal colour adds.
    """
    jitter: list = []
    if brightness or contrast or saturation or hue:
        if in_chans == 3 and not mono:
            jitter = [A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue,
                                    p=color_jitter_p)]
        else:  # saturation and hue do not exist for one channel
            jitter = [A.RandomBrightnessContrast(brightness_limit=brightness, contrast_limit=contrast,
                                                 p=color_jitter_p)]
    colour = in_chans == 3 and not mono
    grey = [A.OneOf([A.ToGray(num_output_channels=3, p=1.0)], p=gray_p)] if gray_p > 0 and colour else []
    return Pipeline([
        A.RandomResizedCrop(size=(size, size), scale=scale, ratio=ratio, p=1.0),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=1.0),
        *jitter,
        *grey,
        A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.1, 1.2), p=blur_p),
        A.GaussNoise(std_range=(0.0, noise_std), p=noise_p),
    ], in_chans, mono)


class MultiViewTransform:
    """``n_global`` views at ``size`` and ``n_local`` smaller views at ``local_size`` of one particle.

    Returns a list of tensors (global views first), the ``image`` of a self-supervised batch. Local
    views (DINO's multi-crop) use ``local_scale``; every other argument goes to
    :func:`ssl_view_transform` for both kinds.
    """

    def __init__(self, in_chans: int, size: int, mono: bool = False, *, n_global: int = 2, n_local: int = 0,
                 local_size: int | None = None, local_scale: tuple[float, float] = (0.15, 0.4),
                 **view_kwargs) -> None:
        if n_global < 1 or n_global + n_local < 2:
            raise ValueError(f"need at least one global view and two views in all (got n_global={n_global}, "
                             f"n_local={n_local})")
        self.n_global, self.n_local = n_global, n_local
        self.global_view = ssl_view_transform(in_chans, size, mono, **view_kwargs)
        local_kwargs = {**view_kwargs, "scale": local_scale}
        self.local_view = (ssl_view_transform(in_chans, local_size or max(8, size // 2), mono,
                                              **local_kwargs)
                           if n_local else None)

    def pipelines(self) -> list[Pipeline]:
        """The pipelines with random state in this transform."""
        return [self.global_view] + ([self.local_view] if self.local_view is not None else [])

    def __call__(self, image: np.ndarray) -> list[torch.Tensor]:
        views = [self.global_view(image) for _ in range(self.n_global)]
        return views + [self.local_view(image) for _ in range(self.n_local)]

    def __repr__(self) -> str:
        return f"MultiViewTransform(n_global={self.n_global}, n_local={self.n_local}, view={self.global_view})"
