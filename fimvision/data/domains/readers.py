"""Domain readers: a domain of a ``.mat`` file, of a DomainBed-style folder or of a fimvision manifest.

- a DomainBed-style folder ``ROOT/<domain>/<class>/*.jpg|png`` (Office-31, Office-Home, VisDA-C, PACS,
  VLCS, TerraIncognita); a domain is a sub-folder name;
- a fimvision dataset folder (``manifest.csv``); a domain is a row filter on any column, ``group=ab8``,
  ``group!=ab8``, ``instrument=mfi`` or ``*`` (all rows), optionally with a modality suffix ``@color`` or
  ``@mono`` (the BT.601 luminance of the same colour images), so colour versus mono is a domain shift;
- an HDF5 (MATLAB v7.3) ``.mat`` file with ``Xs``/``Ys`` (source) and ``Xt``/``Yt`` (target), each row
  a square grey image stored row by row (upright when reshaped in C order; checked on MNIST/USPS);
  labels are MATLAB's 1-based class numbers. A domain is ``source``/``target`` or the file name's
  halves (``MNIST_vs_USPS.mat``: ``MNIST``, ``USPS``). Digits sets name classes ``0``-``9``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fimvision.data.dataset import as_hwc_uint8, decode_images, luminance
from fimvision.data.manifest import MANIFEST_NAME, load_manifest
from fimvision.data.transforms import to_canvas
from fimvision.errors import DataError
from fimvision.imageio import IMAGE_SUFFIXES, read_image


@dataclass
class Domain:
    """One domain's images (uint8, N x size x size x C), class indices into ``classes`` and its name."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def class_names(self) -> np.ndarray:
        return np.asarray(self.classes, dtype=object)[self.labels]


def _channels(image: np.ndarray, in_chans: int) -> np.ndarray:
    """``image`` (...xC, uint8) with ``in_chans`` channels: grey repeated to RGB, RGB to BT.601 luminance."""
    if image.shape[-1] == in_chans:
        return image
    if in_chans == 1:
        return luminance(image)
    return np.repeat(image, 3, axis=-1)


def mat_domain_names(path: Path) -> tuple[str, str]:
    """The two domain names of ``A_vs_B.mat`` (``source``/``target`` when the name has no ``_vs_``)."""
    parts = path.stem.split("_vs_")
    return (parts[0], parts[1]) if len(parts) == 2 else ("source", "target")


def read_mat_domain(path: str | Path, domain: str, image_size: int) -> Domain:
    """One domain of an HDF5 ``.mat`` file with Xs/Ys/Xt/Yt (see the module docstring)."""
    import h5py

    path = Path(path)
    names = mat_domain_names(path)
    key = {"source": "s", "target": "t", "xs": "s", "xt": "t", names[0].lower(): "s", names[1].lower(): "t"}.get(
        domain.lower())
    if key is None:
        raise DataError(f"{path}: no domain '{domain}'. Use one of {list(names)} (or source/target).")
    try:
        with h5py.File(path, "r") as f:
            x, y = np.asarray(f[f"X{key}"], dtype=np.float64), np.asarray(f[f"Y{key}"]).ravel()
    except (OSError, KeyError) as err:
        raise DataError(f"{path}: cannot read X{key}/Y{key} as HDF5 (MATLAB v7.3) ({err}). Save the .mat "
                        "with -v7.3, holding Xs, Ys, Xt, Yt.") from err
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1] or len(y) != len(x):
        raise DataError(f"{path}: X{key} is {x.shape}, Y{key} has {len(y)} labels; expected N x side^2 "
                        "square images and one label each.")
    top = 255.0 if x.max() > 1.0 + 1e-6 else 1.0
    grey = np.clip(np.rint(x / top * 255.0), 0, 255).astype(np.uint8).reshape(-1, side, side, 1)
    values = np.unique(y).astype(int)
    digits = "MNIST" in path.stem.upper() or "USPS" in path.stem.upper()
    classes = [str(v - 1) if digits else str(v) for v in values]  # MATLAB labels are 1-based
    labels = np.searchsorted(values, y.astype(int))
    images = np.stack([to_canvas(g, image_size) for g in grey]) if side != image_size else grey
    return Domain(domain, images, labels, classes)


