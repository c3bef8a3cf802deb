"""Where FlowCam particles get labels and groups: a label CSV, a folder per class of crops, the run's
``.cla``, and a group CSV mapping runs to groups."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fimvision.curation.flowcam.formats import GUID
from fimvision.curation.flowcam.metadata import read_cla
from fimvision.curation.flowcam.runs import FlowCamRun
from fimvision.errors import CurationError
from fimvision.imageio import IMAGE_SUFFIXES


def labels_from_folders(root: str | Path) -> dict[str, str]:
    """Image id (GUID, upper case) -> class, from a folder-per-class export of crops.

    Each subfolder of ``root`` is a class; a crop is matched by the GUID in its file name.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CurationError("label folder not found", file=root, hint="give the folder holding one subfolder a class")
    labels: dict[str, str] = {}
    where: dict[str, Path] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            match = GUID.search(path.name)
            if not match:
                continue
            key = match.group(0).upper()
            if key in labels and labels[key] != folder.name:
                raise CurationError(f"image id {key} is in class '{folder.name}' and in class '{labels[key]}' "
                                    f"({where[key]})", file=path, hint="keep each particle in one class folder")
            labels[key], where[key] = folder.name, path
    if not labels:
        raise CurationError("no crop file name holds an image id (GUID)", file=root,
                            hint="crops must be named like RUN_<GUID>.png inside one folder a class")
    return labels


def _read_table(path: Path, required_any: Sequence[Sequence[str]], what: str) -> pd.DataFrame:
    if not path.is_file():
        raise CurationError(f"{what} not found", file=path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise CurationError(f"cannot be read as CSV ({err})", file=path, hint="give a comma-separated table with a header") from err
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    for option in required_any:
        if all(c in frame.columns for c in option):
            break
    else:
        wanted = " or ".join("+".join(o) for o in required_any)
        raise CurationError(f"{what} needs columns {wanted}; found {list(frame.columns)}", file=path, line=1,
                            hint="fix the header")
    for column in frame.columns:
        frame[column] = frame[column].str.strip()
    frame["line"] = np.arange(len(frame)) + 2
    return frame


def labels_from_csv(path: str | Path) -> pd.DataFrame:
    """A label table: ``label`` with ``image_id``, or with ``particle_id`` (and ``run`` for several runs)."""
    path = Path(path).expanduser()
    frame = _read_table(path, [("image_id", "label"), ("particle_id", "label")], "the label CSV")
    key = ["image_id"] if "image_id" in frame.columns else ["run", "particle_id"] if "run" in frame.columns else ["particle_id"]
    if key == ["image_id"]:
        frame["image_id"] = frame["image_id"].str.upper()
    keys = frame[key].astype(str).agg("|".join, axis=1)
    first: dict[str, tuple[str, int]] = {}
    for k, label, line in zip(keys, frame["label"], frame["line"], strict=True):
        if k in first and first[k][0] != label:
            raise CurationError(f"{'/'.join(key)} {k} has two labels ('{first[k][0]}' on line {first[k][1]} and "
                                f"'{label}')", file=path, line=int(line), column="label", hint="keep one label a particle")
        first.setdefault(k, (label, int(line)))
    frame = frame.drop_duplicates(key)
    frame.attrs["path"] = str(path)
    return frame


def groups_from_csv(path: str | Path) -> pd.DataFrame:
    """A run table: ``run`` and ``group``, optionally ``sample``, one row a run."""
    path = Path(path).expanduser()
    frame = _read_table(path, [("run", "group")], "the group CSV")
    return frame.drop_duplicates("run")


def labels_for_run(run: FlowCamRun, table: pd.DataFrame, label_table: pd.DataFrame | None,
                    folder_labels: dict[str, str] | None, classification: str | None, n_runs: int,
                    notes: list[str]) -> pd.Series:
    if label_table is not None:
        if "image_id" in label_table.columns:
            mapping = dict(zip(label_table["image_id"], label_table["label"], strict=True))
            return table["image_id"].astype(str).str.upper().map(mapping).fillna("")
        rows = label_table
        if "run" in rows.columns:
            rows = rows[rows["run"] == run.name]
        elif n_runs > 1:
            raise CurationError("the label CSV maps particle ids but has no 'run' column, and particle ids repeat "
                                "between runs", file=label_table.attrs.get("path"),
                                hint="add a 'run' column or use 'image_id' (the GUID)")
        mapping = dict(zip(pd.to_numeric(rows["particle_id"], errors="coerce"), rows["label"], strict=True))
        return table["particle_id"].map(mapping).fillna("")
    if folder_labels is not None:
        if "image_id" not in table.columns:
            raise CurationError("the .lst has no image_id (GUID) column to match crops by", file=run.lst,
                                hint="use --label-csv with particle ids instead")
        return table["image_id"].astype(str).str.upper().map(folder_labels).fillna("")
    if run.cla is None:
        notes.append(f"{run.name}: no .cla; all particles are unlabelled")
        return pd.Series("", index=table.index)
    classifications = read_cla(run.cla)
    if not classifications:
        notes.append(f"{run.name}: the .cla holds no classification; all particles are unlabelled")
        return pd.Series("", index=table.index)
    chosen = classifications[0]
    if classification is not None:
        named = [c for c in classifications if c.name == classification]
        if not named:
            raise CurationError(f"no classification named '{classification}' (found: "
                                f"{[c.name for c in classifications]})", file=run.cla, hint="check --classification")
        chosen = named[0]
    mapping = chosen.labels()
    unknown = set(mapping) - set(table["particle_id"])
    if unknown:
        notes.append(f"{run.name}: {len(unknown)} particle id(s) of {run.cla.name} are not in the .lst "
                     f"(e.g. {sorted(unknown)[:3]})")
    return table["particle_id"].map(mapping).fillna("")
