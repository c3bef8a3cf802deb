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
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
import torch
from PIL import Image
from tqdm.auto import tqdm

from fimvision.data.manifest import Manifest, _report
from fimvision.data.transforms import to_canvas

log = logging.getLogger(__name__)

Modality = Literal["color", "mono"]
Luminance = Literal["bt601", "bt709"]
LUMINANCE_WEIGHTS: dict[str, tuple[float, float, float]] = {
    "bt601": (0.299, 0.587, 0.114),
    "bt709": (0.2126, 0.7152, 0.0722),
}


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale integer images above 8 bits to 0-255 by their type's full range (no per-image stretch,
    so intensity stays comparable between particles); floats are taken as 0-1."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        # PIL opens 16-bit PNGs as int32: use 16 bits whenever the values fit in them.
        top = 65535 if array.max(initial=0) <= 65535 else np.iinfo(array.dtype).max
        return np.rint(array.astype(np.float64) * (255.0 / top)).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {array.dtype}")


def _from_pil(image: Image.Image) -> np.ndarray:
    if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode == "LA":
        image = image.getchannel("L")
    array = np.asarray(image)
    if array.dtype == np.int32 or image.mode.startswith("I;16"):
        # Pillow opens 16-bit grey as int32 ("I"): keep it as uint16 when the values fit.
        if array.min(initial=0) < 0 or array.max(initial=0) > 65535:
            raise ValueError(f"pixel values outside 0-65535 in mode {image.mode}")
        array = array.astype(np.uint16)
    return array


def _normalise(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar TIFF
    if array.ndim == 3 and array.shape[2] in (1, 2):
        array = array[:, :, 0]  # grey (+ alpha)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]  # alpha carries no particle signal
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3) or min(array.shape[:2]) < 1:
        raise ValueError(f"unexpected image shape {array.shape}")
    if array.dtype not in (np.uint8, np.uint16):
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        elif np.issubdtype(array.dtype, np.integer) and array.min(initial=0) >= 0 and array.max(initial=0) <= 65535:
            array = array.astype(np.uint16)
        elif not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"unsupported pixel type {array.dtype}")
    return np.ascontiguousarray(array)


def read_raw(path: str | Path) -> np.ndarray:
    """Read an image unscaled: H x W (grey) or H x W x 3 (RGB), uint8 or uint16 (floats as stored).

    Pillow first (it decodes the LZW TIFFs instruments write without extra packages), tifffile as the
    fallback for TIFFs Pillow cannot open (planar, 16-bit RGB); alpha dropped, palettes expanded."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return _normalise(_from_pil(image))
    except (OSError, ValueError, SyntaxError):
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise
        return _normalise(tifffile.imread(path))


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as uint8 HxWxC with C = 1 (grey) or 3 (RGB): RGB, grey, RGBA (alpha dropped),
    palette, 16-bit PNG and TIFF (scaled by the 16-bit range)."""
    array = read_raw(path)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(to_uint8(array))


def luminance(rgb: np.ndarray, formula: Luminance = "bt601") -> np.ndarray:
    """The luminance of uint8 RGB images (...xHxWx3) as uint8 (...xHxWx1)."""
    weights = np.asarray(LUMINANCE_WEIGHTS[formula], dtype=np.float32)
    y = rgb.astype(np.float32) @ weights
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None]


def decode_images(manifest: Manifest, rows: Sequence[int], *, image_size: int, keep_scale: bool = False,
                  modality: Modality = "color", luminance_formula: Luminance = "bt601",
                  progress: bool = True) -> np.ndarray:
    """Decode the images of manifest ``rows`` into one uint8 array (N, size, size, C): C = 3 for colour,
    1 for mono. Unreadable images and one-channel images asked for as colour are reported with their
    manifest line."""
    channels = 3 if modality == "color" else 1
    images = np.empty((len(rows), image_size, image_size, channels), dtype=np.uint8)
    unreadable: list[str] = []
    grey: list[str] = []
    paths = manifest.frame["image"].to_numpy()
    lines = manifest.frame["line"].to_numpy()
    for out, row in enumerate(tqdm(rows, desc="decoding images", unit="img", disable=not progress,
                                   mininterval=1.0, leave=False)):
        try:
            image = read_image(manifest.root / paths[row])
        except Exception as err:  # any decoder failure means the same to the user: a bad image file
            unreadable.append(f"line {lines[row]}, column 'image': cannot decode '{paths[row]}' "
                              f"({type(err).__name__}: {err})")
            continue
        if image.shape[2] == 1 and channels == 3:
            grey.append(f"line {lines[row]}, column 'image': '{paths[row]}' is a one-channel (grey) image")
            continue
        if channels == 1 and image.shape[2] == 3:
            image = luminance(image, luminance_formula)
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
    (class index, -1 when unlabelled) and ``index`` (the manifest row). ``channels_out=3`` replicates a
    one-channel image to three, for models that want RGB input.
    """

    def __init__(self, images: np.ndarray, positions: Sequence[int], targets: Sequence[int],
                 rows: Sequence[int], transform: Callable[[np.ndarray], object], channels_out: int | None = None):
        if not (len(positions) == len(targets) == len(rows)):
            raise ValueError("positions, targets and rows must have the same length")
        self.images = images
        self.positions = np.asarray(positions, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.transform = transform
        self.channels_out = channels_out or images.shape[3]

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict:
        image = self.images[self.positions[i]]
        if image.shape[2] != self.channels_out:
            image = np.repeat(image, self.channels_out, axis=2)
        return {"image": self.transform(image), "target": int(self.targets[i]), "index": int(self.rows[i])}
