# The project's interface: `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MLWF_STATE_DIR ?= $(CURDIR)/.state
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true

.DEFAULT_GOAL := help
.PHONY: help install demo test test-unit test-integration test-contract compile bench bench-quick stop clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with every dependency pinned (constraints.txt)

demo: $(STAMP) ## Run the whole pipeline locally on generated demo data and print where to look
	$(BIN)/mlwf demo

test: $(STAMP) ## Run the whole test suite (unit, contract, integration)
	$(BIN)/python -m pytest -q

test-unit: $(STAMP) ## Unit tests only (fast)
	$(BIN)/python -m pytest -q tests/unit

test-contract: $(STAMP) ## Contract tests: compiled pipeline, manifests, Kubernetes API calls
	$(BIN)/python -m pytest -q tests/contract

test-integration: $(STAMP) ## Full pipeline runs under kfp.local and model servers on 127.0.0.1
	$(BIN)/python -m pytest -q tests/integration

compile: $(STAMP) ## Write the pipeline package (pipelines/compiled/training.yaml)
	$(BIN)/mlwf compile

bench: $(STAMP) ## Every benchmark, full size, each beside its anchor: benchmarks/results.{json,md}
	$(BIN)/python -m benchmarks.run

bench-quick: $(STAMP) ## Every benchmark at a small size (proves they run; CI runs this through the tests)
	$(BIN)/python -m benchmarks.run --quick

stop: $(STAMP) ## Stop the local model server started by the demo
	$(BIN)/mlwf stop

clean: ## Stop local servers and delete the state directory (MLflow runs, Feast stores, pipeline outputs)
	-@test -x $(BIN)/mlwf && $(BIN)/mlwf stop
	rm -rf $(MLWF_STATE_DIR)
