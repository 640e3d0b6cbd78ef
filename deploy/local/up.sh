#!/usr/bin/env bash
# Runs a local NATS (JetStream) and the gateway on a laptop with the shipped
# policy, the example agents and the demo admin tokens. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/../.."
state="${CLAWGRESS_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/clawgress}"
venv="${XDG_DATA_HOME:-$HOME/.local/share}/clawgress/venv"
nats_port="${CLAWGRESS_NATS_PORT:-4222}"
mkdir -p "$state/nats"

nats_bin="$(command -v nats-server 2>/dev/null || echo "$venv/bin/nats-server")"
nats_pid=""
if (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null; then
  echo "using the NATS server already listening on 127.0.0.1:$nats_port" >&2
else
  "$nats_bin" -js -a 127.0.0.1 -p "$nats_port" -sd "$state/nats" >"$state/nats.log" 2>&1 &
  nats_pid=$!
  trap '[ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null; wait 2>/dev/null' EXIT
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
    sleep 0.05
  done
fi

cat <<MSG
Clawgress gateway: proxy http://127.0.0.1:3128, admin http://127.0.0.1:9128/metrics
NATS (JetStream): nats://127.0.0.1:$nats_port, store $state/nats
Try it (the example agent's demo key is in policies/agents.example.yaml):
  curl -x http://127.0.0.1:3128 -U scraper-001:scraper-001-demo-key https://api.github.com/zen
  curl -x http://127.0.0.1:3128 -U scraper-001:scraper-001-demo-key http://example.com/   # 403: not in the allowlist
Operate it (demo tokens in policies/admin-tokens.example.yaml):
  export CLAWGRESS_ADMIN_TOKEN=maintainer-demo-token
  target/release/clawgress egress list
  target/release/clawgress egress allow-temp --domain example.com --duration 1h --reason "try it"
  target/release/clawgress egress emergency-block --reason "drill"
Audit trail: $state/audit.jsonl   (verify: target/release/clawgress audit verify $state/audit.jsonl)
MSG
target/release/clawgress gateway \
  --policy policies/default.yaml \
  --agents policies/agents.example.yaml \
  --admin-tokens policies/admin-tokens.example.yaml \
  --nats "nats://127.0.0.1:$nats_port" \
  --state-dir "$state" "$@" &
gateway_pid=$!
trap 'kill -TERM "$gateway_pid" 2>/dev/null; wait "$gateway_pid" 2>/dev/null; [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
wait "$gateway_pid"
