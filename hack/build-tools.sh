#!/usr/bin/env bash
# Builds kube-apiserver, etcd, helm, promtool and helm-docs (and, for the node tests, kubelet, kube-proxy,
# kube-controller-manager and kube-scheduler) from the Go modules pinned under hack/tools/ and
# caches the binaries, keyed by a hash of each tools module, so only the first run pays.
# Prints the directory holding the binaries on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${PWO_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prefect-workpool-operator/bin}
mkdir -p "$cache"

build() { # name module-dir package [ldflags] [build tags]
  local name=$1 dir=$2 pkg=$3 ldflags=${4:-} tags=${5:-}
  local key
  # ldflags and tags are part of the key: they carry the versions the binary reports.
  key=$( { cat "$here/tools/$dir/go.mod" "$here/tools/$dir/go.sum"; printf '%s' "$ldflags" "$tags"; } | sha256sum | cut -c1-12)
  local out="$cache/$name-$key"
  # One build of a binary at a time on this machine: a second caller (another checkout, a test
  # starting its own control plane) waits for it instead of compiling the same packages again.
  local lock
  exec {lock}>"$cache/.$name.lock"
  flock "$lock"
  if [ ! -x "$out" ]; then
    echo ">> building $name from $pkg (first run only; on 2 cores kube-apiserver takes ~7 min," \
      "the four node binaries ~8 min together, promtool ~2.5 min, helm-docs ~1 min, helm and etcd a few)" >&2
    local start=$SECONDS
    # Progress for the long build: a dot a minute on stderr. It stops within a second of
    # the flag file going, so no stray `sleep` holds the caller's pipe open.
    local flag; flag=$(mktemp)
    ( n=0; while [ -e "$flag" ]; do sleep 1; n=$((n + 1)); [ $((n % 60)) -ne 0 ] || printf '.' >&2; done ) &
    local ticker=$!
    ( cd "$here/tools/$dir" && CGO_ENABLED=0 go build -trimpath -tags "$tags" -ldflags "-s -w $ldflags" -o "$out.tmp.$$" "$pkg" ) \
      || { rm -f "$flag"; wait "$ticker"; echo "!! build of $name failed" >&2; exit 1; }
    rm -f "$flag"; wait "$ticker" || true
    mv -f "$out.tmp.$$" "$out"  # per-process temp: concurrent builds (two checkouts) never clobber each other
    echo ">> built $name in $((SECONDS - start))s" >&2
  fi
  exec {lock}>&-
  ln -sf "$out" "$cache/$name"
}

# Matches both `require k8s.io/kubernetes vX` and the `\tk8s.io/kubernetes vX // indirect` block form.
kube_version=$(sed -nE 's#^(require )?[[:space:]]*k8s\.io/kubernetes (v[0-9]+\.[0-9]+\.[0-9]+)( .*)?$#\2#p' "$here/tools/kube/go.mod" | head -n1)
# An empty version makes kube-apiserver panic at startup (it parses its own version).
[ -n "$kube_version" ] || { echo "!! no k8s.io/kubernetes version in tools/kube/go.mod" >&2; exit 1; }
kv=${kube_version#v}
pfx=k8s.io/component-base/version
build etcd etcd go.etcd.io/etcd/server/v3
kube_ldflags="-X $pfx.gitVersion=$kube_version -X $pfx.gitMajor=${kv%%.*} -X $pfx.gitMinor=$(echo "$kv" | cut -d. -f2) -X $pfx.gitTreeState=clean"
build kube-apiserver kube k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
# The node (tests/node): the same Kubernetes release, in a module of its own so that adding
# it did not change kube-apiserver's cache key. Skipped with PWO_NODE_TOOLS=0.
node_version=$(sed -nE 's#^(require )?[[:space:]]*k8s\.io/kubernetes (v[0-9]+\.[0-9]+\.[0-9]+)( .*)?$#\2#p' "$here/tools/node/go.mod" | head -n1)
[ "$node_version" = "$kube_version" ] || { echo "!! tools/node has k8s.io/kubernetes $node_version, tools/kube $kube_version" >&2; exit 1; }
if [ "${PWO_NODE_TOOLS:-1}" != 0 ]; then
  for component in kubelet kube-controller-manager kube-scheduler kube-proxy; do
    build "$component" node "k8s.io/kubernetes/cmd/$component" "$kube_ldflags"
  done
fi
# Like helm's own Makefile: the Kubernetes version offline `helm template`/`lint` assume
# comes from the client-go it is built with, and the binary reports its release.
helm_mod=$here/tools/helm/go.mod
helm_version=$(sed -n 's/^[[:space:]]*helm.sh\/helm\/v3 \(v[0-9.]*\).*/\1/p' "$helm_mod" | head -1)
client_minor=$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$helm_mod" | head -1)
[ -n "$helm_version" ] && [ -n "$client_minor" ] || { echo "!! cannot read versions from $helm_mod" >&2; exit 1; }
hp=helm.sh/helm/v3
build helm helm $hp/cmd/helm \
  "-X $hp/internal/version.version=$helm_version -X $hp/pkg/chartutil.k8sVersionMajor=1 \
   -X $hp/pkg/chartutil.k8sVersionMinor=$client_minor -X $hp/pkg/lint/rules.k8sVersionMajor=1 \
   -X $hp/pkg/lint/rules.k8sVersionMinor=$client_minor"
# promtool (`promtool test rules` / `check rules` for the chart's alerts and dashboard). The
# remove_all_sd tag is Prometheus's own switch that leaves out the cloud service discoveries
# promtool never needs here (it still links Kubernetes discovery), which shortens the cold build.
prom_version=$(sed -n 's/^[[:space:]]*github.com\/prometheus\/prometheus \(v[0-9.]*\).*/\1/p' "$here/tools/promtool/go.mod" | head -1)
[ -n "$prom_version" ] || { echo "!! no prometheus version in tools/promtool/go.mod" >&2; exit 1; }
# The Go module v0.316.0 is Prometheus 3.16.0 (v0.<major><2-digit minor>.<patch>).
prom_mm=${prom_version#v0.}; prom_mm=${prom_mm%%.*}
prom_release="${prom_mm:0:1}.$((10#${prom_mm:1})).${prom_version##*.}"
build promtool promtool github.com/prometheus/prometheus/cmd/promtool \
  "-X github.com/prometheus/common/version.Version=$prom_release" remove_all_sd
# helm-docs writes the chart README from the commented values.yaml (`make chart-docs`);
# the tests check the README has not drifted. The version is what its footer prints.
hd_version=$(sed -n 's/^[[:space:]]*github.com\/norwoodj\/helm-docs \(v[0-9.]*\).*/\1/p' "$here/tools/helm-docs/go.mod" | head -1)
[ -n "$hd_version" ] || { echo "!! no helm-docs version in tools/helm-docs/go.mod" >&2; exit 1; }
build helm-docs helm-docs github.com/norwoodj/helm-docs/cmd/helm-docs "-X main.version=${hd_version#v}"
echo "$cache"
