"""Image geometry for particle crops and the albumentations pipelines (train, eval).

Particle crops are small (10-200 px) and their size is a cue, so they are never stretched: a crop is
padded to a square with its own tile background, then resized (or, with ``keep_scale``, padded or
centre-cropped to a fixed canvas without resizing, so absolute size stays visible to the model).
"""

from __future__ import annotations

import os

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


def normalisation(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std (0-1 scale) for ``channels``-channel input."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        return MONO_MEAN, MONO_STD
    raise ValueError(f"expected 1 or 3 channels, got {channels}")


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
    """An albumentations pipeline as a callable from a uint8 HxWxC array to a normalised CxHxW tensor."""

    def __init__(self, transforms: list, channels: int) -> None:
        mean, std = normalisation(channels)
        self.channels = channels
        self.compose = A.Compose([*transforms, A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
                                  ToTensorV2()], strict=True)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.compose(image=image)["image"]

    def __repr__(self) -> str:
        return f"Pipeline({self.compose})"


def eval_transform(channels: int) -> Pipeline:
    """Normalisation only: validation, test and prediction images."""
    return Pipeline([], channels)


def train_transform(channels: int, *, brightness: float = 0.1, contrast: float = 0.1) -> Pipeline:
    """Training augmentation: the dihedral group (particles have no orientation) and mild
    brightness/contrast. No hue or saturation change: colour is the very signal colour FIM adds."""
    return Pipeline([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=1.0),
        A.RandomBrightnessContrast(brightness_limit=brightness, contrast_limit=contrast, p=0.5),
    ], channels)