def read_folder_domain(root: str | Path, domain: str, image_size: int, in_chans: int) -> Domain:
    """``root/<domain>/<class>/*`` images, padded to square and resized."""
    folder = Path(root) / domain
    if not folder.is_dir():
        found = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
        raise DataError(f"domain folder {folder} does not exist. Domains under {root}: {found}.")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [(c, p) for i, c in enumerate(classes) for p in sorted((folder / c).iterdir())
             if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{folder} holds no images in class sub-folders ({folder}/<class>/*.jpg|png).")
    images = np.empty((len(files), image_size, image_size, in_chans), np.uint8)
    for i, (_, p) in enumerate(files):
        try:
            images[i] = to_canvas(_channels(as_hwc_uint8(read_image(p)), in_chans), image_size)
        except Exception as err:  # any decoder failure is the same to the user: a bad file
            raise DataError(f"cannot decode image {p} ({type(err).__name__}: {err}). Remove or replace it.") from err
    labels = np.asarray([classes.index(c) for c, _ in files])
    return Domain(domain, images, labels, classes)


def parse_manifest_spec(spec: str) -> tuple[str | None, str, str | None, str | None]:
    """``column=value`` / ``column!=value`` / ``*``, with ``@color|@mono``: (column, op, value, modality)."""
    body, _, modality = spec.partition("@")
    if modality and modality not in ("color", "mono"):
        raise DataError(f"domain '{spec}': modality suffix must be @color or @mono.")
    body = body.strip()
    if body in ("", "*"):
        return None, "*", None, modality or None
    for op in ("!=", "="):
        if op in body:
            column, value = body.split(op, 1)
            return column.strip(), op, value.strip(), modality or None
    raise DataError(f"domain '{spec}': write column=value, column!=value or * (optionally @color/@mono), "
                    "e.g. group=ab8.")


def read_manifest_domain(root: str | Path, spec: str, image_size: int, in_chans: int,
                         modality: str = "color") -> Domain:
    """The labelled manifest rows a spec selects (see ``parse_manifest_spec``)."""
    manifest = load_manifest(root)
    column, op, value, spec_modality = parse_manifest_spec(spec)
    frame = manifest.frame
    keep = frame["label"] != ""
    if column is not None:
        if column not in frame.columns:
            raise DataError(f"{manifest.path}: domain '{spec}' names column '{column}', which the manifest "
                            f"lacks (columns: {[c for c in frame.columns if c != 'line']}).")
        match = frame[column].astype(str) == value
        if op == "=" and not match.any():
            raise DataError(f"{manifest.path}, column '{column}': no row has '{value}' (values: "
                            f"{sorted(frame[column].astype(str).unique())[:20]}).")
        keep &= match if op == "=" else ~match
    rows = np.flatnonzero(keep.to_numpy())
    if len(rows) == 0:
        raise DataError(f"{manifest.path}: domain '{spec}' selects no labelled row.")
    modality = spec_modality or modality
    images = decode_images(manifest, rows, image_size=image_size, modality=modality, progress=False)
    images = np.ascontiguousarray(_channels(images, in_chans))
    names = frame["label"].to_numpy()[rows]
    classes = sorted(set(names))
    return Domain(spec, images, np.asarray([classes.index(n) for n in names]), classes)


def root_kind(root: str | Path) -> Literal["mat", "manifest", "folders"]:
    root = Path(root)
    if root.suffix.lower() == ".mat":
        if not root.is_file():
            raise DataError(f"{root} does not exist. Give the .mat file with Xs, Ys, Xt, Yt.")
        return "mat"
    if (root / MANIFEST_NAME).is_file():
        return "manifest"
    if root.is_dir():
        return "folders"
    raise DataError(f"domain root {root} does not exist: give a .mat file, a dataset folder with "
                    f"{MANIFEST_NAME}, or a folder of domain folders ROOT/<domain>/<class>/*.jpg.")


def load_domain(root: str | Path, spec: str, image_size: int, in_chans: int, modality: str = "color") -> Domain:
    """One domain from any kind of root (see the module docstring)."""
    kind = root_kind(root)
    if kind == "mat":
        domain = read_mat_domain(root, spec, image_size)
        domain.images = np.ascontiguousarray(_channels(domain.images, in_chans))
        return domain
    if kind == "manifest":
        return read_manifest_domain(root, spec, image_size, in_chans, modality)
    return read_folder_domain(root, spec, image_size, in_chans)


def native_channels(root: str | Path, specs: Sequence[str], modality: str = "color") -> int:
    """Channels a model needs for these domains: 1 for grey .mat sets and all-mono manifests, else 3."""
    kind = root_kind(root)
    if kind == "mat":
        return 1
    if kind == "manifest":
        modes = {parse_manifest_spec(s)[3] or modality for s in specs}
        return 1 if modes == {"mono"} else 3
    return 3
