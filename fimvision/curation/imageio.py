"""Reading instrument images and writing particle crops, keeping their bit depth.

Collages and frames are read with ``fimvision.data.dataset.read_raw`` (Pillow, which decodes the
LZW-compressed TIFFs VisualSpreadsheet writes, with tifffile as the fallback). Arrays come back as
H x W (grey) or H x W x 3 (RGB), uint8 or uint16, never rescaled, so 16-bit intensities survive into
the crops.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from fimvision.curation.errors import CurationError
from fimvision.data.dataset import LUMINANCE_WEIGHTS, read_raw

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
# Fast PNG compression: crops are small, and curation time is dominated by encoding.
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def read_image(path: str | Path) -> np.ndarray:
    """Read an image (TIFF, PNG, BMP, JPEG) as uint8/uint16, H x W or H x W x 3, unscaled."""
    path = Path(path)
    if not path.is_file():
        raise CurationError("image file not found", file=path, hint="check the path and that the export is complete")
    try:
        return read_raw(path)
    except Exception as err:  # Pillow and tifffile raise many types for broken files
        raise CurationError(f"cannot be read as an image ({type(err).__name__}: {err})", file=path,
                            hint="re-export it, or remove it from the input") from err


def is_grey(array: np.ndarray) -> bool:
    """True for one-channel images and for RGB images whose three channels are equal."""
    if array.ndim == 2:
        return True
    return bool((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all())


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8/uint16 grey (H x W) or RGB (H x W x 3) array."""
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG crops must be uint8 or uint16, got {array.dtype}")
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR order
    ok, data = cv2.imencode(".png", np.ascontiguousarray(array), _PNG_PARAMS)
    if not ok:
        raise OSError("PNG encoding failed")
    return data.tobytes()


def write_png(path: Path, array: np.ndarray, *, make_parents: bool = True) -> None:
    """Write ``array`` as a PNG (8- or 16-bit, grey or RGB); parent folders are created unless told not to."""
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(array))


def write_tiff(path: Path, array: np.ndarray) -> None:
    """Write a uint8 grey or RGB array as an LZW-compressed TIFF, as VisualSpreadsheet does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, compression="tiff_lzw")


def to_float(array: np.ndarray) -> np.ndarray:
    """Grey float32 image on the 0-255 scale whatever the bit depth (for QC measures and hashes)."""
    scale = 255.0 / 65535.0 if array.dtype == np.uint16 else 1.0
    image = array.astype(np.float32) * np.float32(scale)
    if image.ndim == 3:
        image = image @ np.asarray(LUMINANCE_WEIGHTS["bt601"], np.float32)
    return image
