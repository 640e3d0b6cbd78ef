#!/usr/bin/env bash
# The synthetic Rate Limit check against its physical limit: the shipped
# suite's 100-request burst, through `clawgress up` with the shipped policy
# (per agent 100/min, burst 20), run BENCH_PASSES times. No compliant client
# can finish sooner than (100 - 20) × 0.6 s = 48 s: the limiter's own
# schedule. The figure is how close the runner's exponential backoff (never
# sooner than retry_after) comes to it. Everything listens on 127.0.0.1 and
# is stopped on exit.
#
# Environment: BENCH_PASSES (3), CLAWGRESS_BIN, BENCH_KEEP_TMP=1,
# OUT (default target/bench/synthetic.txt).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

PASSES=${BENCH_PASSES:-3}
OUT=${OUT:-target/bench/synthetic.txt}
DURATION=0 WARMUP=0 SIZE=0 TARGET_LISTEN=127.0.0.1:0

# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"

clawgress_bin
nats_server_bin
PATH="$(dirname "$NATS"):$PATH"
NATS_PORT=14322
"$BIN" up --nats "nats://127.0.0.1:$NATS_PORT" --listen 127.0.0.1:13161 --admin 127.0.0.1:19161 \
    --state-dir "$TMP/state" --data "$TMP/nats" >"$TMP/up.log" 2>&1 &
PIDS+=($!)
wait_listening gateway 127.0.0.1:13161 $!
sleep 1

: >"$TMP/durations"
for pass in $(seq "$PASSES"); do
    log "pass $pass: synthetic run --only rate_limit"
    CLAWGRESS_GATEWAY=http://127.0.0.1:13161 CLAWGRESS_ADMIN_URL=http://127.0.0.1:19161 \
        NATS_URL="nats://127.0.0.1:$NATS_PORT" \
        CLAWGRESS_SYNTHETIC_KEY=scraper-001-demo-key CLAWGRESS_ADMIN_TOKEN=viewer-demo-token \
        "$BIN" synthetic run synthetic/checks.yaml --serve-fixtures --only rate_limit >"$TMP/run-$pass.txt" \
        || { cat "$TMP/run-$pass.txt" >&2; die "the rate-limit check failed"; }
    cat "$TMP/run-$pass.txt" >&2
    sed -n 's/.*completed in \([0-9.]*\) s.*/\1/p' "$TMP/run-$pass.txt" >>"$TMP/durations"
    # The next pass starts with the agent's burst refilled.
    sleep 15
done

mkdir -p "$(dirname "$OUT")"
cp "$TMP/durations" "$OUT"
python3 - "$TMP/durations" <<'PY'
import statistics, sys
runs = [float(line) for line in open(sys.argv[1]) if line.strip()]
ideal = (100 - 20) * 60 / 100
median = statistics.median(runs)
print(f"100-request burst at 100/min, burst 20: runs {', '.join(f'{r:.1f}' for r in runs)} s; median {median:.1f} s")
print(f"physical limit {ideal:.0f} s: the backoff client takes {median / ideal:.2f}x")
PY
