"""The dataset manifest: a folder with ``manifest.csv`` and the images it names.

Required columns: ``image`` (path relative to the folder) and ``label`` (empty for an unclassified
particle). Optional: ``group`` (antibody, product), ``sample`` (vial or run), ``split``
(train/val/test), ``fold``, ``instrument``, ``particle_id``, ``esd_um`` and any instrument feature.
"""

from __future__ import annotations

import difflib
import logging
import posixpath
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd

from fimvision.errors import DataError

MANIFEST_NAME = "manifest.csv"
REQUIRED_COLUMNS = ("image", "label")
TEXT_COLUMNS = ("image", "label", "group", "sample", "split", "instrument", "particle_id")
SPLIT_NAMES = ("train", "val", "test")
# Spellings of the split column that mean the same split.
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
MAX_LISTED = 10
# A class this small next to a class of a similar name is probably a typo of it.
FEW_PARTICLES = 3

log = logging.getLogger(__name__)


def csv_line(index: int) -> int:
    """The line of manifest.csv that holds data row ``index`` (0-based; line 1 is the header)."""
    return int(index) + 2


def _report(path: Path, problems: list[str], what_to_do: str) -> DataError:
    shown = problems[:MAX_LISTED]
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return DataError(f"{path}: " + "\n  ".join([f"{len(problems)} problem(s):", *shown]) + more
                     + f"\n{what_to_do}")


