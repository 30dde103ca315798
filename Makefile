# Two commands for a new user:  `make demo`  (pipeline + book)  and  `make test`.
# Both create the environment in .venv first if it is missing or out of date.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
PROFILE ?= quick

# dvc stages call `papermill` and `python`: take them from the environment.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1
# TensorFlow's C++ start-up chatter (no GPU here, oneDNN notes) hides the progress lines
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help env demo test test-fast lint book profile benchmarks dashboard clean

help:
	@echo "make demo      create .venv if needed, run the DVC pipeline, build the book"
	@echo "make test      create .venv if needed, run the test suite"
	@echo "make test-fast the fast lane while you work: no slow tests, all cores (about 3 minutes)"
	@echo "make lint      ruff check + format check"
	@echo "make profile PROFILE=paper   switch params.yaml to another kept profile"
	@echo "make benchmarks              run the speed benchmarks (JSON in benchmarks/results/)"
	@echo "make dashboard [PORT=8866]   serve the dashboard (Voila) on http://127.0.0.1:PORT"

$(STAMP): pyproject.toml constraints.txt
	@echo "==> creating the Python environment in $(VENV) (first time: a few minutes)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar off --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -c constraints.txt -e ".[dev]"
	@touch $(STAMP)
	@echo "==> environment ready"

env: $(STAMP)

demo: env
	$(BIN)/python -m foramlib.tools.cli params check
	$(BIN)/python -m foramlib.tools.cli deps
	@echo "==> running the pipeline (dvc repro): synthesize -> curate -> slice -> split -> train@<backbone> -> book"
	$(BIN)/dvc repro
	@echo "==> done: open book/_build/html/index.html"

# The suite runs in two passes: everything but the browser tests on TEST_WORKERS processes
# (each test file kept on one: tests/conftest.py), then the browser tests alone in one
# process, so that no dashboard page has to render beside the pipeline tests' training
# (with both at once on 2 cores, a page once took over 180 s). Both passes always run;
# the target fails if either did. README, Tests.
TEST_WORKERS ?= 2
XDIST := $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder)
test: env
	@echo "==> lint (ruff), then the test suite (pytest: $(TEST_WORKERS) process(es), then the browser tests in one)"
	$(BIN)/ruff check .
	$(BIN)/python -m foramlib.tools.cli params check
	@status=0; \
	$(BIN)/python -m pytest -m "not browser" $(XDIST) --durations=20 || status=$$?; \
	echo "==> the browser tests, in one process"; \
	$(BIN)/python -m pytest -m browser --durations=10 || status=$$?; \
	exit $$status

# the fast lane: skips the tests marked slow (pipeline runs, browser, long training)
test-fast: env
	$(BIN)/python -m pytest -m "not slow" -n auto -q

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

profile: env
	$(BIN)/python -m foramlib.tools.cli profile $(PROFILE)

benchmarks: env
	$(BIN)/python benchmarks/synthesize_speed.py
	$(BIN)/python benchmarks/split_search.py
	$(BIN)/python benchmarks/slicing_speed.py $(if $(wildcard data/curated/manifest.csv),--collection data/virtual)
	$(BIN)/python benchmarks/train_throughput.py --backbone tiny_cnn mobilenetv3_small mobilenetv3_large efficientnetv2_b0 --input-size 96 $(if $(wildcard data/split/index.csv),--store data/slices --index data/split/index.csv)

# The dashboard (Voila, local only): uses the models/results/index of `dvc repro`.
PORT ?= 8866
dashboard: env
	@test -d models -a -d results/ensemble || echo "==> no trained models yet (models/, results/ensemble/): run 'make demo' (or 'dvc repro') first; the classification page will say so too"
	@test -d data/index || echo "==> no 3D search index yet (data/index/): run 'dvc repro index' first for the matching page"
	$(BIN)/python -m foramlib.app.serve --port $(PORT) --workspace $(CURDIR)

clean:
	rm -rf book/_build book/_generated .pytest_cache .ruff_cache
