#!/usr/bin/env bash
# Issue 16 §6: 10,000 concurrent CONNECT tunnels held open through the
# release gateway, on 127.0.0.1 only.
#
# Starts bench-target (the origin), the gateway (gateway/bench/policy.yaml on
# its own port) and gateway/bench/hold_tunnels.py, which opens the tunnels
# (CONNECT, then one GET answered through each) and holds them. While they
# are open it measures a plain request's latency through the gateway (1
# connection, keep-alive) and a new CONNECT's, and the gateway's RSS. Side
# by side: the same latencies with nothing held, and a request straight to
# the target while the same number of plain connections are held on it.
#
# Prints a Markdown table: idle RSS, RSS with the tunnels, RSS per tunnel,
# descriptors and threads (summed over the gateway processes: one where the
# open-files hard limit allows, see below), latencies (p50/p99).
#
# Environment: BENCH_TUNNELS (10000), BENCH_DURATION (5 s per latency run),
# CLAWGRESS_BIN, BENCH_KEEP_TMP=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
TUNNELS=${BENCH_TUNNELS:-10000}
DURATION=${BENCH_DURATION:-5}
WARMUP=1
SIZE=1024
# Ports of their own, so this can run next to the other benches.
TARGET_LISTEN=127.0.0.1:18091
GATEWAY=127.0.0.1:13160
TARGET_URL=http://bench.local:18091/

# Each tunnel is two descriptors in the gateway and one in the target and in
# the client; all of them are children of this shell and inherit its limit.
if [ "$(id -u)" -eq 0 ] && [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt $((TUNNELS * 3)) ]; then
    ulimit -Hn $((TUNNELS * 3 + 4096)) 2>/dev/null || echo "cannot raise the hard open-files limit from $(ulimit -Hn)" >&2
fi
ulimit -Sn "$(ulimit -Hn)"

# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"

# A gateway holds two descriptors per tunnel. Where the hard limit cannot
# be raised far enough (a container without CAP_SYS_RESOURCE), the tunnels
# are spread over gateway replicas sharing the port (SO_REUSEPORT), as a
# deployment would; the table says how many.
LIMIT=$(ulimit -n)
[ "$LIMIT" = unlimited ] && LIMIT=$((TUNNELS * 4))
PER_GATEWAY=$(((LIMIT - 512) / 2))
[ "$PER_GATEWAY" -gt 0 ] || die "the open-files limit is $LIMIT: raise it (ulimit -Hn as root)"
REPLICAS=$(((TUNNELS * 11 / 10 + PER_GATEWAY - 1) / PER_GATEWAY))
[ "$LIMIT" -ge $((TUNNELS + 512)) ] \
    || die "the open-files limit is $LIMIT, $((TUNNELS + 512)) needed by the client and the target: raise it (ulimit -Hn as root)"
python3 -c 'pass' 2>/dev/null || die "python3 is needed for the tunnel client"
clawgress_bin

rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
# Summed over the gateway replicas.
gateway_sum() {
    local pid total=0
    for pid in "${GATEWAY_PIDS[@]}"; do
        total=$((total + $("$1" "$pid")))
    done
    echo "$total"
}
threads_of() { awk '/^Threads/ { print $2 }' "/proc/$1/status"; }
fds_of() { ls "/proc/$1/fd" | wc -l; }

# latency NAME BENCH-ARGS...: one closed-loop connection; prints "p50 p99" in ms.
latency() {
    local name=$1 line
    shift
    log "run: $name"
    line=$("$BIN" bench "$@" --connections 1 --duration "$DURATION" --warmup "$WARMUP" --json) \
        || die "$name: no request succeeded"
    python3 -c 'import json, sys; r = json.loads(sys.argv[1]); print("%.2f %.2f" % (r["p50_us"] / 1000, r["p99_us"] / 1000))' "$line"
}

# hold ARGS...: starts hold_tunnels.py, waits until its connections are up;
# sets HOLD_PID and HOLD_LINE. Closing fd 7 lets it go.
hold() {
    local fifo=$TMP/hold.in
    # Removed first: the wait below must not see the last run's line.
    rm -f "$fifo" "$TMP/hold.out" && mkfifo "$fifo"
    python3 gateway/bench/hold_tunnels.py --count "$TUNNELS" "$@" <"$fifo" >"$TMP/hold.out" 2>"$TMP/hold.err" &
    HOLD_PID=$!
    PIDS+=("$HOLD_PID")
    exec 7>"$fifo"
    until [ -s "$TMP/hold.out" ]; do
        kill -0 "$HOLD_PID" 2>/dev/null || { cat "$TMP/hold.err" >&2; die "hold_tunnels.py exited"; }
        sleep 0.5
    done
    HOLD_LINE=$(head -n 1 "$TMP/hold.out")
    log "held: $HOLD_LINE"
}

release() {
    exec 7>&-
    wait "$HOLD_PID" 2>/dev/null || true
}

