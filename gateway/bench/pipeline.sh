#!/usr/bin/env bash
# Issue 5's http figure: scrape jobs end to end (publish → JetStream →
# scheduler → http worker → gateway → target → extraction → result) against
# the physical limit (`clawgress bench` straight at the same target, 64
# connections), side by side in one run, on 127.0.0.1 only.
#
# Environment: BENCH_JOBS (default 3000), BENCH_CONCURRENCY (64),
# CLAWGRESS_BIN, BENCH_KEEP_TMP=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
DURATION=5
WARMUP=1
SIZE=1024
JOBS=${BENCH_JOBS:-3000}
CONCURRENCY=${BENCH_CONCURRENCY:-64}
TARGET_LISTEN=127.0.0.1:18080
NATS_PORT=14223

# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"

nats_server_bin
clawgress_bin

start_target
start_clawgress gateway 127.0.0.1:13140 127.0.0.1:19140 gateway/bench/policy.yaml
"$NATS" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$TMP/nats" >"$TMP/nats.log" 2>&1 &
PIDS+=($!)
wait_listening nats-server "127.0.0.1:$NATS_PORT" $!
printf 'agents:\n  bench-agent: bench-key\n' >"$TMP/credentials.yaml"
"$BIN" scheduler --nats "nats://127.0.0.1:$NATS_PORT" --gateway http://127.0.0.1:13140 \
    --credentials "$TMP/credentials.yaml" --concurrency "$CONCURRENCY" --per-domain "$CONCURRENCY" \
    --chromium none >"$TMP/scheduler.log" 2>&1 &
PIDS+=($!)

log "run: direct, 64 connections (the physical limit)"
direct=$("$BIN" bench --target http://127.0.0.1:18080/ --connections 64 --duration "$DURATION" --warmup "$WARMUP" --json)

for i in $(seq 1 "$JOBS"); do
    printf '{"version":1,"type":"scrape","id":"bench-%s-%s","agent":"bench-agent","url":"http://bench.local:18080/p%s","fetch":"http","extract":{"body":"body"}}\n' "$$" "$i" "$i"
done >"$TMP/jobs.jsonl"
log "run: $JOBS http jobs end to end, concurrency $CONCURRENCY"
start=$(date +%s.%N)
"$BIN" submit --nats "nats://127.0.0.1:$NATS_PORT" --wait --wait-secs 600 "$TMP/jobs.jsonl" >"$TMP/results.jsonl" 2>"$TMP/submit.log"
end=$(date +%s.%N)
ok=$(grep -c '"status":"ok"' "$TMP/results.jsonl" || true)

direct_rps=$(printf '%s' "$direct" | sed 's/.*"rps":\([0-9.]*\).*/\1/')
awk -v jobs="$JOBS" -v ok="$ok" -v start="$start" -v end="$end" -v direct="$direct_rps" 'BEGIN {
    secs = end - start; rate = ok / secs
    printf "| run | figure |\n|---|---:|\n"
    printf "| direct (clawgress bench, 64 conns) | %.0f req/s |\n", direct
    printf "| http jobs end to end (%d jobs, %d ok, %.2f s incl. publish) | %.0f jobs/s |\n", jobs, ok, secs, rate
    printf "| ratio jobs / direct | %.3f |\n", rate / direct
}'
