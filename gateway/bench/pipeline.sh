#!/usr/bin/env bash
# Issue 5's figures, side by side in one run, on 127.0.0.1 only:
#
#   dispatch  scheduler --dry-run: jobs pulled, validated, dispatched and
#             answered with nothing fetched (the scheduler's own ceiling);
#   http      scrape jobs end to end (publish → JetStream → scheduler → http
#             worker → gateway → target → extraction → result) against the
#             limit: a plain reqwest loop fetching the same page directly,
#             and the same loop through the gateway;
#   chromium  Chromium page jobs (a page whose content a script renders)
#             with 10 pages at once, one long-lived browser vs a browser per
#             job: jobs/s, p50/p95 job latency and peak RSS of the workers;
#             Debian's headless shell (the workers' default) and full
#             Chromium.
#
# Each part also reports the CPU each process spent per job, which says
# where the time goes on this 2-core machine.
#
# Environment: BENCH_PARTS (default "dispatch http chromium"),
# BENCH_DISPATCH_JOBS (20000), BENCH_JOBS (5000), BENCH_CHROMIUM_JOBS (200),
# BENCH_CONCURRENCY (64), CLAWGRESS_BIN, BENCH_KEEP_TMP=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
DURATION=5
WARMUP=1
SIZE=4096
PARTS=${BENCH_PARTS:-dispatch http chromium}
DISPATCH_JOBS=${BENCH_DISPATCH_JOBS:-20000}
JOBS=${BENCH_JOBS:-5000}
CHROMIUM_JOBS=${BENCH_CHROMIUM_JOBS:-200}
CONCURRENCY=${BENCH_CONCURRENCY:-64}
TARGET_LISTEN=127.0.0.1:18080
NATS_PORT=14223
NATS_URL=nats://127.0.0.1:$NATS_PORT
GATEWAY=127.0.0.1:13140

# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"

nats_server_bin
clawgress_bin
python3 -c 'pass' 2>/dev/null || die "python3 is needed to summarise results"

# --- helpers ---------------------------------------------------------------

HZ=$(getconf CLK_TCK)
# CPU seconds (user + system) a process has used so far.
cpu_of() { awk -v hz="$HZ" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }

