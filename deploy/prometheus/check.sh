#!/usr/bin/env bash
# Checks the Prometheus rules and runs their unit tests (`make test` runs
# this through tests/gateway/synthetic.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if ! command -v promtool >/dev/null; then
    echo "promtool not found: install Debian's prometheus package: ./deploy/local/prereqs.sh prometheus" >&2
    exit 3
fi
promtool check rules rules/*.yaml
promtool test rules tests/*.yaml
