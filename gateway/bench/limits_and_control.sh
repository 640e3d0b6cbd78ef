#!/usr/bin/env bash
# Issue 3's figures, side by side in one run:
#  1. the gateway with every rate limiter active (and under its limits)
#     against the same gateway with `rate_limits.enabled: false`, and against
#     the direct connection (the physical limit), at 1 and 64 connections;
#  2. the time from `emergency-block` on replica A to the first denial on
#     replica B, both replicas watching one real nats-server.
# Everything listens on 127.0.0.1 and is stopped on exit.
#
# Environment: BENCH_DURATION (default 5), BENCH_PASSES (interleaved runs per
# side, default 5), BENCH_WARMUP (1), BENCH_SIZE (1024), BENCH_ROUNDS
# (emergency-block rounds, default 30), CLAWGRESS_BIN,
# BENCH_KEEP_TMP=1, OUT (default target/bench/limits.json).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

DURATION=${BENCH_DURATION:-5}
PASSES=${BENCH_PASSES:-5}
WARMUP=${BENCH_WARMUP:-1}
SIZE=${BENCH_SIZE:-1024}
ROUNDS=${BENCH_ROUNDS:-30}
OUT=${OUT:-target/bench/limits.json}
TARGET_LISTEN=127.0.0.1:18080
DIRECT_URL=http://127.0.0.1:18080/
NATS_PORT=14222

# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"

nats_server_bin
clawgress_bin

start_target
start_clawgress limits 127.0.0.1:13131 127.0.0.1:19131 gateway/bench/policy.yaml
start_clawgress no-limits 127.0.0.1:13132 127.0.0.1:19132 gateway/bench/policy-no-limits.yaml

# Several runs of each gateway, interleaved, so drift on a shared machine
# hits both sides alike; the ratio is of the medians.
for connections in 1 64; do
    run direct --target "$DIRECT_URL" --connections "$connections"
    for _ in $(seq "$PASSES"); do
        run no-limits --proxy http://127.0.0.1:13132 --proxy-user "$BENCH_USER" --target "$TARGET_URL" --connections "$connections"
        run limits --proxy http://127.0.0.1:13131 --proxy-user "$BENCH_USER" --target "$TARGET_URL" --connections "$connections"
    done
done

# --- emergency block across replicas -----------------------------------------

"$NATS" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$TMP/nats" >"$TMP/nats.log" 2>&1 &
PIDS+=($!)
wait_listening nats-server "127.0.0.1:$NATS_PORT" $!
token=bench-maintainer-token
printf 'tokens:\n  - name: bench\n    role: maintainer\n    token_sha256: "%s"\n' \
    "$(printf %s "$token" | sha256sum | cut -d' ' -f1)" >"$TMP/tokens.yaml"
for replica in a:13133:19133 b:13134:19134; do
    IFS=: read -r name listen admin <<<"$replica"
    start_clawgress "replica-$name" "127.0.0.1:$listen" "127.0.0.1:$admin" gateway/bench/policy.yaml \
        --nats "nats://127.0.0.1:$NATS_PORT" --admin-tokens "$TMP/tokens.yaml"
done
log "run: emergency-block propagation, $ROUNDS rounds"
control=$("$BIN" bench-control --admin http://127.0.0.1:19133 --token "$token" \
    --proxy http://127.0.0.1:13134 --proxy-user "$BENCH_USER" --target "$TARGET_URL" \
    --rounds "$ROUNDS" --json)

# --- report ----------------------------------------------------------------

mkdir -p "$(dirname "$OUT")"
{
    printf '{"date":"%s","cpus":%s,"kernel":"%s","duration_s":%s,"runs":[' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(nproc)" "$(uname -r)" "$DURATION"
    paste -sd, "$RESULTS" | tr -d '\n'
    printf '],"emergency_block":%s}\n' "$control"
} >"$OUT"

awk '
function field(name,    rest) {
    if (!match($0, "\"" name "\":")) return ""
    rest = substr($0, RSTART + RLENGTH)
    sub(/^"/, "", rest)
    sub(/["},].*$/, "", rest)
    return rest
}
function median(list, n,    i, j, t, a) {
    for (i = 1; i <= n; i++) a[i] = list[i]
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{
    name = field("name"); conns = field("connections")
    printf "| %s | %s | %.0f | %s | %s | %s |\n", name, conns, field("rps"), field("p50_us"), field("p99_us"), field("errors")
    key = name "/" conns; n[key]++
    rps[key, n[key]] = field("rps"); p99[key, n[key]] = field("p99_us")
}
END {
    print ""
    print "| conns | median req/s limits / no limits | median p99 limits / no limits |"
    print "|---:|---:|---:|"
    for (c = 1; c <= 64; c *= 64) {
        a = "limits/" c; b = "no-limits/" c
        if (!n[a] || !n[b]) continue
        for (i = 1; i <= n[a]; i++) { ra[i] = rps[a, i]; pa[i] = p99[a, i] }
        for (i = 1; i <= n[b]; i++) { rb[i] = rps[b, i]; pb[i] = p99[b, i] }
        printf "| %d | %.3f | %.2f |\n", c, median(ra, n[a]) / median(rb, n[b]), median(pa, n[a]) / median(pb, n[b])
    }
}' "$RESULTS" | { echo "| run | conns | req/s | p50 us | p99 us | errors |"; echo "|---|---:|---:|---:|---:|---:|"; cat; }
echo
echo "emergency-block -> first denial on replica B: $control"
log "raw results: $OUT"
