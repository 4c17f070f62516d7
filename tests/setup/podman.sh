#!/usr/bin/env bash
# podman and debootstrap for the container tests (tests/container): they build the Dockerfile on a Debian base
# made with debootstrap (no registry is reachable) and run it, alone and as a compose cluster.
# runc: Debian's podman would pull in crun, which refuses this kernel's hybrid cgroups; with runc installed
# first it is the only runtime. The dnsname CNI plugin lets containers of one network (a compose project)
# reach each other by name. podman-compose itself comes from PyPI (the `test` extra): Debian bookworm's 1.0.3
# has neither `config` nor `profiles`.
set -euo pipefail
packages=(runc podman debootstrap slirp4netns uidmap fuse-overlayfs containernetworking-plugins
  golang-github-containernetworking-plugin-dnsname iptables)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (apt-get)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "podman, runc and debootstrap are required for the container tests; install them, e.g." \
    "'sudo apt-get install -y --no-install-recommends ${missing[*]}' (Debian/Ubuntu)" >&2
  exit 1
fi
