"""Writing curated datasets safely: atomic output folders, manifests, skip lists and summaries.

Every curation tool writes through :class:`OutputFolder`: the dataset is built in a hidden temporary
sibling of the output folder and renamed into place only when complete, an existing non-empty
output is refused unless ``overwrite``, and an output that is (or contains, or lies inside) one of
the inputs is refused always, so inputs are never modified.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pandas as pd
from tqdm.auto import tqdm

from fimvision.curation.errors import CurationError

MANIFEST = "manifest.csv"
SKIPPED = "skipped.csv"
SUMMARY = "curation_summary.json"
# Manifest columns in the order a reader expects them; the rest follow in the order given.
LEADING_COLUMNS = ("image", "label", "particle_id", "image_id", "run", "sample", "group", "split", "fold",
                   "instrument", "mask")


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


class OutputFolder:
    """Context manager giving a temporary folder that becomes ``out`` on success.

    On an exception the temporary folder is removed and ``out`` is left as it was. ``inputs`` are
    the files and folders read: an ``out`` that overlaps any of them is refused.
    """

    def __init__(self, out: str | Path, *, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> None:
        self.out = Path(out).expanduser().resolve()
        self.overwrite = overwrite
        self.tmp: Path | None = None
        for source in inputs:
            source = Path(source).expanduser().resolve()
            if _is_within(self.out, source) or _is_within(source, self.out):
                raise CurationError(f"the output folder overlaps the input {source}", file=self.out,
                                    hint="choose an output folder outside the inputs; inputs are never modified")
        if self.out.exists() and not self.out.is_dir():
            raise CurationError("the output exists and is a file, not a folder", file=self.out,
                                hint="choose another --out")
        if self.out.is_dir() and any(self.out.iterdir()) and not overwrite:
            raise CurationError("the output folder exists and is not empty", file=self.out,
                                hint="choose a new folder, or pass --overwrite to replace it")

    def _sibling(self, tag: str) -> Path:
        return self.out.parent / f".{self.out.name}.{tag}-{os.getpid()}-{secrets.token_hex(3)}"

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self._sibling("tmp")
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        assert self.tmp is not None
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.out.exists():
            # Move the old folder aside first, so a failure between the two renames loses nothing.
            old = self._sibling("old")
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@dataclass
class SkipLog:
    """Particles left out of a dataset, each with where it came from and why."""

    rows: list[dict[str, str]] = field(default_factory=list)

    def add(self, source: str | Path, particle: str | int, reason: str) -> None:
        self.rows.append({"source": str(source), "particle": str(particle), "reason": reason})

    def __len__(self) -> int:
        return len(self.rows)

    def reasons(self) -> Counter[str]:
        """How many particles were skipped for each reason (the reason's text before any ':')."""
        return Counter(row["reason"].split(":")[0] for row in self.rows)

    def write(self, folder: Path) -> None:
        pd.DataFrame(self.rows, columns=["source", "particle", "reason"]).to_csv(folder / SKIPPED, index=False)


@dataclass
class Summary:
    """What a curation step did: counts for the printed report and ``curation_summary.json``."""

    tool: str
    out: Path
    written: int = 0
    skipped: SkipLog = field(default_factory=SkipLog)
    classes: dict[str, int] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"tool": self.tool, "out": str(self.out), "written": self.written, "skipped": len(self.skipped),
                "skipped_by_reason": dict(self.skipped.reasons()), "classes": self.classes,
                "details": self.details, "notes": self.notes}

    def write(self, folder: Path) -> None:
        """Write ``curation_summary.json`` and ``skipped.csv`` into ``folder``."""
        (folder / SUMMARY).write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        self.skipped.write(folder)

    def format(self) -> str:
        """The printed report."""
        lines = [f"{self.tool}: wrote {self.written} particle(s) to {self.out}"]
        for key, value in self.details.items():
            if isinstance(value, dict):
                lines.append(f"  {key}:")
                lines += [f"    {k}: {v}" for k, v in value.items()]
            else:
                lines.append(f"  {key}: {value}")
        if self.classes:
            width = max(len(name) for name in self.classes)
            lines.append("  per class:")
            lines += [f"    {name or '(unlabelled)':<{max(width, 12)}} {count:>7}"
                      for name, count in self.classes.items()]
        if len(self.skipped):
            lines.append(f"  skipped {len(self.skipped)} particle(s) (listed in {SKIPPED}):")
            lines += [f"    {reason}: {count}" for reason, count in self.skipped.reasons().most_common()]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def class_counts(labels: Iterable[str]) -> dict[str, int]:
    """Particles per label, labelled classes sorted, unlabelled ('') last."""
    counts = Counter(labels)
    ordered = {name: counts[name] for name in sorted(counts) if name != ""}
    if "" in counts:
        ordered[""] = counts[""]
    return ordered


def order_columns(frame: pd.DataFrame, leading: Sequence[str] = LEADING_COLUMNS) -> pd.DataFrame:
    """``image``, ``label`` and the other standard columns first, then the rest in their order."""
    first = [c for c in leading if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


def write_manifest(frame: pd.DataFrame, folder: Path) -> Path:
    """Write ``folder/manifest.csv`` (standard columns first, no index)."""
    path = folder / MANIFEST
    order_columns(frame).to_csv(path, index=False)
    return path


def load_dataset(root: str | Path) -> pd.DataFrame:
    """A curated dataset's manifest as written (all rows, labelled or not), checked for missing images.

    Text columns are ``str`` with '' for empty; the manifest's line numbers are in column ``line``.
    """
    from fimvision.data.manifest import load_manifest

    return load_manifest(root, require_labels=False, check_files=True).frame


def copy_images(frame: pd.DataFrame, source: Path, target: Path, *, columns: Sequence[str] = ("image", "mask"),
                prefix: str = "", link: bool = False, progress: bool = False) -> pd.DataFrame:
    """Copy (or hard-link) the files a manifest names from ``source`` to ``target``/``prefix``.

    Returns the frame with its paths rewritten relative to ``target``.
    """
    frame = frame.copy()
    for column in columns:
        if column not in frame.columns:
            continue
        new_paths = []
        for rel in tqdm(frame[column], desc=f"copy {column}s", unit="file", disable=not progress, leave=False):
            if not rel:
                new_paths.append(rel)
                continue
            dest_rel = f"{prefix}/{rel}" if prefix else rel
            dest = target / dest_rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if link:
                try:
                    os.link(source / rel, dest)
                except OSError:  # another file system, or links not allowed: copy instead
                    shutil.copyfile(source / rel, dest)
            else:
                shutil.copyfile(source / rel, dest)
            new_paths.append(dest_rel)
        frame[column] = new_paths
    return frame


def unique_columns(columns, normalise) -> list[str]:
    """``normalise`` applied to each column name, with "_2" appended until no name repeats."""
    names: list[str] = []
    for column in columns:
        name = normalise(column)
        while name in names:
            name += "_2"
        names.append(name)
    return names
