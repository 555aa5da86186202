# The Makefile is the interface to the repo: every target sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv test unit integration e2e lint crds check-crds demo cluster-up cluster-down tools run clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP) ## create .venv with the operator and test dependencies (pinned by constraints.txt)

tools: ## build (once, cached) kube-apiserver, etcd and helm from Go modules
	hack/build-tools.sh

test: venv tools ## all tests: lint contracts, unit, integration (real Prefect), e2e (real kube-apiserver)
	$(BIN)/lint-imports
	$(BIN)/pytest -ra $(PYTEST_ARGS)

unit: venv ## unit tests only (no servers)
	$(BIN)/pytest -ra tests/unit $(PYTEST_ARGS)

integration: venv ## tests against a real Prefect server
	$(BIN)/pytest -ra tests/integration $(PYTEST_ARGS)

e2e: venv tools ## tests against a real kube-apiserver (or the cluster KUBECONFIG names, with E2E_USE_KUBECONFIG=1)
	$(BIN)/pytest -ra tests/e2e $(PYTEST_ARGS)

lint: venv ## architecture contracts (the decision core stays pure)
	$(BIN)/lint-imports

crds: venv ## regenerate crds/ from the pydantic models
	$(BIN)/python -m prefect_workpool_operator.crd > crds/prefectworkpoolpolicies.prefectops.dev.yaml

demo: venv tools ## local sandbox: control plane + Prefect server + operator; DEMO_SECONDS=n stops after n s
	$(BIN)/python hack/demo.py

cluster-up: venv tools ## start a local kube-apiserver + etcd in .cluster/ (prints the KUBECONFIG to export)
	$(BIN)/python hack/cluster.py up

cluster-down: venv ## stop the local control plane
	$(BIN)/python hack/cluster.py down

run: venv ## run the operator against the cluster KUBECONFIG points at
	$(BIN)/python -m prefect_workpool_operator

clean: ## remove virtualenvs and local state (the Go build cache is kept)
	rm -rf $(VENV) .venv-prefect .cluster
