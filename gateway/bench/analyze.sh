#!/usr/bin/env bash
# `clawgress analyze` events/s on one core (issue 15): a synthetic trail in
# the gateway's own line shape (about 900 bytes a line, 500 agents, 200
# hosts, denials, rate limits, AI requests with tokens, DNS queries;
# `clawgress bench-analyze`), read by `clawgress analyze --trail FILE
# --quiet` pinned to one CPU (taskset), BENCH_PASSES times. The figure is
# the median of the runs' own events/s (decode, baselines, detectors and
# anomaly events built; nothing published). It is compared with the
# gateway's peak request rate in BENCHMARKS.md (BENCH_GATEWAY_PEAK, req/s):
# the target is at least 5x, so one analyzer keeps up with a gateway at
# full load with room for bursts and replays.
#
# Environment: BENCH_EVENTS (1000000), BENCH_PASSES (5), BENCH_GATEWAY_PEAK
# (39425: issue 6's gateway without OTLP, 8 connections), CLAWGRESS_BIN,
# BENCH_KEEP_TMP=1, OUT (default target/bench/analyze.txt).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

EVENTS=${BENCH_EVENTS:-1000000}
PASSES=${BENCH_PASSES:-5}
PEAK=${BENCH_GATEWAY_PEAK:-39425}
OUT=${OUT:-target/bench/analyze.txt}
DURATION=0 WARMUP=0 SIZE=0 TARGET_LISTEN=127.0.0.1:0

# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"

clawgress_bin
command -v taskset >/dev/null || die "taskset (util-linux) is needed to pin the run to one core"

"$BIN" bench-analyze --generate "$TMP/trail.jsonl" --events "$EVENTS" >&2
: >"$TMP/rates"
for pass in $(seq "$PASSES"); do
    # Read once before timing, so every pass reads from the page cache.
    cat "$TMP/trail.jsonl" >/dev/null
    taskset -c 0 "$BIN" analyze --trail "$TMP/trail.jsonl" --quiet 2>"$TMP/summary-$pass.json"
    rate=$(python3 -c 'import json,sys; print(round(json.loads(open(sys.argv[1]).read().splitlines()[-1])["events_per_second"]))' "$TMP/summary-$pass.json")
    log "pass $pass: $rate events/s"
    echo "$rate" >>"$TMP/rates"
done

median=$(sort -n "$TMP/rates" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
ratio=$(awk -v m="$median" -v p="$PEAK" 'BEGIN {printf "%.2f", m / p}')
mkdir -p "$(dirname "$OUT")"
{
    echo "clawgress analyze, one core (taskset -c 0), $EVENTS events, $PASSES passes"
    echo "events/s per pass: $(paste -sd' ' "$TMP/rates")"
    echo "median events/s: $median"
    echo "gateway peak req/s (BENCHMARKS.md): $PEAK"
    echo "ratio: ${ratio}x (target >= 5x: $(awk -v r="$ratio" 'BEGIN {print (r >= 5) ? "met" : "NOT met"}'))"
    echo "last summary: $(tail -1 "$TMP/summary-$PASSES.json")"
} | tee "$OUT"
