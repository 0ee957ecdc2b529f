# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and (re)installs the project when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
# Flower (for the SecAgg+ comparison) lives in its own venv: its pins (typer, rich, ray) must not
# constrain privrec's environment.
FLWR_VENV := .venv-flwr
FLWR_STAMP := $(FLWR_VENV)/.installed
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba

.PHONY: demo serve test lint typecheck bench bench-quick clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# After installing, compile every numba kernel into $(NUMBA_CACHE_DIR) (about 2 min once), the
# folder the tests, `make demo` and the CLI under make read: no test pays for a cold compile.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m privrec.models.warm --quiet
	@touch $@

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/privrec demo
	PRIVREC=$(CURDIR)/$(VENV)/bin/privrec PYTHON=$(CURDIR)/$(PY) bash examples/governance/demo.sh

# The service and dashboard on a demo world in .serve-demo/ (built once; keys printed).
SERVE_DIR ?= .serve-demo
serve: $(STAMP)
	$(PY) -m privrec.serve.demo $(SERVE_DIR)
	$(VENV)/bin/privrec serve --db sqlite:///$(CURDIR)/$(SERVE_DIR)/privrec.db \
		--models $(SERVE_DIR)/models --datasets $(SERVE_DIR)/datasets.toml

test: $(STAMP) lint
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

$(FLWR_STAMP):
	$(PYTHON) -m venv $(FLWR_VENV)
	$(FLWR_VENV)/bin/pip install --quiet "flwr[simulation]>=1.20,<2"
	@touch $@

bench: $(BENCH_STAMP) $(FLWR_STAMP)
	PRIVREC_FLWR_PYTHON=$(CURDIR)/$(FLWR_VENV)/bin/python $(PY) benchmarks/run.py

bench-quick: $(BENCH_STAMP)
	$(PY) benchmarks/run.py --quick

clean:
	rm -rf $(VENV) $(FLWR_VENV) $(SERVE_DIR) .cache .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
