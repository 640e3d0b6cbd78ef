#!/usr/bin/env bash
# Issue 16: gateway replicas sharing one hot token budget on a real
# nats-server, with leased blocks and with a compare-and-set per request
# (`clawgress bench-budgets`): requests/s, store writes/s and CAS conflicts/s.
# Every replica is a budget store with its own NATS connection and id, as
# separate gateways are; each request reserves, waits for the "provider"
# (BENCH_PROVIDER_MS) and settles. nats-server listens on 127.0.0.1 and is
# stopped on exit.
#
# Environment: BENCH_REPLICAS (4), BENCH_CONCURRENCY (32 per replica),
# BENCH_SECONDS (10 per mode), BENCH_PROVIDER_MS (20), CLAWGRESS_BIN,
# BENCH_KEEP_TMP=1, OUT (default target/bench/budgets.txt).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

OUT=${OUT:-target/bench/budgets.txt}
DURATION=0 WARMUP=0 SIZE=0 TARGET_LISTEN=127.0.0.1:0

# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"

clawgress_bin
nats_server_bin
NATS_PORT=14422
"$NATS" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$TMP/nats" >"$TMP/nats.log" 2>&1 &
PIDS+=($!)
wait_listening nats-server "127.0.0.1:$NATS_PORT" $!

mkdir -p "$(dirname "$OUT")"
log "bench-budgets: ${BENCH_REPLICAS:-4} replicas x ${BENCH_CONCURRENCY:-32} in flight, ${BENCH_SECONDS:-10} s per mode"
"$BIN" bench-budgets --nats "nats://127.0.0.1:$NATS_PORT" --replicas "${BENCH_REPLICAS:-4}" \
    --concurrency "${BENCH_CONCURRENCY:-32}" --seconds "${BENCH_SECONDS:-10}" \
    --provider-ms "${BENCH_PROVIDER_MS:-20}" | tee "$OUT"
log "written to $OUT"
