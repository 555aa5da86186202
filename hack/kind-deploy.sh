#!/usr/bin/env bash
# The laptop path, for machines with a Docker engine (CI has none; tests/e2e/test_helm.py
# checks the same chart against a real API server instead): build the operator image,
# start a kind cluster, load the image into it, install the chart.
#
#   hack/kind-deploy.sh [all|image|cluster|load|install|down] [extra helm args...]
#
# Needs docker, kind, kubectl and helm on PATH (HELM=/path/to/helm to use another).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-prefect-workpool-operator}
IMAGE_REPO=${IMAGE_REPO:-prefect-workpool-operator}
IMAGE_TAG=${IMAGE_TAG:-dev}
NAMESPACE=${NAMESPACE:-prefect-workpool-operator}
RELEASE=${RELEASE:-prefect-workpool-operator}
HELM=${HELM:-helm}
CHART=charts/prefect-workpool-operator

# kind loads from the engine that answers, so the build must use it too (no private dockerd).
image() {
  docker info >/dev/null 2>&1 || { echo "!! no Docker engine answers (kind needs one)" >&2; exit 1; }
  IMAGE_REPO=$IMAGE_REPO IMAGE_TAG=$IMAGE_TAG hack/image.sh >/dev/null
}

cluster() {
  kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER"
}

load() { kind load docker-image "$IMAGE_REPO:$IMAGE_TAG" --name "$CLUSTER"; }

install() {
  # Helm never upgrades crds/: apply the CRD first, so re-runs pick up schema changes.
  kubectl --context "kind-$CLUSTER" apply --server-side --force-conflicts -f "$CHART/crds/"
  "$HELM" upgrade --install "$RELEASE" "$CHART" --kube-context "kind-$CLUSTER" \
    --namespace "$NAMESPACE" --create-namespace \
    --set image.repository="$IMAGE_REPO" --set image.tag="$IMAGE_TAG" --set image.pullPolicy=Never \
    --wait --timeout 3m "$@"
  kubectl --context "kind-$CLUSTER" --namespace "$NAMESPACE" get pods
}

down() { kind delete cluster --name "$CLUSTER"; }

step=${1:-all}
shift || true
case "$step" in
  all) image; cluster; load; install "$@" ;;
  image | cluster | load | down) "$step" ;;
  install) install "$@" ;;
  *) echo "usage: $0 [all|image|cluster|load|install|down] [extra helm args...]" >&2; exit 2 ;;
esac
