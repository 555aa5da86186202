#!/usr/bin/env bash
# `make image`: build the operator image with or without a container registry.
#
#   hack/image.sh [build]        build ${IMAGE_REPO:-prefect-workpool-operator}:${IMAGE_TAG:-dev}
#   hack/image.sh save [FILE]    build, then `docker save` it to FILE (a docker-archive tar that
#                                `ctr -n k8s.io images import` takes); IMAGE_SAVE=FILE does the same
#   hack/image.sh probe          exit 0 when this machine can build (an engine answers, or one
#                                can be started here); starts nothing
#
# The engine: the one `docker info` reaches, else a private dockerd started for this build only
# (own socket, state under the cache dir, no networking changes) and stopped afterwards.
# The base: PYTHON_IMAGE if set, else the Dockerfile's default where it exists or can be pulled,
# else a Debian bookworm base made with debootstrap and `docker import` (cached by a key of suite,
# packages and the machine's CA bundle). PWO_IMAGE_BASE=debootstrap skips the pull attempt;
# PWO_IMAGE_BASE=official refuses the fallback. VERSION sets the image's version label.
# Progress goes to stderr; the last stdout line is the image reference.
set -euo pipefail
cd "$(dirname "$0")/.."

REPO=${IMAGE_REPO:-prefect-workpool-operator}
TAG=${IMAGE_TAG:-dev}
REF=$REPO:$TAG
CACHE=${PWO_TOOLS_CACHE:-$HOME/.cache/prefect-workpool-operator}
DOCKER=${DOCKER:-docker}
CA_BUNDLE=${PWO_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
# Bump when the base recipe below changes, so cached bases are rebuilt.
BASE_RECIPE=1
OFFICIAL=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile | head -1)

say() { echo ">> $*" >&2; }
fail() { echo "!! $*" >&2; exit 1; }
t0=$SECONDS
step_start=$SECONDS
step() { say "$1 ($((SECONDS - step_start))s)"; step_start=$SECONDS; }

engine_answers() { timeout 20 "$DOCKER" info >/dev/null 2>&1; }
can_start_dockerd() { [ "$(id -u)" = 0 ] && { command -v dockerd >/dev/null || command -v apt-get >/dev/null; }; }

cmd=${1:-build}
save_to=${IMAGE_SAVE:-}
case "$cmd" in
  build) ;;
  save) save_to=${2:-${save_to:-$CACHE/images/${REPO//\//_}-$TAG.tar}} ;;
  probe) if engine_answers || can_start_dockerd; then exit 0; else exit 1; fi ;;
  *) echo "usage: $0 [build|save [FILE]|probe]" >&2; exit 2 ;;
esac

# --- the engine --------------------------------------------------------------------------
private=""
build_net=()
if ! engine_answers; then
  can_start_dockerd || fail "no Docker engine answers and none can be started here (needs root and dockerd)"
  command -v dockerd >/dev/null && command -v "$DOCKER" >/dev/null || hack/node-deps.sh
  mkdir -p "$CACHE/docker"
  # One private daemon per data root: concurrent builds wait for each other.
  exec 9>"$CACHE/docker/lock"
  flock -w 1800 9 || fail "another build holds $CACHE/docker/lock"
  run=/run/pwo-image
  mkdir -p "$run"
  private=$run/docker.sock
  # --bridge=none etc.: the daemon creates no bridge, no iptables rules, no sysctl changes.
  dockerd --host "unix://$private" --data-root "$CACHE/docker/data" --exec-root "$run/exec" \
    --pidfile "$run/dockerd.pid" --bridge=none --iptables=false --ip-masq=false --ip-forward=false \
    >"$CACHE/docker/dockerd.log" 2>&1 9>&- &
  dockerd_pid=$!
  stop_dockerd() {
    kill -TERM "$dockerd_pid" 2>/dev/null || return 0
    for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || return 0; sleep 0.5; done
    kill -KILL "$dockerd_pid" 2>/dev/null || true
  }
  trap stop_dockerd EXIT
  export DOCKER_HOST=unix://$private
  for _ in $(seq 60); do
    engine_answers && break
    kill -0 "$dockerd_pid" 2>/dev/null || fail "dockerd exited: see $CACHE/docker/dockerd.log"
    sleep 0.5
  done
  engine_answers || fail "dockerd did not answer within 30s: see $CACHE/docker/dockerd.log"
  # No bridge: RUN steps share the host's network (pip needs it); the legacy builder ships with
  # dockerd 20.10 and needs no buildx plugin.
  build_net=(--network host)
  export DOCKER_BUILDKIT=0
  step "engine: private dockerd (data in $CACHE/docker/data)"
else
  step "engine: the one that answers ($("$DOCKER" info --format '{{.ServerVersion}}' 2>/dev/null))"
fi

# --- the base ----------------------------------------------------------------------------
have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

debootstrap_base() {
  local ca_hash="none" key name root
  [ -r "$CA_BUNDLE" ] && ca_hash=$(sha256sum <"$CA_BUNDLE" | cut -c1-64)
  key=$(printf '%s\n' "$BASE_RECIPE" "$SUITE" "$PACKAGES" "$ca_hash" | sha256sum | cut -c1-12)
  name=prefect-workpool-operator-base:$SUITE-$key
  if have_image "$name"; then
    base=$name
    step "base: $name (cached)"
    return
  fi
  command -v debootstrap >/dev/null || hack/node-deps.sh
  mkdir -p "$CACHE"
  root=$(mktemp -d "$CACHE/debootstrap.XXXXXX")
  # debootstrap mounts /proc etc. inside the tree; never let rm follow them on a failure.
  cleanup_tree() {
    for m in proc sys dev/pts dev; do umount "$root/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$root"
  }
  trap 'cleanup_tree; [ -z "$private" ] || stop_dockerd' EXIT
  say "base: debootstrap $SUITE ($PACKAGES) from $MIRROR"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; fail "debootstrap failed (log: $root.log)"; }
  rm -f "$root.log"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  # This machine's CA bundle, so pip in the build trusts a TLS-intercepting proxy; pip reads
  # certifi otherwise, hence the pip.conf.
  if [ -r "$CA_BUNDLE" ]; then
    cp "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
  fi
  tar --numeric-owner -C "$root" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . \
    | "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$name" >/dev/null
  cleanup_tree
  trap '[ -z "$private" ] || stop_dockerd' EXIT
  base=$name
  step "base: $name (debootstrap + import)"
}

if [ -n "${PYTHON_IMAGE:-}" ]; then
  base=$PYTHON_IMAGE
  step "base: $base (PYTHON_IMAGE)"
elif [ "${PWO_IMAGE_BASE:-auto}" != debootstrap ] && { have_image "$OFFICIAL" || timeout 120 "$DOCKER" pull -q "$OFFICIAL" >/dev/null 2>&1; }; then
  base=$OFFICIAL
  step "base: $base"
else
  [ "${PWO_IMAGE_BASE:-auto}" = official ] && fail "cannot pull $OFFICIAL (PWO_IMAGE_BASE=official)"
  debootstrap_base
fi

# --- the build ---------------------------------------------------------------------------
"$DOCKER" build "${build_net[@]}" --build-arg PYTHON_IMAGE="$base" --build-arg VERSION="${VERSION:-dev}" \
  -t "$REF" . >&2
step "build: $REF"
if [ -n "$save_to" ]; then
  mkdir -p "$(dirname "$save_to")"
  "$DOCKER" save -o "$save_to" "$REF"
  step "save: $save_to ($(du -h "$save_to" | cut -f1))"
fi
say "total $((SECONDS - t0))s"
echo "$REF"
