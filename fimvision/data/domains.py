"""Domain-adaptation data: source and target domains, the few-shot protocol and shift scenarios.

Three kinds of ``root`` hold domains:

- a DomainBed-style folder ``ROOT/<domain>/<class>/*.jpg|png`` (Office-31, Office-Home, VisDA-C, PACS,
  VLCS, TerraIncognita); a domain is a sub-folder name;
- a fimvision dataset folder (``manifest.csv``); a domain is a row filter on any column, ``group=ab8``,
  ``group!=ab8``, ``instrument=mfi`` or ``*`` (all rows), optionally with a modality suffix ``@color`` or
  ``@mono`` (the BT.601 luminance of the same colour images), so colour versus mono is a domain shift;
- an HDF5 (MATLAB v7.3) ``.mat`` file with ``Xs``/``Ys`` (source) and ``Xt``/``Yt`` (target), each row
  a square grey image stored row by row (upright when reshaped in C order; checked on MNIST/USPS);
  labels are MATLAB's 1-based class numbers. A domain is ``source``/``target`` or the file name's
  halves (``MNIST_vs_USPS.mat``: ``MNIST``, ``USPS``). Digits sets name classes ``0``-``9``.

The protocol (see docs/sfda.md): the target domain is split 80/20, stratified by class, with an RNG
keyed to (seed, target); from the 80 % part each class gives ``n_shot`` training images and one
validation image (nested: the 1-shot set is part of the 3-shot set, and the validation image is the
same for every ``n_shot``); validation and test images get evaluation transforms only; results are
reported on the 20 % test part, which never meets the few-shot set. Source-free unsupervised methods
adapt on the whole 80 % part with its labels hidden.

Scenarios (a parameter of the target data, for any kind of root): ``standard``; ``label_shift``: the
target keeps ``imbalance_ratio ** (k / (C-1))`` of class k, so class 0 is the most and the last class
the least frequent (``source_imbalance`` imbalances the source the reverse way, as in RSUT);
``partial``: the target holds only ``target_classes`` (default: the first half); ``ood``: the source
loses ``unseen_classes`` (default: the last third), which stay in the target as unknown images
(target ``-1``): distractors in the unlabelled pool, never in the few-shot set, left out of accuracy.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch

from fimvision.data.dataset import ParticleDataset, decode_images, luminance, read_image
from fimvision.data.manifest import MANIFEST_NAME, load_manifest
from fimvision.data.resumable import ResumableTraining
from fimvision.data.transforms import Pipeline, eval_transform, to_canvas, train_transform
from fimvision.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
Scenario = Literal["standard", "label_shift", "partial", "ood"]
TrainOn = Literal["auto", "source", "fewshot", "target"]
Augment = Literal["particle", "shift", "none"]
FEWSHOT_BATCH_SIZE = 32
FEWSHOT_BATCHES = 50


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


def rng_for(seed: int, *key: str) -> np.random.Generator:
    """A generator keyed to ``seed`` and text keys (stable across runs and Python versions)."""
    return np.random.default_rng([int(seed), *(zlib.crc32(k.encode()) for k in key)])


def _channels(image: np.ndarray, channels: int) -> np.ndarray:
    """``image`` (...xC, uint8) with ``channels`` channels: grey repeated to RGB, RGB to BT.601 luminance."""
    if image.shape[-1] == channels:
        return image
    if channels == 1:
        return luminance(image)
    return np.repeat(image, 3, axis=-1)


# ----------------------------------------------------------------------------------------- readers
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


def write_mat_domains(path: str | Path, source: tuple[np.ndarray, np.ndarray],
                      target: tuple[np.ndarray, np.ndarray]) -> Path:
    """Write two domains ((images N x side x side in 0-1, labels 0-based), ...) as an HDF5 ``.mat`` in the
    shared sets' layout (``Xs``/``Ys``/``Xt``/``Yt``, rows in C order, 1-based labels)."""
    import h5py

    path = Path(path)
    with h5py.File(path, "w") as f:
        for key, (images, labels) in (("s", source), ("t", target)):
            images = np.asarray(images, dtype=np.float64)
            f[f"X{key}"] = images.reshape(len(images), -1)
            f[f"Y{key}"] = (np.asarray(labels, dtype=np.float64) + 1)[None, :]
    return path


