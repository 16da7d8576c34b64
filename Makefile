# Two entry points on a fresh machine:  `make run` (the default pipeline) and `make test`.
# Both create .venv and install everything first. TORCH_SPEC picks the torch build; the default
# pins a release that admits the CPU wheel on machines that provide one locally.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The default pipeline (config.yaml `run:`) with the local profile, then its HTML report. The
# rules call `python -m infoplane`, so the environment's bin folder goes first on PATH.
run: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --workflow-profile workflow/profiles/local
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --workflow-profile workflow/profiles/local \
		--report results/report.html

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf results logs .snakemake
