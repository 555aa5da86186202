#!/usr/bin/env bash
# Debian packages the node tests and `make image` need where no container registry is
# reachable: a Docker engine (image builds), containerd + runc (the node's runtime), the CNI
# plugins (pod network), debootstrap (the image's base) and iptables (the Service DNAT).
# Installs only what is missing; needs root (apt). Prints what it did on stderr.
set -euo pipefail
need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in docker.io containerd runc containernetworking-plugins debootstrap iptables; do
  have "$pkg" || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "!! missing Debian packages: ${need[*]} (installing them needs root: sudo $0)" >&2
  exit 1
fi
echo ">> installing ${need[*]} (Debian)" >&2
start=$SECONDS
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
echo ">> installed in $((SECONDS - start))s" >&2
