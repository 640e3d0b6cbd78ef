#!/usr/bin/env bash
# Issue 17: what the first `make up` costs, and whether a lighter build
# profile would be worth it. Each profile is built from a cold cache (a
# target directory of its own, nothing reused) and timed; then the gateway
# it produced is measured as `proxy_vs_squid.sh` measures it: HTTP requests
# through the proxy at 1 and 64 connections against bench-target.
#
#   release  the shipped [profile.release] (opt-level 3, codegen-units 4)
#   light    the same with opt-level 1 and codegen-units 16
#
# Prints a Markdown table. Environment: BENCH_DURATION (5), BENCH_PROFILES
# ("release light"), BENCH_KEEP_TMP=1. Takes about 15 minutes on 2 cores.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
DURATION=${BENCH_DURATION:-5}
WARMUP=1
SIZE=1024
PROFILES=${BENCH_PROFILES:-release light}
TARGET_LISTEN=127.0.0.1:18080

# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"

declare -A BUILT SECONDS_TAKEN
for profile in $PROFILES; do
    env=()
    case "$profile" in
        release) ;;
        light) env=(CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16) ;;
        *) die "unknown profile $profile (release, light)" ;;
    esac
    log "building $profile from a cold cache (this takes minutes)"
    start=$(date +%s.%N)
    env "${env[@]}" CARGO_TARGET_DIR="$TMP/target-$profile" cargo build --release --locked --quiet --bin clawgress
    end=$(date +%s.%N)
    SECONDS_TAKEN[$profile]=$(python3 -c "print(round($end - $start))")
    BUILT[$profile]=$TMP/target-$profile/release/clawgress
done

BIN=${BUILT[${PROFILES%% *}]}
start_target
port=13190
for profile in $PROFILES; do
    BIN=${BUILT[$profile]}
    listen=127.0.0.1:$port
    start_clawgress "$profile" "$listen" 127.0.0.1:$((port + 10000)) gateway/bench/policy.yaml
    for connections in 1 64; do
        run "$profile" --proxy "http://$listen" --proxy-user "$BENCH_USER" --target "$TARGET_URL" \
            --connections "$connections"
    done
    kill "${PIDS[-1]}"
    port=$((port + 1))
done

for profile in $PROFILES; do
    printf '%s %s %s\n' "$profile" "${SECONDS_TAKEN[$profile]}" "$(stat -c %s "${BUILT[$profile]}")"
done >"$TMP/builds.txt"
python3 - "$RESULTS" "$TMP/builds.txt" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
builds = [l.split() for l in open(sys.argv[2])]
rate = {(r["name"], r["connections"]): r["rps"] for r in runs}
base = builds[0][0]
print("| profile | cold build | binary | req/s, 1 conn | req/s, 64 conns | vs " + base + " (64) |")
print("|---|---:|---:|---:|---:|---:|")
for name, secs, size in builds:
    one, many = rate.get((name, 1), 0), rate.get((name, 64), 0)
    ratio = many / rate[(base, 64)] if rate.get((base, 64)) else 0
    print(f"| {name} | {int(secs) // 60} m {int(secs) % 60:02d} s | {int(size) / 1e6:.0f} MB | {one:,.0f} | {many:,.0f} | {ratio:.2f}x |")
PY
