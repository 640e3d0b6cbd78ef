#!/usr/bin/env bash
# Checks the Prometheus rules and runs their unit tests (`make test` runs
# this through tests/gateway/synthetic.rs).
#   exit 0  rules valid and every unit test passed
#   exit 1  promtool found a problem (its output says which)
#   exit 3  promtool is not installed
# Exit 3 is distinct so callers can tell "not checked" from "checked and
# wrong" (the Rust test skips on the first and fails on the second).
set -euo pipefail
# The test files name their rules relative to this directory.
cd "$(dirname "${BASH_SOURCE[0]}")"
if ! command -v promtool >/dev/null; then
    echo "promtool not found: install Debian's prometheus package: ./deploy/local/prereqs.sh prometheus" >&2
    exit 3
fi
promtool check rules rules/*.yaml
promtool test rules tests/*.yaml
