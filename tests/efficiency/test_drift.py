"""Weight drift: rows (max-abs, scipy's Wasserstein distance), run comparison and slopes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from fimvision.efficiency.drift import MODEL, compare_runs, slopes, weight_drift


@pytest.mark.parametrize("shape", [(50, 40), (777,), (3, 5, 7)])
def test_drift_rows_use_scipys_wasserstein(shape):
    g = torch.Generator().manual_seed(sum(shape))
    a = {"w": torch.randn(shape, generator=g), "b": torch.randn(9, generator=g)}
    b = {"w": torch.randn(shape, generator=g) * 1.3 + 0.2, "b": a["b"].clone()}
    rows = {r["tensor"]: r for r in weight_drift(a, b)}
    values = {k: (a[k].double().reshape(-1).numpy(), b[k].double().reshape(-1).numpy()) for k in a}
    assert rows["w"]["wasserstein"] == pytest.approx(wasserstein_distance(*values["w"]), rel=1e-12)
    assert rows["b"]["wasserstein"] == 0.0 and rows["b"]["max_abs"] == 0.0
    whole = [np.concatenate([values["w"][i], values["b"][i]]) for i in (0, 1)]
    assert rows[MODEL]["wasserstein"] == pytest.approx(wasserstein_distance(*whole), rel=1e-6)


def test_weight_drift_rows():
    a = {"w": torch.zeros(4), "b": torch.tensor([1.0, 2.0])}
    b = {"w": torch.tensor([0.0, 0.0, 0.5, 0.0]), "b": torch.tensor([1.0, 2.0])}
    rows = {r["tensor"]: r for r in weight_drift(a, b)}
    assert rows["w"]["max_abs"] == 0.5 and rows["w"]["wasserstein"] == pytest.approx(0.125)
    assert rows["b"]["max_abs"] == 0.0 and rows["b"]["wasserstein"] == 0.0
    assert rows[MODEL]["max_abs"] == 0.5 and rows[MODEL]["numel"] == 6
    assert rows[MODEL]["wasserstein"] == pytest.approx(0.5 / 6)


def test_compare_runs_and_slopes(tmp_path):
    for run, growth in (("a", 0.0), ("b", 0.01)):
        (tmp_path / run).mkdir()
        for step in (0, 10, 20):
            torch.save({"w": torch.arange(5.0) + growth * step}, tmp_path / run / f"step_{step:07d}.pt")
    rows = [{"pair": "p", **r} for r in compare_runs(tmp_path / "a", tmp_path / "b")]
    model = [r for r in rows if r["tensor"] == MODEL]
    assert [r["step"] for r in model] == [0, 10, 20]
    assert [r["max_abs"] for r in model] == pytest.approx([0.0, 0.1, 0.2])
    assert slopes(rows)["p"]["max_abs"] == pytest.approx(0.01)
    assert slopes(rows)["p"]["wasserstein"] == pytest.approx(0.01)
    assert np.isfinite(model[-1]["wasserstein"])