@dataclass
class Manifest:
    """A validated manifest.

    ``frame`` keeps the CSV's columns, with text columns as ``str`` ("" where empty), ``label`` always
    present, ``split`` normalised to train/val/test, and ``line``: the row's line in manifest.csv.
    ``classes`` is the class order: the given list, or the sorted labels found.
    """

    root: Path
    frame: pd.DataFrame
    classes: list[str]

    @property
    def path(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def labelled(self) -> pd.Series:
        """Rows with a label."""
        return self.frame["label"] != ""

    def targets(self) -> list[int]:
        """Class index of each row, -1 where unlabelled."""
        index = {name: i for i, name in enumerate(self.classes)}
        return [index.get(label, -1) for label in self.frame["label"]]

    def image_paths(self) -> list[Path]:
        return [self.root / p for p in self.frame["image"]]

    def where(self, row: int, column: str) -> str:
        """'manifest.csv line N, column C' for messages about data row ``row``."""
        return f"{self.path} line {int(self.frame['line'].iloc[row])}, column '{column}'"


def class_counts(labels: Iterable[str]) -> dict[str, int]:
    """Particles per label, labelled classes sorted, unlabelled ('') last."""
    counts = Counter(labels)
    ordered = {name: counts[name] for name in sorted(counts) if name != ""}
    if "" in counts:
        ordered[""] = counts[""]
    return ordered


def outside_the_folder(image: str) -> bool:
    """Whether a manifest image path is absolute or climbs out of the dataset folder (``../``)."""
    if PurePosixPath(image).is_absolute() or PureWindowsPath(image).is_absolute() or image.startswith("~"):
        return True
    return posixpath.normpath(image.replace("\\", "/")).split("/")[0] == ".."


def _path_problems(frame: pd.DataFrame, allow_outside: bool) -> list[str]:
    problems = []
    if not allow_outside:
        problems += [f"line {line}, column 'image': '{image}' points outside the dataset folder; image paths must be "
                     "relative to it and stay inside it" for line, image in zip(frame["line"], frame["image"],
                                                                                   strict=True)
                     if image and outside_the_folder(image)]
    key = [posixpath.normpath(image.replace("\\", "/")) for image in frame["image"]]
    first: dict[str, int] = {}
    for line, image, k in zip(frame["line"], frame["image"], key, strict=True):
        if not image:
            continue
        if k in first:
            problems.append(f"lines {first[k]} and {line}, column 'image': the same image '{image}' is listed twice")
        else:
            first[k] = line
    return problems


def warn_similar_classes(path: Path, frame: pd.DataFrame) -> list[str]:
    """Warn about a class of at most ``FEW_PARTICLES`` particles whose name is close to a larger class's
    (``'heaat' has 1 particle; did you mean 'heat'?``). Returns the warnings."""
    counts = frame.loc[frame["label"] != "", "label"].value_counts()
    messages = []
    for name, n in counts.items():
        if n > FEW_PARTICLES:
            continue
        larger = [c for c in counts.index if counts[c] > n and c != name]
        close = difflib.get_close_matches(name, larger, n=1, cutoff=0.75) or [
            c for c in larger if c.strip().lower() == name.strip().lower()]
        if close:
            lines = frame.loc[frame["label"] == name, "line"].tolist()[:5]
            messages.append(f"{path} line(s) {lines}, column 'label': '{name}' has {n} particle{'s' * (n != 1)}; "
                            f"did you mean '{close[0]}' ({counts[close[0]]} particles)?")
    for message in messages:
        log.warning(message)
    return messages


def load_manifest(root: str | Path, *, classes: Sequence[str] | None = None, require_labels: bool = True,
                  check_files: bool = True, allow_outside_paths: bool = False) -> Manifest:
    """Read and validate ``root/manifest.csv``.

    Every problem is reported with file, line and column: a missing folder, manifest or required
    column, empty image paths, missing image files, and labels outside ``classes``. With
    ``require_labels=False`` (prediction, self-supervised pretraining) the ``label`` column may be
    absent or empty.
    """
    root = Path(root).expanduser()
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist. Give the folder that holds {MANIFEST_NAME} "
                        "(e.g. --data.init_args.root=DIR); `python tools/make_synthetic.py --out DIR` makes one.")
    if not path.is_file():
        raise DataError(f"{root} has no {MANIFEST_NAME}. A dataset folder holds {MANIFEST_NAME} "
                        "(columns image,label[,group,sample,...]) and the images it names; the tools/ scripts "
                        "write one from instrument exports.")
    try:
        frame = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: cannot be read as CSV ({err}). Check the file is a comma-separated table "
                        "with a header line.") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    required = REQUIRED_COLUMNS if require_labels else ("image",)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing required column(s) {missing} (found: {list(frame.columns)}). "
                        "Add them to the header; leave 'label' empty for unclassified particles.")
    if "label" not in frame.columns:
        frame["label"] = ""
    for column in TEXT_COLUMNS:
        if column in frame.columns:
            frame[column] = frame[column].fillna("").astype(str).str.strip()
    frame.insert(0, "line", [csv_line(i) for i in range(len(frame))])
    if frame.empty:
        raise DataError(f"{path}: has a header but no rows. Add one row per particle image.")

    problems = [f"line {line}, column 'image': empty path"
                for line, image in zip(frame["line"], frame["image"], strict=True) if not image]
    problems += _path_problems(frame, allow_outside_paths)
    if problems:
        raise _report(path, problems, "A dataset folder holds its images: copy them in and give paths relative to "
                      "it (or set allow_outside_paths: true on the data module), and list each image once.")
    if check_files:
        problems += [f"line {line}, column 'image': file '{image}' not found under {root}"
                     for line, image in zip(frame["line"], frame["image"], strict=True)
                     if image and not (root / image).is_file()]
    if problems:
        raise _report(path, problems, "Fix the paths (relative to the dataset folder) or remove those rows.")

    if "split" in frame.columns:
        normalised = [SPLIT_ALIASES.get(value.lower(), "" if value == "" else None) for value in frame["split"]]
        bad = [f"line {line}, column 'split': '{value}' is not one of {list(SPLIT_NAMES)}"
               for line, value, norm in zip(frame["line"], frame["split"], normalised, strict=True) if norm is None]
        if bad:
            raise _report(path, bad, "Use train, val or test (or leave it empty).")
        frame["split"] = normalised

    found = sorted(set(frame["label"]) - {""})
    if classes is not None:
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise DataError(f"classes {classes} lists a class twice.")
        unknown = [f"line {line}, column 'label': '{label}' is not one of classes {classes}"
                   for line, label in zip(frame["line"], frame["label"], strict=True)
                   if label and label not in classes]
        if unknown:
            raise _report(path, unknown, "Add the label to `classes`, fix the row, or clear its label "
                          "(empty labels are left out of supervised training).")
    else:
        classes = found
    warn_similar_classes(path, frame)
    if require_labels and not found:
        raise DataError(f"{path}: no row has a label, so there is nothing to train or evaluate on. "
                        "Label some particles, or use prediction / self-supervised pretraining.")
    return Manifest(root=root, frame=frame.reset_index(drop=True), classes=list(classes))
