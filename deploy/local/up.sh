#!/usr/bin/env bash
# Runs the gateway on a laptop with the shipped policy and the example agents.
set -euo pipefail
cd "$(dirname "$0")/../.."
state="${CLAWGRESS_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/clawgress}"
mkdir -p "$state"
cat <<MSG
Clawgress gateway: proxy http://127.0.0.1:3128, admin http://127.0.0.1:9128/metrics
Try it (the example agent's demo key is in policies/agents.example.yaml):
  curl -x http://127.0.0.1:3128 -U scraper-001:scraper-001-demo-key https://api.github.com/zen
  curl -x http://127.0.0.1:3128 -U scraper-001:scraper-001-demo-key http://example.com/   # 403: not in the allowlist
Audit trail: $state/audit.jsonl   (verify: target/release/clawgress audit verify $state/audit.jsonl)
MSG
exec target/release/clawgress gateway \
  --policy policies/default.yaml \
  --agents policies/agents.example.yaml \
  --state-dir "$state" "$@"
