# `make demo` and `make test` each create .venv when it is missing.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fimvision-installed
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= disabled

.PHONY: demo test test-fast bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned: these wheels lie on this machine's disk; an unpinned torch pulls a newer multi-GB build
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/fimvision-demo

# Two workers for two cores. Work stealing: each worker starts on its half of the tests, in file order, and
# one that runs out takes half of the other's queue, so a heavy file is shared instead of serialising the run
# (a session or module fixture is built at most once per worker). `make test-fast` leaves out @slow tests.
PYTEST := $(PY) -m pytest -q -n 2 --dist worksteal

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/data_pipeline.py
	$(PY) benchmarks/fit_throughput.py
	$(PY) benchmarks/synthetic_speed.py

lint: $(STAMP)
	$(VENV)/bin/ruff check fimvision tools tests benchmarks

clean:
	rm -rf $(VENV)
