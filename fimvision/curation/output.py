"""What curation writes into a dataset folder: manifests, skip lists, summaries and copied images; and
the small helpers the export readers share (text decoding, column names).

Every curation tool builds its dataset inside :class:`fimvision.files.OutputFolder`, so the output
appears atomically, is never clobbered without ``overwrite`` and never overlaps an input.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fimvision.console import tqdm_disable
from fimvision.data.manifest import class_counts, load_manifest
from fimvision.errors import CurationError

MANIFEST = "manifest.csv"
SKIPPED = "skipped.csv"
SUMMARY = "curation_summary.json"
# Manifest columns in the order a reader expects them; the rest follow in the order given.
LEADING_COLUMNS = ("image", "label", "particle_id", "image_id", "run", "sample", "group", "split", "fold",
                   "instrument", "mask")


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

    def finish(self, manifest: pd.DataFrame, folder: Path) -> None:
        """Write ``manifest`` into ``folder``, count its particles (per class too) and write this summary."""
        write_manifest(manifest, folder)
        self.written = len(manifest)
        self.classes = class_counts(manifest["label"])
        self.write(folder)

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
        for rel in tqdm(frame[column], desc=f"copy {column}s", unit="file", disable=tqdm_disable(progress), leave=False):
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


def read_text(path: Path) -> str:
    """The text of an instrument export: UTF-8 (with or without a BOM), else Windows-1252 (the
    instruments' software runs on Windows)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def read_export_csv(path: Path, is_header, normalise, *, missing: str, hint: str,
                    **read_csv) -> tuple[pd.DataFrame, int]:
    """An instrument's CSV export whose header is the first of its first 100 lines that ``is_header``
    accepts (exports may put metadata lines above it), with ``normalise``-d unique column names and
    ``line`` (the row's line in the file). Returns the frame and the header's index. Without such a
    line the error says the header ``missing``; ``hint`` says what to do about an unreadable export."""
    lines = read_text(path).splitlines()
    header = next((i for i, line in enumerate(lines[:100]) if is_header(line)), None)
    if header is None:
        raise CurationError(f"no header line {missing} in the first 100 lines", file=path, line=1, hint=hint)
    try:
        frame = pd.read_csv(StringIO("\n".join(lines[header:])), **read_csv)
    except pd.errors.ParserError as err:
        raise CurationError(f"cannot be read as CSV ({err})", file=path, hint=hint) from err
    frame.columns = unique_columns(frame.columns, normalise)
    frame["line"] = np.arange(len(frame)) + header + 2
    return frame, header


def unique_columns(columns, normalise) -> list[str]:
    """``normalise`` applied to each column name, with "_2" appended until no name repeats."""
    names: list[str] = []
    for column in columns:
        name = normalise(column)
        while name in names:
            name += "_2"
        names.append(name)
    return names


def safe_name(name: str, default: str) -> str:
    """``name`` as a file or folder name: runs of characters other than letters, digits, '.', '_' and '-'
    become '_'; ``default`` when nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or default
