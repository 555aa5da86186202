# The Makefile is the interface to the repo: every target sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHART := charts/prefect-workpool-operator

.PHONY: help venv test unit integration e2e node lint crds docs chart chart-docs describe-docs release bench bench-fleet bench-lookahead demo cluster-up cluster-down tools run \
	install-crds image kind-up kind-load kind-deploy kind-down clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP) ## create .venv with the operator and test dependencies (pinned by constraints.txt)

tools: ## build (once, cached) kube-apiserver, etcd, helm, promtool, helm-docs and the node's kubelet, kube-proxy, kube-controller-manager, kube-scheduler from Go modules
	hack/build-tools.sh

test: venv tools ## all tests: lint contracts, unit, integration (real Prefect), e2e (real kube-apiserver), node (real kubelet, as root)
	$(BIN)/lint-imports
	$(BIN)/pytest -ra --durations=25 $(PYTEST_ARGS)

unit: venv tools ## unit tests only (no servers; helm renders the chart)
	$(BIN)/pytest -ra tests/unit $(PYTEST_ARGS)

integration: venv ## tests against a real Prefect server
	$(BIN)/pytest -ra tests/integration $(PYTEST_ARGS)

e2e: venv tools ## tests against a real kube-apiserver (or the cluster KUBECONFIG names, with E2E_USE_KUBECONFIG=1)
	$(BIN)/pytest -ra tests/e2e $(PYTEST_ARGS)

node: venv tools ## the chart's pod on a real node (kubelet + containerd; needs root): the image, helm install --wait, failover, upgrade
	$(BIN)/pytest -ra tests/node $(PYTEST_ARGS)

lint: venv ## architecture contracts (the decision core stays pure)
	$(BIN)/lint-imports

crds: venv ## regenerate crds/ (and the chart's copy) and docs/policy-reference.md from the pydantic models
	$(BIN)/python -m prefect_workpool_operator.schema.crd > crds/prefectworkpoolpolicies.prefectops.dev.yaml
	cp crds/prefectworkpoolpolicies.prefectops.dev.yaml $(CHART)/crds/
	$(BIN)/python -m prefect_workpool_operator.schema.reference > docs/policy-reference.md

docs: crds ## regenerate the generated docs (same as crds)

chart: venv tools ## lint the chart and run its tests (rendering, every ci/ and example values file, schema, alerts, dashboard, README drift)
	"$$(hack/build-tools.sh | tail -1)/helm" lint --strict $(CHART)
	$(BIN)/pytest -q tests/unit/deploy/test_chart.py tests/unit/deploy/test_argocd_health.py tests/unit/deploy/test_alerts.py tests/unit/deploy/test_dashboard.py

describe-docs: venv tools ## recapture the `kubectl describe` examples in docs/conditions.md (real API server + operator)
	PWO_UPDATE_DOCS=1 $(BIN)/pytest -q tests/e2e/test_describe_docs.py $(PYTEST_ARGS)

chart-docs: tools ## regenerate the chart README's values table from the comments in values.yaml (helm-docs)
	"$$(hack/build-tools.sh | tail -1)/helm-docs" --chart-search-root charts --template-files README.md.gotmpl \
		--sort-values-order file --log-level warning

release: venv tools ## package a release in dist/: chart, wheel, image (hack/image.sh, also without a registry; else podman/buildah), SHA256SUMS (DRAFT=1: undated changelog ok)
	hack/release.sh

bench: venv tools ## benchmarks that print figures: recovery write methods racing a worker; recovery speed, Prefect budget, overload, noisy neighbours, the fleet, Leases lost under a recovering fleet (before/after)
	$(BIN)/python bench/recovery_write_race.py
	$(BIN)/python bench/recovery_fleet.py
	$(BIN)/python bench/prefect_budget.py
	$(BIN)/python bench/prefect_overload.py
	$(BIN)/python bench/neighbours.py
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/lease_under_load.py
	$(BIN)/python bench/lookahead.py

bench-lookahead: venv ## seconds from a scheduled run's start to a worker counted for it, with and without scaling.lookahead
	$(BIN)/python bench/lookahead.py

bench-fleet: venv tools ## the fleet benchmark only (BENCH_POLICIES=200, BENCH_LARGE=1000, BENCH_SECONDS=180)
	$(BIN)/python bench/fleet.py

install-crds: venv ## install or upgrade the CRD in the cluster KUBECONFIG names (Helm never upgrades crds/)
	$(BIN)/kubectl apply --server-side --force-conflicts -f crds/

demo: venv tools ## local sandbox: control plane + Prefect server + operator; DEMO_SECONDS=n stops after n s
	$(BIN)/python hack/demo.py

cluster-up: venv tools ## start a local kube-apiserver + etcd in .cluster/ (prints the KUBECONFIG to export)
	$(BIN)/python hack/cluster.py up

cluster-down: venv ## stop the local control plane
	$(BIN)/python hack/cluster.py down

run: venv ## run the operator against the cluster KUBECONFIG points at
	$(BIN)/python -m prefect_workpool_operator

image: ## build the operator image (a running Docker engine or a private dockerd; debootstrap base without a registry; IMAGE_REPO, IMAGE_TAG)
	hack/image.sh

kind-up: ## create a kind cluster (needs Docker and kind)
	hack/kind-deploy.sh cluster

kind-load: ## load the image into the kind cluster
	hack/kind-deploy.sh load

kind-deploy: ## image + kind cluster + load + helm install: the laptop path
	hack/kind-deploy.sh all

kind-down: ## delete the kind cluster
	hack/kind-deploy.sh down

clean: ## remove virtualenvs and local state (the Go build cache is kept)
	rm -rf $(VENV) .venv-prefect .venv-worker .cluster
