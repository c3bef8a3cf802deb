"""Reading and writing particle images, keeping their bit depth.

:func:`read_image` is the one reader: Pillow first (it decodes the LZW-compressed TIFFs
VisualSpreadsheet writes), tifffile as the fallback; arrays come back as H x W (grey) or H x W x 3
(RGB), uint8 or uint16, never rescaled, so 16-bit intensities survive into crops (but Pillow reads
16-bit RGB TIFFs as 8-bit). Training converts with :func:`to_uint8`; curation keeps the depth.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from fimvision.errors import DataError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
LUMINANCE_WEIGHTS: dict[str, tuple[float, float, float]] = {
    "bt601": (0.299, 0.587, 0.114),
    "bt709": (0.2126, 0.7152, 0.0722),
}
# Fast PNG compression: crops are small, and curation time is dominated by encoding.
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]


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


def read_image(path: str | Path) -> np.ndarray:
    """Read an image (TIFF, PNG, BMP, JPEG) unscaled: H x W (grey) or H x W x 3 (RGB), uint8 or uint16;
    alpha dropped, palettes expanded. Pillow first, tifffile for TIFFs Pillow cannot open (planar ones).

    A missing or undecodable file raises :class:`DataError` naming it (the decoder's error is its cause).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found. Check the path and that the export is complete.")
    try:
        try:
            with Image.open(path) as image:
                return _normalise(_from_pil(image))
        except (OSError, ValueError, SyntaxError):
            if path.suffix.lower() not in (".tif", ".tiff"):
                raise
            return _normalise(tifffile.imread(path))
    except Exception as err:  # Pillow and tifffile raise many types for broken files
        raise DataError(f"{path}: cannot be read as an image ({type(err).__name__}: {err}). "
                        "Re-export it, or remove it from the input.") from err


def is_grey(array: np.ndarray) -> bool:
    """True for one-channel images and for RGB images whose three channels are equal."""
    if array.ndim == 2:
        return True
    return bool((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all())


def to_float(array: np.ndarray) -> np.ndarray:
    """Grey float32 image on the 0-255 scale whatever the bit depth (for QC measures and hashes)."""
    scale = 255.0 / 65535.0 if array.dtype == np.uint16 else 1.0
    image = array.astype(np.float32) * np.float32(scale)
    if image.ndim == 3:
        image = image @ np.asarray(LUMINANCE_WEIGHTS["bt601"], np.float32)
    return image


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
