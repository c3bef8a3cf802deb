"""The class composition of a sample: classify-and-count, corrected for classifier error, with intervals.

A classifier's predicted class fractions ``q`` are biased by its errors: ``q = M p``, where ``p`` are the
true fractions and ``M[j, i] = P(predicted j | true i)`` comes from the validation confusion matrix
``C`` (counts; rows true class, columns predicted): ``M[j, i] = C[i, j] / C[i].sum()``. Adjusted
classify-and-count (ACC; Forman 2008, Saerens et al. 2002) estimates ``p`` as the point of the
probability simplex that best explains ``q``::

    p = argmin ||M p - q||^2  subject to  p >= 0, sum(p) = 1

solved exactly by one non-negative least-squares problem (see :func:`adjusted_fractions`). Percentile
bootstrap intervals propagate both sources of error: the sample's particles and the validation counts.
Everything here is pure numpy / pandas; ``fimvision.prediction`` writes the results.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import nnls


def misclassification_matrix(confusion: np.ndarray) -> np.ndarray:
    """``M[..., j, i] = P(predicted j | true i)`` from confusion counts ``C[..., i, j]`` (rows true class).

    A true class without validation particles (a row of zeros) gets the column of a perfectly recognised
    class (``M[:, i] = e_i``): with no evidence of its errors, its predictions are taken at face value.
    Leading axes are a batch (e.g. bootstrap replicates).
    """
    counts = np.asarray(confusion, dtype=float)
    if counts.ndim < 2 or counts.shape[-1] != counts.shape[-2] or (counts < 0).any():
        raise ValueError(f"a confusion matrix is square and non-negative; got shape {counts.shape}")
    totals = counts.sum(axis=-1, keepdims=True)
    rates = np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), np.eye(counts.shape[-1]))
    return np.swapaxes(rates, -1, -2)


def adjusted_fractions(misclassification: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """ACC: the true class fractions ``p`` on the simplex that minimise ``||M p - q||`` (batched).

    ``misclassification``: ``M`` (..., K, K), columns true class; ``observed``: predicted fractions ``q``
    (..., K), summing to 1. Exact: on the simplex ``M p - q = (M - q 1ᵀ) p``, and the non-negative
    least-squares solution ``u`` of ``||(M - q 1ᵀ) u||² + (1ᵀu - 1)²`` is a positive multiple of the
    constrained minimiser (for ``u = t p`` the objective is ``t² r + (t - 1)²``, whose minimum over ``t``,
    ``r / (1 + r)``, grows with ``r = ||M p - q||²``), so ``p = u / 1ᵀu``. When ``q`` lies in ``M``'s image
    on the simplex, ``p`` solves ``M p = q`` exactly; otherwise it is the best fit with fractions >= 0.
    """
    m = np.asarray(misclassification, dtype=float)
    q = np.asarray(observed, dtype=float)
    k = m.shape[-1]
    batch = np.broadcast_shapes(m.shape[:-2], q.shape[:-1])
    system = np.concatenate([np.broadcast_to(m - q[..., :, None], (*batch, k, k)),
                             np.ones((*batch, 1, k))], axis=-2).reshape(-1, k + 1, k)
    target = np.zeros(k + 1)
    target[-1] = 1.0
    solved = np.empty((len(system), k))
    for b, a in enumerate(system):
        u, _ = nnls(a, target)
        solved[b] = u / u.sum()
    return solved.reshape(*batch, k)


def bootstrap_adjusted_fractions(predicted_counts: Sequence[int], confusion: np.ndarray, *, n_boot: int = 1000,
                                 rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` bootstrap replicates (n_boot, K) of the ACC fractions of one sample.

    Each replicate resamples the sample's predicted labels (multinomial with its own counts) and each true-class
    row of the validation confusion matrix (multinomial with that row's counts), then solves ACC again.
    """
    counts = np.asarray(predicted_counts, dtype=np.int64)
    matrix = np.asarray(confusion, dtype=np.int64)
    n = int(counts.sum())
    if n <= 0:
        raise ValueError("a sample with no particles has no composition")
    rows = matrix.sum(axis=1)
    row_shares = np.where(rows[:, None] > 0, matrix / np.maximum(rows, 1)[:, None], 1.0 / len(rows))
    resampled_counts = rng.multinomial(n, counts / n, size=n_boot)
    resampled_confusion = rng.multinomial(rows, row_shares, size=(n_boot, len(rows)))
    return adjusted_fractions(misclassification_matrix(resampled_confusion), resampled_counts / n)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The ``level`` percentile interval of bootstrap ``replicates`` along the first axis: (low, high)."""
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return low, high


def sample_seed(seed: int, sample: str) -> np.random.Generator:
    """A generator of its own for one sample: its intervals do not depend on which other samples are predicted."""
    return np.random.default_rng([seed, zlib.crc32(str(sample).encode())])


def sample_composition(predictions: pd.DataFrame, classes: Sequence[str], *, confusion: np.ndarray | None = None,
                       volumes: Mapping[str, float] | pd.Series | None = None, n_boot: int = 1000,
                       level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One row a sample (sorted): its predicted class composition, ACC-adjusted, and per mL.

    ``predictions``: one row a particle with ``sample`` and ``predicted`` (a class name). Columns:
    ``count_<c>``, ``fraction_<c>``; with ``confusion`` (K x K validation counts, rows true, class order
    ``classes``) ``adjusted_fraction_<c>`` and its ``_low``/``_high`` bootstrap interval; with ``volumes``
    (imaged mL per sample; NaN where unknown) ``total_per_ml``, ``per_ml_<c>`` and, with ``confusion``,
    ``adjusted_per_ml_<c>`` with its interval, which adds the Poisson error of the particle count.
    """
    classes = list(classes)
    counts = (pd.crosstab(predictions["sample"], pd.Categorical(predictions["predicted"], categories=classes),
                          dropna=False).reindex(columns=classes, fill_value=0).sort_index())
    n = counts.sum(axis=1).to_numpy()
    table = pd.DataFrame({"sample": counts.index})
    for c in classes:
        table[f"count_{c}"] = counts[c].to_numpy()
    for c in classes:
        table[f"fraction_{c}"] = counts[c].to_numpy() / n
    volume = (None if volumes is None else
              pd.Series(volumes, dtype=float).reindex(counts.index).to_numpy())
    if confusion is not None:
        confusion = np.asarray(confusion)
        if confusion.shape != (len(classes), len(classes)):
            raise ValueError(f"the confusion matrix is {confusion.shape} for {len(classes)} classes")
        adjusted = adjusted_fractions(misclassification_matrix(confusion), counts.to_numpy() / n[:, None])
        bounds = np.empty((len(counts), 4, len(classes)))  # fraction low, high; per mL low, high
        for s, (name, row) in enumerate(zip(counts.index, counts.to_numpy(), strict=True)):
            rng = sample_seed(seed, name)
            replicates = bootstrap_adjusted_fractions(row, confusion, n_boot=n_boot, rng=rng)
            bounds[s, :2] = percentile_interval(replicates, level)
            if volume is not None:
                total = rng.poisson(n[s], size=(n_boot, 1))  # the particle count in the imaged volume
                bounds[s, 2:] = percentile_interval(total * replicates / volume[s], level)
        for i, c in enumerate(classes):
            table[f"adjusted_fraction_{c}"] = adjusted[:, i]
            table[f"adjusted_fraction_{c}_low"] = bounds[:, 0, i]
            table[f"adjusted_fraction_{c}_high"] = bounds[:, 1, i]
    if volume is not None:
        table["total_per_ml"] = n / volume
        for c in classes:
            table[f"per_ml_{c}"] = counts[c].to_numpy() / volume
        if confusion is not None:
            for i, c in enumerate(classes):
                table[f"adjusted_per_ml_{c}"] = n * adjusted[:, i] / volume
                table[f"adjusted_per_ml_{c}_low"] = bounds[:, 2, i]
                table[f"adjusted_per_ml_{c}_high"] = bounds[:, 3, i]
    return table
