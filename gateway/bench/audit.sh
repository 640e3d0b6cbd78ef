#!/usr/bin/env bash
# Issue 15: what "no answered request without a record" costs. The proxy
# bench of proxy_vs_squid.sh (same target, policy and agent) through one
# gateway per --audit-fsync mode (every | interval | never), at 1 and 64
# kept-alive connections; with BENCH_NATS=1 also interval mode while the
# trail is shipped to the audit streams on a local nats-server. Every
# response waits for its record's write (and, under `every`, its fsync),
# so the figures include that wait. Prints a Markdown table, writes the raw
# results to $OUT; everything it starts is stopped on exit.
#
# Environment:
#   BENCH_DURATION   measured seconds per run (default 10)
#   BENCH_WARMUP     warmup seconds per run (default 1)
#   BENCH_SIZE       response body bytes (default 1024)
#   BENCH_MODES      fsync modes to measure (default "every interval never")
#   BENCH_NATS       1 adds a run with --nats (installs nats-server if missing)
#   BASELINE_BIN     a clawgress binary from before issue 15 (e.g. a release
#                    build of an older commit), measured first as "baseline"
#   OUT              raw results (default target/bench/audit.json)
#   CLAWGRESS_BIN    use this binary instead of building target/release/clawgress
#   BENCH_KEEP_TMP   1 keeps the temp dir (configs, logs, trails) for inspection
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-1}
SIZE=${BENCH_SIZE:-1024}
MODES=${BENCH_MODES:-every interval never}
OUT=${OUT:-target/bench/audit.json}
TARGET_LISTEN=127.0.0.1:18080
DIRECT_URL=http://127.0.0.1:18080/

# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"

clawgress_bin
start_target
run direct --target "$DIRECT_URL" --connections 1
run direct --target "$DIRECT_URL" --connections 64

# One gateway at a time: each gets both cores' share of the machine.
port=13130
measure() {
    local name=$1
    shift
    local listen=127.0.0.1:$port admin=127.0.0.1:$((port + 10000))
    port=$((port + 1))
    start_clawgress "$name" "$listen" "$admin" gateway/bench/policy.yaml "$@"
    local pid=${PIDS[-1]}
    for connections in 1 64; do
        run "$name" --proxy "http://$listen" --proxy-user "$BENCH_USER" --target "$TARGET_URL" \
            --connections "$connections"
    done
    # The trail of every answered request verifies.
    kill "$pid" && wait "$pid" 2>/dev/null || true
    "$BIN" audit verify "$TMP/$name-audit.jsonl" >&2
}

if [ -n "${BASELINE_BIN:-}" ]; then
    # The same bench through the binary from before; it has no fsync modes
    # (its writer fsynced every 100 ms and answered without waiting).
    current_bin=$BIN
    BIN=$BASELINE_BIN
    measure baseline
    BIN=$current_bin
fi
for mode in $MODES; do
    measure "fsync-$mode" --audit-fsync "$mode"
done
if [ "${BENCH_NATS:-0}" = 1 ]; then
    nats_server_bin
    NATS_PORT=14222
    "$NATS" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$TMP/nats" >"$TMP/nats.log" 2>&1 &
    PIDS+=($!)
    wait_listening nats-server "127.0.0.1:$NATS_PORT" $!
    measure "fsync-interval-shipped" --audit-fsync interval --nats "nats://127.0.0.1:$NATS_PORT"

    # The shipper's own rate: a gateway started on the largest unshipped
    # trail of this run ships its whole backlog; records/s until the streams
    # have acknowledged every line, against the gateway's peak request rate.
    trail=$(ls -S "$TMP"/fsync-never-audit.jsonl "$TMP"/fsync-interval-audit.jsonl 2>/dev/null | head -1 || true)
    if [ -n "$trail" ]; then
        lines=$(wc -l <"$trail")
        "$NATS" -js -a 127.0.0.1 -p $((NATS_PORT + 1)) -sd "$TMP/nats-ship" >"$TMP/nats-ship.log" 2>&1 &
        PIDS+=($!)
        wait_listening nats-server "127.0.0.1:$((NATS_PORT + 1))" $!
        "$BIN" gateway --policy gateway/bench/policy.yaml --agents gateway/bench/agents.yaml \
            --listen 127.0.0.1:13199 --admin 127.0.0.1:23199 --audit "$trail" --state-dir "$TMP/ship-state" \
            --nats "nats://127.0.0.1:$((NATS_PORT + 1))" >"$TMP/ship.log" 2>&1 &
        PIDS+=($!)
        start=$(date +%s.%N)
        shipped=0
        while [ "$shipped" -lt "$lines" ]; do
            sleep 0.2
            shipped=$(curl -s http://127.0.0.1:23199/metrics | awk '/^audit_shipped_total / {print int($2)}')
            shipped=${shipped:-0}
        done
        end=$(date +%s.%N)
        python3 - "$lines" "$start" "$end" "$RESULTS" <<'PY'
import json, sys
lines, start, end, results = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
runs = [json.loads(l) for l in open(results) if '"rps"' in l and '"direct"' not in l]
peak = max(r["rps"] for r in runs)
rate = lines / (end - start)
print(f"shipper: {lines} records in {end - start:.1f} s = {rate:,.0f} records/s; "
      f"the gateway's peak in this run {peak:,.0f} req/s; ratio {rate / peak:.2f}x")
PY
    fi
fi

mkdir -p "$(dirname "$OUT")"
{
    printf '{"date":"%s","cpus":%s,"kernel":"%s","duration_s":%s,"warmup_s":%s,"body_bytes":%s,"runs":[' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(nproc)" "$(uname -r)" "$DURATION" "$WARMUP" "$SIZE"
    paste -sd, "$RESULTS" | tr -d '\n'
    printf ']}\n'
} >"$OUT"

awk '
function field(name,    rest) {
    if (!match($0, "\"" name "\":")) return ""
    rest = substr($0, RSTART + RLENGTH)
    sub(/^"/, "", rest)
    sub(/["},].*$/, "", rest)
    return rest
}
{
    name = field("name"); conns = field("connections")
    key = name "/" conns
    order[++n] = key
    rps[key] = field("rps"); p50[key] = field("p50_us"); p99[key] = field("p99_us")
    errors[key] = field("errors"); label[key] = name; c[key] = conns
}
END {
    print "| run | conns | req/s | p50 us | p99 us | added p50 vs direct (us) | errors |"
    print "|---|---:|---:|---:|---:|---:|---:|"
    for (i = 1; i <= n; i++) {
        k = order[i]
        base = "direct/" c[k]
        added = (k == base) ? "-" : ((base in p50) ? p50[k] - p50[base] : "n/a")
        printf "| %s | %s | %.0f | %s | %s | %s | %s |\n", label[k], c[k], rps[k], p50[k], p99[k], added, errors[k]
    }
}' "$RESULTS"

log "raw results: $OUT"
