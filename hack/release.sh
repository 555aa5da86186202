#!/usr/bin/env bash
# `make release`: the release artefacts of the version the repository declares, in
# dist/release-<version>/ (RELEASE_DIR overrides): the packaged chart, the Python wheel, the
# image where a builder exists (hack/image.sh: also without a registry; saying so where none
# does), and SHA256SUMS over all of it.
# Refuses when the versions disagree or CHANGELOG.md has no dated section for the version
# (DRAFT=1 accepts "unreleased", for a trial run).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
chart=charts/prefect-workpool-operator

package=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
module=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' operator/prefect_workpool_operator/__init__.py)
chart_version=$(sed -n 's/^version: *\(.*\)$/\1/p' $chart/Chart.yaml)
app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' $chart/Chart.yaml)
semver='^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$'
fail() { echo "!! $*" >&2; exit 1; }
for v in "$package" "$chart_version"; do [[ $v =~ $semver ]] || fail "not a semantic version: '$v'"; done
[ "$package" = "$module" ] || fail "pyproject.toml says $package, prefect_workpool_operator.__version__ $module"
[ "$package" = "$app_version" ] || fail "pyproject.toml says $package, the chart's appVersion $app_version"
heading=$(grep -E "^## \[$package\]" CHANGELOG.md || true)
[ -n "$heading" ] || fail "CHANGELOG.md has no section '## [$package]'"
if ! [[ $heading =~ [0-9]{4}-[0-9]{2}-[0-9]{2} ]]; then
  [ "${DRAFT:-0}" = 1 ] || fail "CHANGELOG.md's '## [$package]' has no release date ('$heading'); DRAFT=1 for a trial run"
  echo ">> draft: CHANGELOG.md's section for $package is not dated"
fi

# The tools after the checks: a refusal needs none of them.
bin=$(hack/build-tools.sh | tail -1)
out=${RELEASE_DIR:-dist/release-$package}
rm -rf "$out" && mkdir -p "$out"
echo ">> release $package (chart $chart_version) in $out"
"$bin/helm" lint --strict $chart >/dev/null
"$bin/helm" package $chart --destination "$out" >/dev/null
echo ">> chart: $(cd "$out" && ls ./*.tgz)"
"$python" -m pip wheel --no-deps --quiet --wheel-dir "$out" . 2>&1 | grep -v "^$" || true
ls "$out"/*.whl >/dev/null 2>&1 || fail "the wheel was not built"
echo ">> wheel: $(cd "$out" && ls ./*.whl)"

image=${IMAGE_REPO:-prefect-workpool-operator}:$package
tar="$out/prefect-workpool-operator-image-$package.tar"
builder="" found=""
# Docker first, through `make image`'s path: an engine that answers or a private dockerd, and a
# debootstrap base where no registry is reachable. Its progress goes to stderr.
if hack/image.sh probe; then
  IMAGE_TAG=$package VERSION=$package hack/image.sh save "$tar" >/dev/null
  echo ">> image: $image (built with hack/image.sh, saved as a tar next to the chart)"
  builder=docker
fi
for candidate in podman buildah; do
  [ -z "$builder" ] && command -v "$candidate" >/dev/null 2>&1 || continue
  found="$found $candidate"
  # A CLI without a reachable engine cannot build: ask the engine, not the PATH.
  if [ "$candidate" = buildah ]; then probe=(buildah version); else probe=("$candidate" info); fi
  if "${probe[@]}" >/dev/null 2>&1; then builder=$candidate; fi
done
if [ "$builder" = podman ] || [ "$builder" = buildah ]; then
  if [ "$builder" = buildah ]; then cmd=(buildah bud); else cmd=("$builder" build); fi
  "${cmd[@]}" --build-arg VERSION="$package" -t "$image" .
  "$builder" save -o "$tar" "$image"
  echo ">> image: $image (built with $builder, saved as a tar next to the chart)"
elif [ -z "$builder" ]; then
  command -v docker >/dev/null 2>&1 && found=" docker$found"
  echo ">> image: NOT built — no working image builder on this machine" \
    "(${found:+found but not usable:$found; }a Docker engine (or root and dockerd), podman or buildah needed);" \
    "build it where one is: make image, or docker build --build-arg VERSION=$package -t <registry>/$image ."
fi

(cd "$out" && sha256sum -- * | grep -v ' SHA256SUMS$' > SHA256SUMS)
echo ">> checksums: $out/SHA256SUMS"
cat "$out/SHA256SUMS"
