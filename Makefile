# The project's interface: `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
INSTALL_LOG := $(VENV)/install.log
export MLWF_STATE_DIR ?= $(CURDIR)/.state
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
# Scanners (checkov, bandit) in a virtualenv of their own: their pins conflict with the project's.
TOOLS_VENV := .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed
export MLWF_TOOLS_BIN := $(CURDIR)/$(TOOLS_VENV)/bin
# Images: `make images MLWF_REGISTRY=registry.example.com/team` (tag: the short git sha unless MLWF_TAG is set).
MLWF_REGISTRY ?= ghcr.io/mlwf
MLWF_TAG ?=
MLWF_CODE_VERSION ?=
MLWF_BUILDER ?=
MLWF_PLATFORM ?=
IMAGES_RECORD := build/images.json

.DEFAULT_GOAL := help
.PHONY: help install tools demo test lint format test-unit test-integration test-contract compile images bench bench-quick mlflow-ui stop clean crds

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-18s %s\n", $$1, $$2}'

# pip's whole output (notices, warnings a machine's pip config causes) goes to the log; the console gets
# one line, or the log's tail when the install fails.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing mlwf and its pinned dependencies into $(VENV) (log: $(INSTALL_LOG))"
	@$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]' >$(INSTALL_LOG) 2>&1 || \
	  { tail -n 40 $(INSTALL_LOG) >&2; echo "install failed: the whole log is $(INSTALL_LOG)" >&2; exit 1; }
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with every dependency pinned (constraints.txt)

$(TOOLS_STAMP): tools-constraints.txt
	@test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet --disable-pip-version-check -c tools-constraints.txt checkov bandit
	@touch $(TOOLS_STAMP)

tools: $(TOOLS_STAMP) ## Create .venv-tools with checkov and bandit pinned by tools-constraints.txt (the tests run them)

demo: $(STAMP) ## Run the whole pipeline locally on generated demo data and print where to look
	$(BIN)/mlwf demo

test: $(STAMP) $(TOOLS_STAMP) lint ## Run the linters and the whole test suite (unit, contract, integration)
	$(BIN)/python -m pytest -q

lint: $(STAMP) ## ruff (lint + format check) and mypy over components/, pipelines/, serving/ (configured in pyproject.toml)
	$(BIN)/ruff check components pipelines serving tests benchmarks manifests
	$(BIN)/ruff format --check components pipelines serving tests benchmarks manifests
	$(BIN)/mypy

format: $(STAMP) ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix components pipelines serving tests benchmarks manifests
	$(BIN)/ruff format components pipelines serving tests benchmarks manifests

test-unit: $(STAMP) ## Unit tests only (fast)
	$(BIN)/python -m pytest -q tests/unit

test-contract: $(STAMP) $(TOOLS_STAMP) ## Contract tests: compiled pipeline, manifests, Kubernetes API calls
	$(BIN)/python -m pytest -q tests/contract

test-integration: $(STAMP) ## Full pipeline runs under kfp.local and model servers on 127.0.0.1
	$(BIN)/python -m pytest -q tests/integration

compile: $(STAMP) ## Write the pipeline package: pipelines/compiled/training.yaml, or build/training.yaml pinned by digest after `make images`
	@if [ -f $(IMAGES_RECORD) ]; then \
	  set -x; $(BIN)/mlwf compile --out build/training.yaml $$($(BIN)/python -m pipelines.images compile-args --record $(IMAGES_RECORD)); \
	else \
	  set -x; $(BIN)/mlwf compile; \
	fi

images: ## Build and push the components, components-cuda and serving images (and components-spark with MLWF_WITH_SPARK=1); digests -> build/images.json
	$(PYTHON) -m pipelines.images build --registry '$(MLWF_REGISTRY)' --tag '$(MLWF_TAG)' \
	  --code-version '$(MLWF_CODE_VERSION)' --builder '$(MLWF_BUILDER)' --platform '$(MLWF_PLATFORM)' \
	  --record $(IMAGES_RECORD) $(if $(MLWF_WITH_SPARK),--with-spark,)

bench: $(STAMP) ## Every benchmark, full size, each beside its anchor: benchmarks/results.{json,md}
	$(BIN)/python -m benchmarks.run

bench-quick: $(STAMP) ## Every benchmark at a small size (proves they run; CI runs this through the tests)
	$(BIN)/python -m benchmarks.run --quick

drift-demo: $(STAMP) ## Replay drifted traffic to the served champion (after make demo): the monitor detects it and retrains
	$(BIN)/mlwf drift-demo

rollout-demo: $(STAMP) ## Canary a deliberately broken model against the demo's champion and watch it rolled back (BROKEN=errors|slow)
	$(BIN)/mlwf rollout-demo --broken $(or $(BROKEN),errors)

crds: $(STAMP) ## Re-extract manifests/crds/schemas from upstream CRD files: make crds CRD_SOURCE=<folder> (see manifests/crds/PROVENANCE.md)
	@test -n "$(CRD_SOURCE)" || { echo "usage: make crds CRD_SOURCE=<folder of upstream CRD YAMLs, one subfolder per project>" >&2; exit 2; }
	$(BIN)/python manifests/crds/extract.py --source '$(CRD_SOURCE)'

mlflow-ui: $(STAMP) ## The MLflow UI on the local runs (the state directory's SQLite store) at http://127.0.0.1:5000
	@uri="$$($(BIN)/python -c 'from components.core.settings import get_settings; print(get_settings().mlflow_tracking_uri)')" && \
	  echo "$(BIN)/mlflow ui --backend-store-uri $$uri --host 127.0.0.1 --port 5000   (Ctrl-C stops it)" && \
	  exec $(BIN)/mlflow ui --backend-store-uri "$$uri" --host 127.0.0.1 --port 5000

stop: $(STAMP) ## Stop the local model server started by the demo
	$(BIN)/mlwf stop

clean: ## Stop local servers and delete the state directory (MLflow runs, Feast stores, pipeline outputs)
	-@test -x $(BIN)/mlwf && $(BIN)/mlwf stop
	rm -rf $(MLWF_STATE_DIR)
