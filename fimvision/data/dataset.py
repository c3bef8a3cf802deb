"""ParticleDataset: decoded particle images in a compact uint8 cache, in colour or monochrome.

Each image is decoded once, brought to the model's canvas (see ``transforms.to_canvas``) and kept as
one contiguous ``uint8`` array of shape (N, size, size, channels): 16,000 colour crops at 128 px take
786 MB, at 64 px 197 MB; monochrome a third of that.

Monochrome is the luminance of the colour image, ``Y = wr*R + wg*G + wb*B`` rounded to uint8, with
the weights of ITU-R BT.601 (0.299, 0.587, 0.114; the default, as in most greyscale conversions) or
BT.709 (0.2126, 0.7152, 0.0722). Native one-channel images are used as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from fimvision.console import tqdm_disable
from fimvision.data.manifest import Manifest, _report
from fimvision.data.transforms import border_background, to_canvas
from fimvision.imageio import LUMINANCE_WEIGHTS, read_image, to_uint8

log = logging.getLogger(__name__)

Modality = Literal["color", "mono"]
Luminance = Literal["bt601", "bt709"]  # the keys of LUMINANCE_WEIGHTS
ColorNorm = Literal["none", "background"]
# The level a crop's background is mapped to by ``color_norm: background`` (neutral grey, with headroom
# for particles brighter than their background).
NORMALISED_BACKGROUND = 200.0


def as_hwc_uint8(array: np.ndarray) -> np.ndarray:
    """An image from :func:`fimvision.imageio.read_image` as uint8 H x W x C (C = 1 grey, 3 RGB); 16-bit
    images are scaled by the 16-bit range."""
    array = to_uint8(array)
    return np.ascontiguousarray(array[:, :, None] if array.ndim == 2 else array)


def luminance(rgb: np.ndarray, formula: Luminance = "bt601") -> np.ndarray:
    """The luminance of uint8 RGB images (...xHxWx3) as uint8 (...xHxWx1)."""
    weights = np.asarray(LUMINANCE_WEIGHTS[formula], dtype=np.float32)
    y = rgb.astype(np.float32) @ weights
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None]


def normalise_background(image: np.ndarray) -> np.ndarray:
    """The crop divided, channel by channel, by its background colour (the border estimate used for
    padding) and mapped to a neutral grey of :data:`NORMALISED_BACKGROUND`: instrument and antibody tint
    go, the particle's colour contrast against its own background stays."""
    background = np.maximum(border_background(image).astype(np.float32), 1.0)
    scaled = image.astype(np.float32) * (NORMALISED_BACKGROUND / background)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def decode_images(manifest: Manifest, rows: Sequence[int], *, image_size: int, keep_scale: bool = False,
                  modality: Modality = "color", luminance_formula: Luminance = "bt601",
                  color_norm: ColorNorm = "none", sizes: np.ndarray | None = None,
                  progress: bool = True) -> np.ndarray:
    """Decode the images of manifest ``rows`` into one uint8 array (N, size, size, C): C = 3 for colour,
    1 for mono; ``color_norm: background`` divides each crop by its background colour first (see
    :func:`normalise_background`). ``sizes``, when given, receives each crop's longer side in pixels.
    Unreadable images and one-channel images asked for as colour are reported with their manifest line."""
    channels = 3 if modality == "color" else 1
    images = np.empty((len(rows), image_size, image_size, channels), dtype=np.uint8)
    unreadable: list[str] = []
    grey: list[str] = []
    paths = manifest.frame["image"].to_numpy()
    lines = manifest.frame["line"].to_numpy()
    for out, row in enumerate(tqdm(rows, desc="decoding images", unit="img", disable=tqdm_disable(progress),
                                   mininterval=1.0, leave=False)):
        try:
            image = as_hwc_uint8(read_image(manifest.root / paths[row]))
        except Exception as err:  # any decoder failure means the same to the user: a bad image file
            cause = err.__cause__ or err  # the decoder's own error; read_image's message repeats the path
            unreadable.append(f"line {lines[row]}, column 'image': cannot decode '{paths[row]}' "
                              f"({type(cause).__name__}: {cause})")
            continue
        if image.shape[2] == 1 and channels == 3:
            grey.append(f"line {lines[row]}, column 'image': '{paths[row]}' is a one-channel (grey) image")
            continue
        if channels == 1 and image.shape[2] == 3:
            image = luminance(image, luminance_formula)
        if color_norm == "background":
            image = normalise_background(image)
        if sizes is not None:
            sizes[out] = max(image.shape[:2])
        images[out] = to_canvas(image, image_size, keep_scale=keep_scale)
    if unreadable:
        raise _report(manifest.path, unreadable, "Re-export those images or remove their rows.")
    if grey:
        raise _report(manifest.path, grey, "Monochrome images cannot be used as colour: set "
                      "`modality: mono` (--data.init_args.modality=mono).")
    log.info("cached %d particle images as uint8 %s (%.1f MB)", len(rows), images.shape[1:], images.nbytes / 1e6)
    return images


class ParticleDataset(torch.utils.data.Dataset):
    """Particles from a decoded uint8 cache.

    Items are dicts: ``image`` (what ``transform`` returns: a tensor, or a list of views), ``target``
    (class index, -1 when unlabelled), ``index`` (the manifest row) and, when ``features`` (N x F raw
    values, by position) are given, ``features``. ``in_chans=3`` replicates a one-channel image to
    three, for models that want RGB input.
    """

    def __init__(self, images: np.ndarray, positions: Sequence[int], targets: Sequence[int],
                 rows: Sequence[int], transform: Callable[[np.ndarray], object], in_chans: int | None = None,
                 features: np.ndarray | None = None):
        if not (len(positions) == len(targets) == len(rows)):
            raise ValueError("positions, targets and rows must have the same length")
        self.images = images
        self.positions = np.asarray(positions, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.transform = transform
        self.in_chans = in_chans or images.shape[3]
        self.features = features

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict:
        image = self.images[self.positions[i]]
        if image.shape[2] != self.in_chans:
            image = np.repeat(image, self.in_chans, axis=2)
        item = {"image": self.transform(image), "target": int(self.targets[i]), "index": int(self.rows[i])}
        if self.features is not None:
            item["features"] = torch.from_numpy(self.features[self.positions[i]])
        return item