def read_folder_domain(root: str | Path, domain: str, image_size: int, channels: int) -> Domain:
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
    images = np.empty((len(files), image_size, image_size, channels), np.uint8)
    for i, (_, p) in enumerate(files):
        try:
            images[i] = to_canvas(_channels(read_image(p), channels), image_size)
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


def read_manifest_domain(root: str | Path, spec: str, image_size: int, channels: int,
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
    images = np.ascontiguousarray(_channels(images, channels))
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


def load_domain(root: str | Path, spec: str, image_size: int, channels: int, modality: str = "color") -> Domain:
    """One domain from any kind of root (see the module docstring)."""
    kind = root_kind(root)
    if kind == "mat":
        domain = read_mat_domain(root, spec, image_size)
        domain.images = np.ascontiguousarray(_channels(domain.images, channels))
        return domain
    if kind == "manifest":
        return read_manifest_domain(root, spec, image_size, channels, modality)
    return read_folder_domain(root, spec, image_size, channels)


def native_channels(root: str | Path, specs: Sequence[str], modality: str = "color") -> int:
    """Channels a model needs for these domains: 1 for grey .mat sets and all-mono manifests, else 3."""
    kind = root_kind(root)
    if kind == "mat":
        return 1
    if kind == "manifest":
        modes = {parse_manifest_spec(s)[3] or modality for s in specs}
        return 1 if modes == {"mono"} else 3
    return 3


# ----------------------------------------------------------------------------------------- protocol
def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions (rest, held_out): ``fraction`` of each class held out (rounded, at least one when a class
    has two or more images)."""
    rest, held = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        n = len(members)
        k = int(np.clip(round(fraction * n), 1, n - 1)) if n >= 2 and fraction > 0 else 0
        held.append(members[:k])
        rest.append(members[k:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))


@dataclass
class TargetSplit:
    """Positions into the target domain: the 80 % ``pool`` (unlabelled adaptation data, few-shot source)
    and the 20 % ``test``; ``shots`` (n_shot per class) and ``val`` (one per class) come from the pool."""

    pool: np.ndarray
    test: np.ndarray
    shots: np.ndarray
    val: np.ndarray


def split_target(labels: np.ndarray, target: str, seed: int, n_shot: int, test_fraction: float = 0.2,
                 known: np.ndarray | None = None) -> TargetSplit:
    """The protocol's split of a target domain (``labels``: -1 for unknown-class images).

    The 80/20 split depends on (seed, target) only, so every method and every ``n_shot`` is tested on
    the same images. Few-shot images are drawn per class from the 80 % part with one permutation keyed
    to (seed, target, class): its first image is the validation image, the next ``n_shot`` the training
    shots, so smaller shot sets are nested in larger ones.
    """
    labels = np.asarray(labels)
    pool, test = stratified_split(labels, test_fraction, rng_for(seed, "target-split", target))
    classes = np.unique(labels[labels >= 0]) if known is None else known
    shots, val, short = [], [], []
    for c in classes:
        members = pool[labels[pool] == c]
        if len(members) < n_shot + 1:
            short.append(f"class {int(c)}: {len(members)} image(s)")
            continue
        order = members[rng_for(seed, "few-shot", target, str(int(c))).permutation(len(members))]
        val.append(order[:1])
        shots.append(order[1:1 + n_shot])
    if short:
        raise DataError(f"target '{target}': the 80 % part needs n_shot + 1 = {n_shot + 1} images per class; "
                        f"{'; '.join(short)}. Lower n_shot or use a larger target domain.")
    return TargetSplit(pool, test, _sorted_union(shots), _sorted_union(val))


def _sorted_union(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def label_shift_keep(labels: np.ndarray, num_classes: int, ratio: float, rng: np.random.Generator,
                     reverse: bool = False, minimum: int = 1) -> np.ndarray:
    """Positions kept so that class k keeps ``ratio ** (k / (C-1))`` of its images (``reverse``: class
    C-1-k), at least ``minimum`` each: a long-tailed class distribution."""
    keep = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        rank = (num_classes - 1 - c) if reverse else c
        share = ratio ** (rank / max(1, num_classes - 1))
        k = min(len(members), max(minimum, int(round(share * len(members)))))
        keep.append(np.sort(members[rng.permutation(len(members))[:k]]))
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, np.int64)


# ----------------------------------------------------------------------------------------- transforms
def shift_transform(channels: int) -> Pipeline:
    """Small translations and scalings: augmentation for digits and objects, which have an orientation."""
    import albumentations as A

    return Pipeline([A.Affine(translate_percent=(-0.08, 0.08), scale=(0.9, 1.1), p=1.0)], channels)


def make_train_transform(kind: Augment, channels: int) -> Pipeline:
    if kind == "particle":
        return train_transform(channels)
    if kind == "shift":
        return shift_transform(channels)
    return eval_transform(channels)


# ----------------------------------------------------------------------------------------- data module
class DomainDataModule(ResumableTraining, pl.LightningDataModule):
    """A source and a target domain under the few-shot source-free adaptation protocol.

    The loaders follow what the model trains on (its ``train_on`` attribute, or ``train_on`` here):
    ``source``: source train (90 %) / source val / target test; ``fewshot``: ``n_shot`` labelled target
    images per class drawn with replacement (batch size and batches an epoch from the model) / one target val image per class / target test;
    ``target``: the unlabelled 80 % target part (labels hidden) / the same part with eval transforms /
    target test. Batches are ``{"image", "target", "index"}`` with ``index`` the image's position in
    its domain.

    Args:
        root: a ``.mat`` file, a dataset folder with ``manifest.csv`` or a folder of domain folders.
        source: source domain (folder name, ``source``/``MNIST`` for .mat, ``group!=ab8`` for a manifest).
        target: target domain, the same way.
        image_size: side of the square model input in pixels.
        channels: channels the model receives (``in_chans``); default 1 for grey sets and all-mono
            manifests, else 3. (Not named in_chans: the model's linked in_chans would clash in the logs.)
        modality: manifest domains without an ``@color``/``@mono`` suffix use this modality.
        classes: class order (default: the source classes, sorted); must list every source class, except
            under ``ood``, where the classes left out are the unseen ones.
        scenario: ``standard``, ``label_shift``, ``partial`` or ``ood`` (see the module docstring).
        imbalance_ratio: label shift: the rarest class keeps this share of its images.
        source_imbalance: label shift: also imbalance the source, the reverse way.
        target_classes: partial: the classes the target keeps (default: the first half).
        unseen_classes: ood: classes the source never sees (default: the last third).
        n_shot: labelled target images per class for few-shot training.
        seed: seed of the target split, the few-shot draw and the source split.
        test_fraction: share of each target class held out for the test.
        source_val_fraction: share of each source class for source validation.
        batch_size: batch size of source, unlabelled and evaluation loaders.
        num_workers: loader worker processes.
        augment: training augmentation: ``particle`` (flips, 90° rotations, brightness), ``shift``
            (small translations/scalings, for digits and objects) or ``none``.
        train_on: ``auto`` (ask the model), ``source``, ``fewshot`` or ``target``.
    """

    def __init__(
        self,
        root: str = "datasets/domain-adaptation/MNIST_vs_USPS.mat",
        source: str = "MNIST",
        target: str = "USPS",
        image_size: int = 32,
        channels: int | None = None,
        modality: Literal["color", "mono"] = "color",
        classes: list[str] | None = None,
        scenario: Scenario = "standard",
        imbalance_ratio: float = 0.1,
        source_imbalance: bool = False,
        target_classes: list[str] | None = None,
        unseen_classes: list[str] | None = None,
        n_shot: int = 3,
        seed: int = 0,
        test_fraction: float = 0.2,
        source_val_fraction: float = 0.1,
        batch_size: int = 64,
        num_workers: int = 0,
        augment: Augment = "shift",
        train_on: TrainOn = "auto",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if n_shot < 1:
            raise DataError(f"n_shot must be >= 1, got {n_shot}.")
        if not 0 < test_fraction < 1:
            raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}.")
        self.root, self.source_name, self.target_name = root, source, target
        self.image_size = image_size
        self._in_chans = channels or native_channels(root, [source, target], modality)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.source = load_domain(root, source, image_size, self._in_chans, modality)
        self.target = load_domain(root, target, image_size, self._in_chans, modality)
        self._classes = self._align_classes(classes)
        self._apply_scenario()
        self.split = split_target(self.target_labels, target, seed, n_shot, test_fraction)
        rest, val = stratified_split(self.source_labels, source_val_fraction, rng_for(seed, "source-split", source))
        self.source_train, self.source_val = self.source_keep[rest], self.source_keep[val]
        log.info("domains %s -> %s (%s): source %d train / %d val; target pool %d, test %d, %d-shot %d, val %d",
                 source, target, scenario, len(rest), len(val), len(self.split.pool), len(self.split.test),
                 n_shot, len(self.split.shots), len(self.split.val))

    # -- classes and scenarios
    def _align_classes(self, classes: list[str] | None) -> list[str]:
        src, tgt = set(self.source.classes), set(self.target.classes)
        if classes is None:
            classes = sorted(src, key=_natural)
        # Under 'ood', source classes left out of `classes` are the unseen ones (a checkpoint's class list).
        self._left_out = sorted(src - set(classes), key=_natural)
        if self._left_out and self.hparams.scenario != "ood":
            raise DataError(f"classes {classes} lacks source class(es) {self._left_out}; list every source class.")
        unknown = sorted(tgt - set(classes) - src)
        if unknown:
            log.info("target classes %s are not in the source: kept as unknown images (target -1)", unknown)
        return list(classes) + self._left_out

    def _apply_scenario(self) -> None:
        h = self.hparams
        index = {c: i for i, c in enumerate(self._classes)}
        self.source_labels_all = np.asarray([index[c] for c in self.source.class_names()])
        target_all = np.asarray([index.get(c, -1) for c in self.target.class_names()])
        source_keep = np.arange(len(self.source))
        target_keep = np.arange(len(self.target))
        minimum = h.n_shot + 1 + max(1, math.ceil(1 / h.test_fraction))
        if h.scenario == "label_shift":
            rng = rng_for(h.seed, "label-shift", h.target)
            target_keep = label_shift_keep(target_all, len(self._classes), h.imbalance_ratio, rng, minimum=minimum)
            target_keep = np.sort(np.concatenate([target_keep, np.flatnonzero(target_all < 0)]))
            if h.source_imbalance:
                source_keep = label_shift_keep(self.source_labels_all, len(self._classes), h.imbalance_ratio,
                                               rng_for(h.seed, "label-shift", h.source), reverse=True, minimum=minimum)
        elif h.scenario == "partial":
            keep = h.target_classes or self._classes[: max(1, len(self._classes) // 2)]
            self._check_names(keep, "target_classes")
            target_keep = np.flatnonzero(np.isin(target_all, [index[c] for c in keep]))
        elif h.scenario == "ood":
            unseen = (h.unseen_classes or self._left_out
                      or self._classes[len(self._classes) - max(1, len(self._classes) // 3):])
            self._check_names(unseen, "unseen_classes")
            seen = [c for c in self._classes if c not in unseen]
            remap = {c: i for i, c in enumerate(seen)}
            self.source_labels_all = np.asarray([remap.get(c, -1) for c in self.source.class_names()])
            source_keep = np.flatnonzero(self.source_labels_all >= 0)
            target_all = np.asarray([remap.get(c, -1) for c in self.target.class_names()])
            self._classes = seen
        self.source_keep = source_keep
        self.source_labels = self.source_labels_all[source_keep]
        # The scenario's target is a domain of its own: positions below index into these arrays.
        self.target_images = self.target.images[target_keep]
        self.target_labels = target_all[target_keep]
        self.target_index = target_keep

    def _check_names(self, names: Sequence[str], what: str) -> None:
        bad = [c for c in names if c not in self._classes]
        if bad:
            raise DataError(f"{what} {bad} are not classes of this data ({self._classes}).")

    # -- the interface the CLI links into models
    @property
    def classes(self) -> list[str]:
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    @property
    def in_chans(self) -> int:
        return self._in_chans

    # -- datasets
    def _dataset(self, where: Literal["source", "target"], positions: np.ndarray, train: bool,
                 hide_labels: bool = False) -> ParticleDataset:
        c = self._in_chans
        transform = make_train_transform(self.hparams.augment, c) if train else eval_transform(c)
        if where == "source":
            images, labels, index = self.source.images, self.source_labels_all, np.arange(len(self.source))
        else:
            images, labels, index = self.target_images, self.target_labels, np.arange(len(self.target_labels))
        targets = np.full(len(positions), -1) if hide_labels else labels[positions]
        return ParticleDataset(images, positions, targets, index[positions], transform, channels_out=c)

    def resolved_train_on(self) -> str:
        """What the loaders serve: ``train_on``, or the model's ``train_on`` attribute (``source`` if none)."""
        if self.hparams.train_on != "auto":
            return self.hparams.train_on
        model = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        return getattr(model, "train_on", "source")

    def _loader(self, dataset) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers)

    def training_seed(self) -> int:
        return int(self.hparams.seed)  # the few-shot draws depend on the seed alone, as the protocol says

    def fewshot_dataset(self, train: bool = True) -> ParticleDataset:
        """The ``n_shot`` labelled training images per class (train transforms when ``train``)."""
        return self._dataset("target", self.split.shots, train=train)

    def pool_dataset(self, train: bool = False) -> ParticleDataset:
        """The unlabelled 80 % target part (targets -1; ``index`` = position in the target domain)."""
        return self._dataset("target", self.split.pool, train=train, hide_labels=True)

    def pool_loader(self) -> torch.utils.data.DataLoader:
        """The unlabelled 80 % target part in order, with evaluation transforms (pseudo-labels, banks)."""
        return self._loader(self.pool_dataset(train=False))

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        mode = self.resolved_train_on()
        if mode in ("source", "target"):
            data = (self._dataset("source", self.source_train, train=True) if mode == "source"
                    else self.pool_dataset(train=True))
            return self.training_loader(data, batch_size=self.batch_size, num_workers=self.num_workers,
                                        drop_last=len(data) > self.batch_size)
        model = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        # The few-shot batch size and epoch length belong to the model (FewShotFinetune's fewshot_batch_size
        # and val_every); the defaults serve other models.
        batch = getattr(model, "fewshot_batch_size", None) or FEWSHOT_BATCH_SIZE
        batches = getattr(model, "fewshot_batches", None) or FEWSHOT_BATCHES
        dataset = self.fewshot_dataset(train=True)
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch * batches)
        return self.training_loader(dataset, batch_size=batch, num_workers=self.num_workers, sampler=sampler)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        mode = self.resolved_train_on()
        if mode == "source":
            return self._loader(self._dataset("source", self.source_val, train=False))
        if mode == "target":
            return self.pool_loader()
        return self._loader(self._dataset("target", self.split.val, train=False))

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self._dataset("target", self.split.test, train=False))

    def class_counts(self, split: Literal["source", "pool", "test"] = "test") -> np.ndarray:
        """Images per class (index ``num_classes``: unknown) in the source, target pool or test part."""
        labels = {"source": self.source_labels, "pool": self.target_labels[self.split.pool],
                  "test": self.target_labels[self.split.test]}[split]
        return np.bincount(np.where(labels < 0, self.num_classes, labels), minlength=self.num_classes + 1)


def _natural(name: str) -> tuple:
    """Sort key putting '2' before '10'."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)