# cpu_snapshot NAME=PID...: prints "NAME=SECONDS ..." for the processes.
cpu_snapshot() {
    local entry out=()
    for entry in "$@"; do
        out+=("${entry%%=*}=$(cpu_of "${entry#*=}")")
    done
    printf '%s\n' "${out[*]}"
}

# cpu_per_job BEFORE AFTER JOBS SUBMIT_CPU: a table row of CPU ms per job.
cpu_per_job() {
    python3 - "$1" "$2" "$3" "$4" <<'EOF'
import sys
before = dict(kv.split("=") for kv in sys.argv[1].split())
after = dict(kv.split("=") for kv in sys.argv[2].split())
jobs, submit = int(sys.argv[3]), float(sys.argv[4])
cells = [(name, (float(after[name]) - float(before[name])) * 1000 / jobs) for name in before]
cells.append(("submit", submit * 1000 / jobs))
total = sum(ms for _, ms in cells)
print("| CPU per job | " + " | ".join(f"{name} {ms:.3f} ms" for name, ms in cells) + f" | total {total:.3f} ms |")
EOF
}

# Peak RSS (KiB) of a process and all its descendants, sampled every 100 ms
# into $TMP/rss-$1 until the file $TMP/rss-$1.stop appears.
rss_sampler() {
    local root=$1 peak=0 now
    while [ ! -e "$TMP/rss-$root.stop" ]; do
        now=$(ps -e -o pid=,ppid=,rss= | awk -v root="$root" '
            { parent[$1] = $2; rss[$1] = $3 }
            END {
                for (p in rss) {
                    q = p
                    while (q != "" && q != 0 && q != root) q = parent[q]
                    if (q == root) total += rss[p]
                }
                print total + 0
            }')
        [ "$now" -gt "$peak" ] && peak=$now
        echo "$peak" >"$TMP/rss-$root"
        sleep 0.1
    done
}

# summarise RESULTS.jsonl: ok count, rate over the finish times, latency.
summarise() {
    python3 - "$1" <<'EOF'
import json, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ok = [r for r in rows if r.get("status") == "ok"]
stamps = sorted(datetime.datetime.fromisoformat(r["finished_at"].replace("Z", "+00:00")) for r in rows)
span = (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else 0
rate = (len(stamps) - 1) / span if span > 0 else 0
lat = sorted(r["duration_ms"] for r in rows)
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0
print(f"{len(rows)} {len(ok)} {rate:.1f} {pct(0.50)} {pct(0.95)}")
EOF
}

# start_scheduler NAME ARGS...: sets SCHEDULER_PID.
start_scheduler() {
    local name=$1
    shift
    "$BIN" scheduler --nats "$NATS_URL" --gateway "http://$GATEWAY" \
        --credentials "$TMP/credentials.yaml" "$@" >"$TMP/$name.log" 2>&1 &
    SCHEDULER_PID=$!
    PIDS+=("$SCHEDULER_PID")
}

stop_scheduler() {
    kill "$SCHEDULER_PID" 2>/dev/null || true
    wait "$SCHEDULER_PID" 2>/dev/null || true
}

# submit_wait NAME FILE: publishes and waits for every result; sets WALL
# (seconds, publishing included) and SUBMIT_CPU.
submit_wait() {
    local name=$1 file=$2 start end
    start=$(date +%s.%N)
    /usr/bin/time -f '%U %S' -o "$TMP/$name.time" \
        "$BIN" submit --nats "$NATS_URL" --wait --wait-secs 900 --json "$file" \
        >"$TMP/$name.results" 2>"$TMP/$name.submit.log" \
        || { tail -n 5 "$TMP/$name.submit.log" >&2; die "$name: not every job succeeded"; }
    end=$(date +%s.%N)
    WALL=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", e - s }')
    SUBMIT_CPU=$(awk '{ printf "%.3f", $1 + $2 }' "$TMP/$name.time")
}

# jobs FILE COUNT PREFIX FETCH EXTRACT: JSON lines of scrape jobs.
jobs() {
    local file=$1 count=$2 prefix=$3 fetch=$4 extract=$5 i
    for i in $(seq 1 "$count"); do
        printf '{"version":1,"type":"scrape","id":"%s-%s-%s","agent":"bench-agent","url":"http://bench.local:18080/p%s","fetch":"%s","extract":%s}\n' \
            "$prefix" "$$" "$i" "$i" "$fetch" "$extract"
    done >"$file"
}

# --- the shared set-up -----------------------------------------------------

"$BIN" bench-target --listen "$TARGET_LISTEN" --size "$SIZE" --html 2>"$TMP/target.log" &
TARGET_PID=$!
PIDS+=("$TARGET_PID")
wait_listening bench-target "$TARGET_LISTEN" "$TARGET_PID"
start_clawgress gateway "$GATEWAY" 127.0.0.1:19140 gateway/bench/policy.yaml
GATEWAY_PID=${PIDS[-1]}
"$NATS" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$TMP/nats" >"$TMP/nats.log" 2>&1 &
NATS_PID=$!
PIDS+=("$NATS_PID")
wait_listening nats-server "127.0.0.1:$NATS_PORT" "$NATS_PID"
printf 'agents:\n  bench-agent: bench-key\n' >"$TMP/credentials.yaml"

OUT=$TMP/table.md
printf '| run | figure |\n|---|---:|\n' >"$OUT"
row() { printf '| %s | %s |\n' "$1" "$2" | tee -a "$OUT" >&2; }

# --- dispatch --------------------------------------------------------------

if [[ " $PARTS " == *" dispatch "* ]]; then
    jobs "$TMP/dispatch.jsonl" "$DISPATCH_JOBS" dispatch http '{"title":"h1"}'
    start_scheduler dispatch --dry-run --chromium none --concurrency "$CONCURRENCY" --per-domain "$CONCURRENCY"
    log "run: $DISPATCH_JOBS jobs, scheduler --dry-run, concurrency $CONCURRENCY"
    before=$(cpu_snapshot nats=$NATS_PID scheduler=$SCHEDULER_PID)
    submit_wait dispatch "$TMP/dispatch.jsonl"
    after=$(cpu_snapshot nats=$NATS_PID scheduler=$SCHEDULER_PID)
    stop_scheduler
    read -r n ok rate _ _ < <(summarise "$TMP/dispatch.results")
    row "dispatch, no-op fetch ($ok of $n ok, $WALL s incl. publishing)" \
        "$(awk -v n="$n" -v w="$WALL" 'BEGIN { printf "%.0f jobs/s", n / w }')"
    row "dispatch, steady rate over the results' finish times" "$rate jobs/s"
    cpu_per_job "$before" "$after" "$n" "$SUBMIT_CPU" | tee -a "$OUT" >&2
fi

# --- http --------------------------------------------------------------

if [[ " $PARTS " == *" http "* ]]; then
    log "run: reqwest loop, direct, $CONCURRENCY at once (the limit)"
    direct=$("$BIN" bench --reqwest --target "http://$TARGET_LISTEN/p1" --connections "$CONCURRENCY" \
        --duration "$DURATION" --warmup "$WARMUP" --json)
    direct_rps=$(printf '%s' "$direct" | sed 's/.*"rps":\([0-9.]*\).*/\1/')
    row "reqwest loop, direct, $CONCURRENCY at once" "$(printf '%.0f' "$direct_rps") req/s"
    log "run: reqwest loop through the gateway, $CONCURRENCY at once"
    proxied=$("$BIN" bench --reqwest --proxy "http://$GATEWAY" --proxy-user "$BENCH_USER" \
        --target "http://bench.local:18080/p1" --connections "$CONCURRENCY" \
        --duration "$DURATION" --warmup "$WARMUP" --json)
    proxied_rps=$(printf '%s' "$proxied" | sed 's/.*"rps":\([0-9.]*\).*/\1/')
    row "reqwest loop through the gateway, $CONCURRENCY at once" "$(printf '%.0f' "$proxied_rps") req/s"

    jobs "$TMP/http.jsonl" "$JOBS" http http '{"title":"h1"}'
    start_scheduler http --chromium none --concurrency "$CONCURRENCY" --per-domain "$CONCURRENCY"
    log "run: $JOBS http jobs end to end, concurrency $CONCURRENCY"
    before=$(cpu_snapshot nats=$NATS_PID scheduler=$SCHEDULER_PID gateway=$GATEWAY_PID target=$TARGET_PID)
    submit_wait http "$TMP/http.jsonl"
    after=$(cpu_snapshot nats=$NATS_PID scheduler=$SCHEDULER_PID gateway=$GATEWAY_PID target=$TARGET_PID)
    stop_scheduler
    read -r n ok rate _ _ < <(summarise "$TMP/http.results")
    jobs_rate=$(awk -v n="$ok" -v w="$WALL" 'BEGIN { printf "%.1f", n / w }')
    row "http jobs end to end ($ok of $n ok, $WALL s incl. publishing)" "$(printf '%.0f' "$jobs_rate") jobs/s"
    row "http jobs, steady rate over the results' finish times" "$rate jobs/s"
    cpu_per_job "$before" "$after" "$n" "$SUBMIT_CPU" | tee -a "$OUT" >&2
    row "ratio jobs / reqwest loop direct (target ≥ 0.50)" \
        "$(awk -v a="$jobs_rate" -v b="$direct_rps" 'BEGIN { printf "%.3f", a / b }')"
    row "ratio jobs / reqwest loop through the gateway" \
        "$(awk -v a="$jobs_rate" -v b="$proxied_rps" 'BEGIN { printf "%.3f", a / b }')"
fi

# --- chromium --------------------------------------------------------------

if [[ " $PARTS " == *" chromium "* ]]; then
    ./deploy/local/prereqs.sh chromium
    # The workers' default browser (the headless shell) with and without
    # reuse, then full Chromium (new headless mode) for comparison.
    for run in ${BENCH_CHROMIUM_RUNS:-chromium-headless-shell:0 chromium-headless-shell:1 chromium:0}; do
        exe=/usr/bin/${run%%:*}
        reuse=${run##*:}
        label="${run%%:*}, $([ "$reuse" = 0 ] && echo "one browser reused" || echo "a browser per job")"
        tag=${run%%:*}-$reuse
        start_scheduler "$tag" --chromium "$exe" --browser-pages 10 \
            --browser-jobs "$reuse" --concurrency 10 --per-domain 10
        # The browser starts with the first job: a warm-up batch, not measured.
        jobs "$TMP/warm-$tag.jsonl" 10 "warm-$tag" chromium '{"price":{"selector":".price","required":true}}'
        submit_wait "warm-$tag" "$TMP/warm-$tag.jsonl"
        jobs "$TMP/$tag.jsonl" "$CHROMIUM_JOBS" "$tag" chromium \
            '{"price":{"selector":".price","required":true}}'
        rm -f "$TMP/rss-$SCHEDULER_PID.stop"
        rss_sampler "$SCHEDULER_PID" &
        sampler=$!
        log "run: $CHROMIUM_JOBS chromium jobs, 10 pages at once, $label"
        submit_wait "$tag" "$TMP/$tag.jsonl"
        touch "$TMP/rss-$SCHEDULER_PID.stop"
        wait "$sampler"
        peak=$(cat "$TMP/rss-$SCHEDULER_PID")
        stop_scheduler
        read -r n ok rate p50 p95 < <(summarise "$TMP/$tag.results")
        row "$label: jobs/s ($ok of $n ok, $WALL s)" \
            "$(awk -v n="$ok" -v w="$WALL" 'BEGIN { printf "%.1f", n / w }')"
        row "$label: job latency p50 / p95" "$p50 ms / $p95 ms"
        row "$label: peak RSS, scheduler + browsers" "$((peak / 1024)) MiB"
    done
fi

log ""
cat "$OUT"
