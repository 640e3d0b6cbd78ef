#!/usr/bin/env bash
# Issue 4's figures in one run:
#  - DLP scan throughput on one core (`clawgress bench-dlp`, 256 KB chat body);
#  - the AI analyzer's cost (`clawgress bench-tokens`, 100 KB prompt);
#  - TLS interception's added latency, side by side: 1 KB POSTs over kept-alive
# HTTPS (reqwest, one connection, closed loop) to an HTTPS bench target,
#  1. direct (the physical limit),
#  2. through the gateway with `tls: passthrough` (CONNECT, end-to-end TLS,
#     ClientHello SNI checked),
#  3. through the gateway with `tls: intercept` (the agent's TLS terminated
#     with a warm leaf from the gateway's CA, DLP on the body, verified TLS
#     re-opened to the target).
# The figure is the p50 intercept adds over passthrough. Everything listens
# on 127.0.0.1 and is stopped on exit.
#
# Environment: BENCH_DURATION (default 5), BENCH_PASSES (3), BENCH_WARMUP (1),
# BENCH_SIZE (response bytes, 1024), BENCH_BODY (request bytes, 1024),
# CLAWGRESS_BIN, BENCH_KEEP_TMP=1, OUT (default target/bench/inspection.json).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

DURATION=${BENCH_DURATION:-5}
PASSES=${BENCH_PASSES:-3}
WARMUP=${BENCH_WARMUP:-1}
SIZE=${BENCH_SIZE:-1024}
BODY=${BENCH_BODY:-1024}
OUT=${OUT:-target/bench/inspection.json}
PORT=18443
TARGET_LISTEN=127.0.0.1:$PORT

# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"

clawgress_bin

"$BIN" bench-dlp --seconds "$DURATION"
"$BIN" bench-tokens --seconds "$DURATION"

"$BIN" bench-target --listen "$TARGET_LISTEN" --size "$SIZE" \
    --tls-name bench.local --tls-name ibench.local --tls-ca-out "$TMP/target-ca.pem" 2>"$TMP/target.log" &
PIDS+=($!)
wait_listening bench-target "$TARGET_LISTEN" $!

"$BIN" ca init --dir "$TMP/ca" >/dev/null
cat >"$TMP/policy.yaml" <<YAML
egress: {default_action: deny, logging: all_requests, monitoring: enabled}
allowlist:
  bench:
    - domain: "bench.local"
      ports: [$PORT]
      protocols: [https]
    - domain: "ibench.local"
      ports: [$PORT]
      protocols: [https]
      tls: intercept
$(unlimited_rates)
dns:
  resolver: internal
  nameservers: ["127.0.0.1:9"]
  static_hosts:
    bench.local: 127.0.0.1
    ibench.local: 127.0.0.1
YAML
"$BIN" gateway --policy "$TMP/policy.yaml" --agents gateway/bench/agents.yaml \
    --listen 127.0.0.1:13141 --admin 127.0.0.1:19141 --workers 1 \
    --audit "$TMP/audit.jsonl" --state-dir "$TMP/state" \
    --ca-dir "$TMP/ca" --upstream-ca-bundle "$TMP/target-ca.pem" >"$TMP/gateway.log" 2>&1 &
PIDS+=($!)
wait_listening gateway 127.0.0.1:13141 $!
"$BIN" ca export --dir "$TMP/ca" >"$TMP/gateway-ca.pem"

common=(--reqwest --body "$BODY" --connections 1)
via=(--proxy http://127.0.0.1:13141 --proxy-user "$BENCH_USER")
for _ in $(seq "$PASSES"); do
    run direct "${common[@]}" --target "https://127.0.0.1:$PORT/" --ca-file "$TMP/target-ca.pem"
    run passthrough "${common[@]}" "${via[@]}" --target "https://bench.local:$PORT/" --ca-file "$TMP/target-ca.pem"
    run intercept "${common[@]}" "${via[@]}" --target "https://ibench.local:$PORT/" --ca-file "$TMP/gateway-ca.pem"
done

mkdir -p "$(dirname "$OUT")"
cp "$RESULTS" "$OUT"
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
def median(name, key):
    return statistics.median(r[key] for r in runs if r["name"] == name)
for name in ("direct", "passthrough", "intercept"):
    print(f"{name:12} p50 {median(name, 'p50_us'):8.0f} us   p99 {median(name, 'p99_us'):8.0f} us   {median(name, 'rps'):8.0f} req/s")
added = median("intercept", "p50_us") - median("passthrough", "p50_us")
print(f"intercept adds {added:.0f} us at p50 over passthrough (target: < 1000 us)")
PY