sed -e 's/ports: \[18080\]/ports: [18091]/' gateway/bench/policy.yaml >"$TMP/policy.yaml"
start_target
TARGET_PID=${PIDS[-1]}
GATEWAY_PIDS=()
for replica in $(seq 1 "$REPLICAS"); do
    start_clawgress "gateway$replica" "$GATEWAY" "127.0.0.1:$((19160 + replica - 1))" "$TMP/policy.yaml" \
        --max-connections "$PER_GATEWAY"
    GATEWAY_PIDS+=("${PIDS[-1]}")
    grep -m1 'open files limit' "$TMP/gateway$replica.log" >&2 || true
done

OUT=$TMP/table.md
printf '| %s tunnels | figure |\n|---|---:|\n' "$TUNNELS" >"$OUT"
row() { printf '| %s | %s |\n' "$1" "$2" | tee -a "$OUT" >&2; }

# --- nothing held ------------------------------------------------------------

read -r d50 d99 < <(latency "direct, nothing held" --target "http://$TARGET_LISTEN/")
read -r g50 g99 < <(latency "gateway, nothing held" --proxy "http://$GATEWAY" --proxy-user "$BENCH_USER" --target "$TARGET_URL")
read -r c50 c99 < <(latency "new CONNECT, nothing held" --connect --proxy "http://$GATEWAY" --proxy-user "$BENCH_USER" --target "$TARGET_URL")
sleep 2
idle_rss=$(gateway_sum rss_kb)
idle_fds=$(gateway_sum fds_of)
idle_threads=$(gateway_sum threads_of)

# --- plain connections held on the target: the direct side -------------------

target_before=$(rss_kb "$TARGET_PID")
hold --direct --target "$TARGET_LISTEN" --authority "$TARGET_LISTEN"
direct_line=$HOLD_LINE
target_with=$(rss_kb "$TARGET_PID")
read -r dh50 dh99 < <(latency "direct, $TUNNELS connections held" --target "http://$TARGET_LISTEN/")
release

# --- tunnels held through the gateway ----------------------------------------

hold --proxy "$GATEWAY" --authority bench.local:18091 --user "$BENCH_USER"
tunnel_line=$HOLD_LINE
sleep 2
held_rss=$(gateway_sum rss_kb)
held_fds=$(gateway_sum fds_of)
held_threads=$(gateway_sum threads_of)
read -r gh50 gh99 < <(latency "gateway, $TUNNELS tunnels held" --proxy "http://$GATEWAY" --proxy-user "$BENCH_USER" --target "$TARGET_URL")
read -r ch50 ch99 < <(latency "new CONNECT, $TUNNELS tunnels held" --connect --proxy "http://$GATEWAY" --proxy-user "$BENCH_USER" --target "$TARGET_URL")
after_rss=$(gateway_sum rss_kb)
release
sleep 2
released_rss=$(gateway_sum rss_kb)
released_fds=$(gateway_sum fds_of)
# What the allocator gives back once it has had time (jemalloc purges
# freed pages after about 10 s).
sleep 28
settled_rss=$(gateway_sum rss_kb)

opened=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["open"])' "$tunnel_line")
per_tunnel=$(awk -v a="$idle_rss" -v b="$held_rss" -v n="$opened" 'BEGIN { printf "%.1f", (b - a) / (n > 0 ? n : 1) }')
per_direct=$(awk -v a="$target_before" -v b="$target_with" -v n="$TUNNELS" 'BEGIN { printf "%.1f", (b - a) / n }')
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1024 }'; }

row "gateway processes (open-files limit $LIMIT: $PER_GATEWAY tunnels each at most)" "$REPLICAS"
row "tunnels opened (CONNECT + one GET each)" "$tunnel_line"
row "plain connections held on the target (direct)" "$direct_line"
row "gateway RSS idle (after the latency runs)" "$(mb "$idle_rss")"
row "gateway RSS with $opened tunnels held" "$(mb "$held_rss")"
row "gateway RSS per tunnel" "$per_tunnel KB"
row "bench-target RSS per held plain connection (reference)" "$per_direct KB"
row "gateway RSS after the latency runs, tunnels still held" "$(mb "$after_rss")"
row "gateway RSS once the tunnels closed" "$(mb "$released_rss")"
row "gateway RSS 30 s after the tunnels closed" "$(mb "$settled_rss")"
row "gateway descriptors idle / held / closed" "$idle_fds / $held_fds / $released_fds"
row "gateway threads idle / held" "$idle_threads / $held_threads"
row "request direct, nothing held: p50 / p99" "$d50 / $d99 ms"
row "request direct, $TUNNELS connections held: p50 / p99" "$dh50 / $dh99 ms"
row "request through the gateway, nothing held: p50 / p99" "$g50 / $g99 ms"
row "request through the gateway, $opened tunnels held: p50 / p99" "$gh50 / $gh99 ms"
row "new CONNECT + GET, nothing held: p50 / p99" "$c50 / $c99 ms"
row "new CONNECT + GET, $opened tunnels held: p50 / p99" "$ch50 / $ch99 ms"
echo
cat "$OUT"
