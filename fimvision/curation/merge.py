"""Merging curated datasets (several runs, products or instruments) into one dataset folder.

Each source's images go under a folder named after the source (``<source>/images/...``), a ``source``
column records where each row came from, and ``group`` is set per source when given (e.g. the
antibody of each run). Columns are the union of the sources' columns; missing text values are empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fimvision.curation.output import Summary, copy_images, load_dataset, safe_name
from fimvision.errors import CurationError
from fimvision.files import OutputFolder

TEXT = ("image", "label", "group", "sample", "split", "instrument", "particle_id", "image_id", "run", "mask", "source")


def merge_datasets(datasets: Sequence[str | Path], out: str | Path, *, groups: Sequence[str] | None = None,
                   overwrite: bool = False, link: bool = False, progress: bool = True) -> Summary:
    """Merge ``datasets`` into ``out``; ``groups`` (one a dataset) sets each one's ``group`` column."""
    roots = [Path(d).expanduser().resolve() for d in datasets]
    if len(roots) < 1:
        raise CurationError("no dataset given", hint="give two or more curated dataset folders")
    if len(set(roots)) != len(roots):
        raise CurationError("a dataset is given twice", hint="give each dataset folder once")
    if groups is not None and len(groups) != len(roots):
        raise CurationError(f"{len(groups)} group name(s) for {len(roots)} dataset(s)",
                            hint="give one --groups name a dataset, in the same order")
    names: list[str] = []
    for root in roots:
        name = safe_name(root.name, "dataset")
        base, k = name, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    summary = Summary(tool="merge_datasets", out=Path(out).expanduser().resolve())
    frames = []
    with OutputFolder(out, overwrite=overwrite, inputs=roots) as tmp:
        for i, (root, name) in enumerate(zip(roots, names, strict=True)):
            frame = load_dataset(root).drop(columns=["line"])
            if groups is not None:
                frame["group"] = groups[i]
            frame = copy_images(frame, root, tmp, prefix=name, link=link, progress=progress)
            frame["source"] = name + "/" + frame["source"].astype(str) if "source" in frame.columns else name
            frames.append(frame)
            group_text = ", ".join(sorted(set(frame["group"]) - {""})) if "group" in frame.columns else ""
            summary.details[name] = f"{len(frame)} particle(s)" + (f", group {group_text}" if group_text else "")
        merged = pd.concat(frames, ignore_index=True, sort=False)
        for column in TEXT:
            if column in merged.columns:
                merged[column] = merged[column].fillna("").astype(str)
        label_sets = [set(f["label"]) - {""} for f in frames]
        every = set().union(*label_sets)
        partial = sorted(c for c in every if not all(c in s for s in label_sets))
        if partial:
            summary.notes.append(f"class(es) {partial} are missing from some sources")
        if "group" not in merged.columns or (merged["group"] == "").any():
            summary.notes.append("some rows have no group; give --groups to set one a dataset")
        summary.finish(merged, tmp)
    return summary
