#!/usr/bin/env bash
# Installs what the README commands need, only when it is missing, so the
# commands work on a fresh Debian machine with a Rust toolchain.
#   prereqs.sh build   - a C compiler and cmake-free build deps for aws-lc
#   prereqs.sh squid   - Squid 5.7 from Debian (the proxy benchmark's peer)
set -euo pipefail

need_apt=()
apt_install() {
  if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "installing from Debian: ${need_apt[*]}" >&2
    if [ ! -f /var/lib/apt/periodic/clawgress-updated ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
      apt-get update -qq
      mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/clawgress-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  fi
}

for what in "$@"; do
  case "$what" in
    build)
      command -v cc >/dev/null || need_apt+=(gcc)
      command -v cargo >/dev/null || { echo "cargo is missing: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
      ;;
    squid)
      command -v squid >/dev/null || [ -x /usr/sbin/squid ] || need_apt+=(squid)
      ;;
    *) echo "prereqs.sh: unknown prerequisite '$what'" >&2; exit 2 ;;
  esac
done
apt_install
