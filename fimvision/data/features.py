"""Per-particle numeric features beside the image: which manifest columns, read as one float matrix.

Instrument exports measure every particle (size, shape, intensity, colour); curation writes those
measurements as manifest columns, and the synthetic generator writes the same ones from the rendered
particle. ``features: instrument`` means every numeric column that describes the particle itself, not
bookkeeping: positions in the collage, ids, times, calibration and run constants would let a model
recognise the run rather than the particle, so they are never features.

Values stay raw here (NaN where missing); the model standardises them with statistics of the
training split that its checkpoint keeps (:class:`fimvision.models.fusion.FeatureScaler`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fimvision.data.manifest import TEXT_COLUMNS, Manifest, _report
from fimvision.errors import DataError

# Numeric manifest columns that describe the export, not the particle.
BOOKKEEPING = frozenset({
    "line", "particle_id", "image_id", "fold", "image_x", "image_y", "image_w", "image_h", "src_x", "src_y",
    "src_image", "cal_image", "ppc", "camera", "cal_const_um_per_px", "fringe_size", "elapsed_time_s",
    "timestamp", "date", "time", "volume_imaged_ml", "intensity_calimage", "filter_score", "capture_x",
    "capture_y",
})  # fmt: skip
# The size feature the data module can add from the crop itself (log of its longer side in pixels).
CROP_SIZE = "crop_px"


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series | None:
    """The column as floats, or None when a non-empty value is not a number."""
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values):
        return values.astype(float)
    text = values.astype(str).str.strip().replace({"": np.nan, "nan": np.nan})
    parsed = pd.to_numeric(text, errors="coerce")
    return None if (parsed.isna() & text.notna()).any() else parsed


def instrument_columns(frame: pd.DataFrame) -> list[str]:
    """Every numeric manifest column that measures the particle (not bookkeeping, not constant)."""
    columns = []
    for column in frame.columns:
        if column in TEXT_COLUMNS or column in BOOKKEEPING or column.startswith("prob_"):
            continue
        values = _numeric(frame, column)
        if values is not None and values.notna().any() and values.nunique(dropna=True) > 1:
            columns.append(column)
    return columns


def resolve_features(manifest: Manifest, features: Sequence[str] | str | None) -> list[str]:
    """The manifest columns ``features`` names: a list, ``instrument`` (see :func:`instrument_columns`)
    or None (no features). Unknown or non-numeric columns are an error that lists the usable ones."""
    if features is None:
        return []
    if isinstance(features, str):
        if features != "instrument":
            raise DataError(f"features: '{features}' is neither a list of manifest columns nor 'instrument'. "
                            "Give e.g. [esd_um, aspect_ratio] or `instrument` (every numeric instrument column).")
        found = instrument_columns(manifest.frame)
        if not found:
            raise DataError(f"{manifest.path}: `features: instrument` found no numeric instrument column (columns: "
                            f"{list(manifest.frame.columns)}). Curate the export with its .csv/.lst features, or "
                            "leave features out.")
        return found
    missing = [c for c in features if c not in manifest.frame.columns and c != CROP_SIZE]
    if missing:
        raise DataError(f"{manifest.path}: features {missing} are not manifest columns. Numeric particle columns "
                        f"there: {instrument_columns(manifest.frame) or 'none'}.")
    text = [c for c in features if c != CROP_SIZE and _numeric(manifest.frame, c) is None]
    if text:
        rows = [f"line {manifest.frame['line'].iloc[i]}, column '{c}': '{manifest.frame[c].iloc[i]}' is not a number"
                for c in text for i in np.flatnonzero(pd.to_numeric(manifest.frame[c], errors="coerce").isna()
                                                       & (manifest.frame[c].astype(str).str.strip() != ""))]
        raise _report(manifest.path, rows, "Features must be numeric: fix those cells or leave the column out.")
    if len(set(features)) != len(features):
        raise DataError(f"features {list(features)} lists a column twice.")
    return list(features)


def feature_matrix(manifest: Manifest, columns: Sequence[str], crop_sizes: np.ndarray | None = None) -> np.ndarray:
    """The ``columns`` of every manifest row as float32 (N x F), NaN where a value is missing;
    ``crop_px`` is the log of the crop's longer side (from ``crop_sizes``)."""
    out = np.empty((len(manifest.frame), len(columns)), dtype=np.float32)
    for j, column in enumerate(columns):
        if column == CROP_SIZE:
            if crop_sizes is None:
                raise ValueError("crop_px needs the crop sizes from decoding")
            out[:, j] = np.log(np.maximum(crop_sizes, 1))
        else:
            out[:, j] = _numeric(manifest.frame, column).to_numpy(dtype=np.float32)
    return out
