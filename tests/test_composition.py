"""Adjusted classify-and-count (ACC) and its bootstrap intervals: exact values, reproducibility, coverage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fimvision.composition import (
    adjusted_fractions,
    bootstrap_adjusted_fractions,
    misclassification_matrix,
    percentile_interval,
    sample_composition,
)

# Validation counts of a 3-class classifier: rows true class, columns predicted.
CONFUSION = np.array([[80, 15, 5],
                      [10, 85, 5],
                      [0, 10, 90]])


def test_misclassification_matrix_is_the_row_shares_transposed():
    m = misclassification_matrix(CONFUSION)
    np.testing.assert_array_equal(m[:, 0], [0.8, 0.15, 0.05])  # P(predicted j | true 0)
    np.testing.assert_array_equal(m[2], [0.05, 0.05, 0.9])
    np.testing.assert_allclose(m.sum(axis=0), 1.0)


def test_a_class_absent_from_validation_is_taken_at_face_value():
    confusion = np.array([[8, 2, 0], [0, 0, 0], [1, 1, 8]])
    m = misclassification_matrix(confusion)
    np.testing.assert_array_equal(m[:, 1], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(m[:, 0], [0.8, 0.2, 0.0])


def test_acc_recovers_the_true_fractions_exactly():
    m = misclassification_matrix(CONFUSION)
    for truth in ([0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.0, 0.4, 0.6], [1.0, 0.0, 0.0]):
        np.testing.assert_allclose(adjusted_fractions(m, m @ np.array(truth)), truth, atol=1e-12)


def test_acc_with_an_identity_confusion_returns_the_raw_fractions():
    q = np.array([0.2, 0.3, 0.5])
    np.testing.assert_allclose(adjusted_fractions(np.eye(3), q), q, atol=1e-12)
    np.testing.assert_allclose(adjusted_fractions(misclassification_matrix(np.diag([5, 7, 9])), q), q, atol=1e-12)


def test_acc_projects_fractions_outside_the_image_onto_the_simplex():
    # Two classes: q = M p has q_0 = 0.3 + 0.5 p_0 <= 0.8, so q = (1, 0) is out of reach; the best p is (1, 0)
    # (unconstrained, M^-1 q = (1.4, -0.4)).
    m2 = np.array([[0.8, 0.3], [0.2, 0.7]])
    np.testing.assert_allclose(np.linalg.solve(m2, [1.0, 0.0]), [1.4, -0.4])
    np.testing.assert_allclose(adjusted_fractions(m2, np.array([1.0, 0.0])), [1.0, 0.0], atol=1e-12)
    # Three classes: the constrained minimiser, checked against a fine grid over the simplex.
    m = misclassification_matrix(CONFUSION)
    q = np.array([0.05, 0.05, 0.9])
    assert (np.linalg.solve(m, q) < 0).any()
    p = adjusted_fractions(m, q)
    assert (p >= 0).all() and p.sum() == pytest.approx(1.0, abs=1e-12)
    grid = np.linspace(0, 1, 401)
    a, b = np.meshgrid(grid, grid)
    inside = a + b <= 1
    candidates = np.stack([a[inside], b[inside], 1 - a[inside] - b[inside]], axis=1)
    best = candidates[np.argmin(((candidates @ m.T - q) ** 2).sum(axis=1))]
    np.testing.assert_allclose(p, best, atol=3e-3)
    assert ((m @ p - q) ** 2).sum() <= ((m @ best - q) ** 2).sum() + 1e-15


def test_acc_is_batched_over_leading_axes():
    m = misclassification_matrix(CONFUSION)
    truths = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    np.testing.assert_allclose(adjusted_fractions(np.stack([m, m]), truths @ m.T), truths, atol=1e-12)


def interval(counts, confusion=CONFUSION, seed=0, n_boot=1000):
    return percentile_interval(bootstrap_adjusted_fractions(counts, confusion, n_boot=n_boot,
                                                            rng=np.random.default_rng(seed)))


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    counts = np.array([600, 300, 100])
    low, high = interval(counts)
    estimate = adjusted_fractions(misclassification_matrix(CONFUSION), counts / counts.sum())
    assert (low <= estimate).all() and (estimate <= high).all() and (low < high).all()
    again = interval(counts)
    np.testing.assert_array_equal(low, again[0])
    np.testing.assert_array_equal(high, again[1])
    assert not np.array_equal(low, interval(counts, seed=1)[0])


def test_bootstrap_interval_shrinks_with_more_particles():
    exact = np.diag([10**6] * 3)  # errors known exactly: only the sample's particles vary
    small = np.subtract(*interval([60, 30, 10], exact)[::-1])
    large = np.subtract(*interval([6000, 3000, 1000], exact)[::-1])
    assert (large < small / 5).all()  # about sqrt(100) = 10 times narrower


def test_bootstrap_propagates_the_validation_counts():
    counts = np.array([6000, 3000, 1000])
    few = np.subtract(*interval(counts, CONFUSION)[::-1])
    many = np.subtract(*interval(counts, CONFUSION * 100)[::-1])
    assert (many < few / 2).all()


def test_interval_covers_the_truth_in_simulation():
    rng = np.random.default_rng(7)
    truth = np.array([0.6, 0.3, 0.1])
    m = misclassification_matrix(CONFUSION)
    covered = np.zeros(3)
    reps = 200
    for _ in range(reps):
        confusion = np.stack([rng.multinomial(200, m[:, i]) for i in range(3)])  # a validation set
        true_counts = rng.multinomial(500, truth)  # a sample, classified through M
        predicted = sum(rng.multinomial(n, m[:, i]) for i, n in enumerate(true_counts))
        low, high = percentile_interval(bootstrap_adjusted_fractions(predicted, confusion, n_boot=300, rng=rng))
        covered += (low <= truth) & (truth <= high)
    # About 0.95; leaving out the validation counts' error (a fixed M) covers only about 0.85.
    assert (covered / reps >= 0.9).all(), covered / reps


def particles(**per_sample):
    """One row a particle: ``sample=[predicted classes]``."""
    return pd.DataFrame([(s, c) for s, labels in per_sample.items() for c in labels], columns=["sample", "predicted"])


def test_sample_composition_counts_and_fractions():
    table = sample_composition(particles(b=["x"] * 3 + ["y"], a=["y"] * 2), ["x", "y", "z"])
    assert table["sample"].tolist() == ["a", "b"]
    assert table[["count_x", "count_y", "count_z"]].to_numpy().tolist() == [[0, 2, 0], [3, 1, 0]]
    assert table[["fraction_x", "fraction_y", "fraction_z"]].to_numpy().tolist() == [[0, 1, 0], [0.75, 0.25, 0]]
    assert not any(c.startswith(("adjusted", "per_ml", "total")) for c in table)


def test_sample_composition_adjusted_and_per_ml():
    confusion = np.array([[90, 10], [20, 80]])
    m = misclassification_matrix(confusion)
    # 1000 particles whose predicted shares are exactly M (0.25, 0.75) = (0.375, 0.625).
    predicted = ["x"] * 375 + ["y"] * 625
    table = sample_composition(particles(v1=predicted, v2=predicted), ["x", "y"], confusion=confusion,
                               volumes={"v1": 0.5, "v2": np.nan}, n_boot=200)
    np.testing.assert_allclose(m @ [0.25, 0.75], [0.375, 0.625])
    np.testing.assert_allclose(table[["adjusted_fraction_x", "adjusted_fraction_y"]].to_numpy(),
                               [[0.25, 0.75]] * 2, atol=1e-12)
    row = table.iloc[0]
    assert row["total_per_ml"] == 2000 and row["per_ml_x"] == 750 and row["per_ml_y"] == 1250
    assert row["adjusted_per_ml_x"] == pytest.approx(500) and row["adjusted_per_ml_y"] == pytest.approx(1500)
    for c in ("x", "y"):
        assert row[f"adjusted_fraction_{c}_low"] < row[f"adjusted_fraction_{c}"] < row[f"adjusted_fraction_{c}_high"]
        assert row[f"adjusted_per_ml_{c}_low"] < row[f"adjusted_per_ml_{c}"] < row[f"adjusted_per_ml_{c}_high"]
    # The per-mL interval adds the Poisson error of the count: wider than the fraction's interval scaled.
    assert (row["adjusted_per_ml_x_high"] - row["adjusted_per_ml_x_low"]
            > 2000 * (row["adjusted_fraction_x_high"] - row["adjusted_fraction_x_low"]))
    assert table.iloc[1][["total_per_ml", "per_ml_x", "adjusted_per_ml_x", "adjusted_per_ml_x_high"]].isna().all()
    # A sample's intervals depend on its own particles and the seed only, not on the other samples.
    alone = sample_composition(particles(v1=predicted), ["x", "y"], confusion=confusion, volumes={"v1": 0.5},
                               n_boot=200)
    pd.testing.assert_series_equal(alone.iloc[0], row, check_names=False)


def test_sample_composition_rejects_a_confusion_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"\(3, 3\) for 2 classes"):
        sample_composition(particles(a=["x"]), ["x", "y"], confusion=CONFUSION)
