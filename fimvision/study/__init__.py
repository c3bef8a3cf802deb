"""Studies: grids of fimvision runs and their reports (``sfda``: the few-shot source-free adaptation grid)."""
