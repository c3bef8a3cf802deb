"""Studies: grids of ordinary `fimvision` runs (``config``), run and resumed (``runner``), reported (``report``);
the `fimvision-study` command (``cli``)."""
