#!/usr/bin/env bash
# Issue 16 §6: the soak. Mixed load for SOAK_MINUTES (10) against local
# targets only (127.0.0.1), paced rather than saturating, so what it shows
# is drift, not peak throughput:
#
#   http jobs      batches through NATS → scheduler → http worker → gateway;
#                  a few per batch for a denied host (denied results);
#   chromium jobs  a batch of rendered pages every round (headless shell);
#   CONNECT        hold_tunnels.py opens 500 tunnels, holds them ~10 s,
#                  closes them, again;
#   denials        paced.py: GETs for a host the policy does not allow (403);
#   rate limits    paced.py: GETs for a host allowed at 60/min (most 429).
#
# Every SOAK_SAMPLE_SECS (30) it records the gateway's and the scheduler's
# RSS (the scheduler also with its browsers), open descriptors and threads,
# and the p99 of a plain request through the gateway (a 2 s, one-connection
# `clawgress bench` probe), and at the end prints the samples and the drift
# (first sample vs last) as Markdown.
#
# Environment: SOAK_MINUTES, SOAK_SAMPLE_SECS, SOAK_CHROMIUM (default
# /usr/bin/chromium-headless-shell; "none" leaves Chromium jobs out),
# CLAWGRESS_BIN, BENCH_KEEP_TMP=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
MINUTES=${SOAK_MINUTES:-10}
SAMPLE_SECS=${SOAK_SAMPLE_SECS:-30}
CHROMIUM=${SOAK_CHROMIUM:-/usr/bin/chromium-headless-shell}
DURATION=2
WARMUP=0
SIZE=4096
# Ports of their own, so this can run next to the other benches.
TARGET_LISTEN=127.0.0.1:18092
NATS_PORT=14224
NATS_URL=nats://127.0.0.1:$NATS_PORT
GATEWAY=127.0.0.1:13161
ADMIN=127.0.0.1:19161
TARGET_URL=http://bench.local:18092/

ulimit -Sn "$(ulimit -Hn)"

# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"

python3 -c 'pass' 2>/dev/null || die "python3 is needed for the load clients and the summary"
nats_server_bin
clawgress_bin
[ "$CHROMIUM" = none ] || ./deploy/local/prereqs.sh chromium

# --- set-up ------------------------------------------------------------------

cat >"$TMP/policy.yaml" <<'YAML'
# The soak's policy: the html target under three names. bench.local is
# allowed without a practical limit, limited.local at 60/min, denied.local
# not at all.
egress:
  default_action: deny
  logging: all_requests
allowlist:
  soak:
    - domain: bench.local
      ports: [18092]
      protocols: [http, https]
    - domain: limited.local
      ports: [18092]
      protocols: [http]
      rate_limit: 60/min
rate_limits:
  per_agent: {default: 1000000/s, burst: 1000000}
  per_project: {default: 1000000/s, burst: 1000000}
  per_domain: {default: 1000000/s, customizable: true, max: 1000000/s}
  global: {default: 1000000/s, burst: 1000000}
  throttle_action: reject
dns:
  static_hosts:
    bench.local: 127.0.0.1
    limited.local: 127.0.0.1
    denied.local: 127.0.0.1
fault_containment:
  max_concurrent_requests: 100000
  max_pending_bytes: 1GB
YAML

"$BIN" bench-target --listen "$TARGET_LISTEN" --size "$SIZE" --html 2>"$TMP/target.log" &
PIDS+=($!)
wait_listening bench-target "$TARGET_LISTEN" $!
start_clawgress gateway "$GATEWAY" "$ADMIN" "$TMP/policy.yaml"
GATEWAY_PID=${PIDS[-1]}
"$NATS" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$TMP/nats" >"$TMP/nats.log" 2>&1 &
NATS_PID=$!
PIDS+=("$NATS_PID")
wait_listening nats-server "127.0.0.1:$NATS_PORT" "$NATS_PID"
printf 'agents:\n  bench-agent: bench-key\n' >"$TMP/credentials.yaml"
"$BIN" scheduler --nats "$NATS_URL" --gateway "http://$GATEWAY" --credentials "$TMP/credentials.yaml" \
    --chromium "$CHROMIUM" --browser-pages 4 --concurrency 16 --per-domain 16 >"$TMP/scheduler.log" 2>&1 &
SCHEDULER_PID=$!
PIDS+=("$SCHEDULER_PID")

# Before any load: what "after the load stopped" is compared with.
before_gw_rss=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$GATEWAY_PID/status")
before_gw_fds=$(ls "/proc/$GATEWAY_PID/fd" | wc -l)
END=$(($(date +%s) + MINUTES * 60))
running() { [ "$(date +%s)" -lt "$END" ]; }

# jobs FILE COUNT PREFIX FETCH HOST: JSON lines of scrape jobs.
jobs() {
    local file=$1 count=$2 prefix=$3 fetch=$4 host=$5 i extract='{"title":"h1"}'
    [ "$fetch" = chromium ] && extract='{"price":{"selector":".price","required":true}}'
    for i in $(seq 1 "$count"); do
        printf '{"version":1,"type":"scrape","id":"%s-%s-%s","agent":"bench-agent","url":"http://%s:18092/p%s","fetch":"%s","extract":%s}\n' \
            "$prefix" "$$" "$i" "$host" "$i" "$fetch" "$extract"
    done >"$file"
}

# --- load --------------------------------------------------------------------

# The job loops: one batch at a time, results appended to one file each.
job_loop() {
    local kind=$1 count=$2 pause=$3 round=0
    while running; do
        round=$((round + 1))
        if [ "$kind" = http ]; then
            jobs "$TMP/$kind-$round.jsonl" "$count" "$kind-$round" http bench.local
            jobs "$TMP/denied-$round.jsonl" 2 "denied-$round" http denied.local
            cat "$TMP/denied-$round.jsonl" >>"$TMP/$kind-$round.jsonl"
        else
            jobs "$TMP/$kind-$round.jsonl" "$count" "$kind-$round" chromium bench.local
        fi
        # A denied job makes submit exit 3: the results say what happened.
        "$BIN" submit --nats "$NATS_URL" --wait --wait-secs 300 --json "$TMP/$kind-$round.jsonl" \
            >>"$TMP/$kind.results" 2>>"$TMP/$kind.submit.log" || true
        rm -f "$TMP/$kind-$round.jsonl" "$TMP/denied-$round.jsonl"
        sleep "$pause"
    done
}

tunnel_loop() {
    while running; do
        python3 gateway/bench/hold_tunnels.py --proxy "$GATEWAY" --authority bench.local:18092 \
            --user "$BENCH_USER" --count 500 --parallel 50 < <(sleep 10) >>"$TMP/tunnels.out" 2>>"$TMP/tunnels.err" || true
        sleep 2
    done
}

LOADS=()
job_loop http 200 2 &
LOADS+=($!)
if [ "$CHROMIUM" != none ]; then
    job_loop chromium 8 5 &
    LOADS+=($!)
fi
tunnel_loop &
LOADS+=($!)
python3 gateway/bench/paced.py --proxy "$GATEWAY" --user "$BENCH_USER" --url http://denied.local:18092/ \
    --rate 20 --seconds $((MINUTES * 60)) >"$TMP/denials.out" 2>"$TMP/denials.err" &
LOADS+=($!)
python3 gateway/bench/paced.py --proxy "$GATEWAY" --user "$BENCH_USER" --url http://limited.local:18092/ \
    --rate 10 --seconds $((MINUTES * 60)) >"$TMP/limited.out" 2>"$TMP/limited.err" &
LOADS+=($!)
PIDS+=("${LOADS[@]}")
# A load loop stopped early (a failed run, Ctrl-C) takes the client it is
# running with it.
soak_cleanup() {
    local pid
    for pid in "${LOADS[@]}"; do
        pkill -P "$pid" 2>/dev/null || true
    done
    cleanup
}
trap soak_cleanup EXIT

# --- samples -----------------------------------------------------------------

status_of() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
fds_of() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
# RSS (KiB) of a process and its descendants (the scheduler's browsers).
tree_rss() {
    ps -e -o pid=,ppid=,rss= | awk -v root="$1" '
        { parent[$1] = $2; rss[$1] = $3 }
        END {
            for (p in rss) { q = p; while (q != "" && q != 0 && q != root) q = parent[q]; if (q == root) total += rss[p] }
            print total + 0
        }'
}

SAMPLES=$TMP/samples.csv
echo "seconds,gw_rss_kb,gw_fds,gw_threads,sched_rss_kb,sched_tree_rss_kb,sched_fds,sched_threads,p50_ms,p99_ms" >"$SAMPLES"
START=$(date +%s)
log "soak: $MINUTES min, a sample every $SAMPLE_SECS s"
while running; do
    sleep "$SAMPLE_SECS"
    kill -0 "$GATEWAY_PID" 2>/dev/null || die "the gateway exited: $(tail -n 5 "$TMP/gateway.log")"
    kill -0 "$SCHEDULER_PID" 2>/dev/null || die "the scheduler exited: $(tail -n 5 "$TMP/scheduler.log")"
    probe_line=$("$BIN" bench --proxy "http://$GATEWAY" --proxy-user "$BENCH_USER" --target "$TARGET_URL" \
        --connections 1 --duration "$DURATION" --warmup "$WARMUP" --json 2>/dev/null) || probe_line='{}'
    latency=$(python3 -c 'import json, sys; r = json.loads(sys.argv[1]); print("%.2f,%.2f" % (r.get("p50_us", 0) / 1000, r.get("p99_us", 0) / 1000))' "$probe_line")
    sample="$(($(date +%s) - START)),$(status_of "$GATEWAY_PID" VmRSS),$(fds_of "$GATEWAY_PID"),$(status_of "$GATEWAY_PID" Threads)"
    sample+=",$(status_of "$SCHEDULER_PID" VmRSS),$(tree_rss "$SCHEDULER_PID"),$(fds_of "$SCHEDULER_PID"),$(status_of "$SCHEDULER_PID" Threads),$latency"
    echo "$sample" >>"$SAMPLES"
    log "sample: $sample"
done
log "soak: load finished, waiting for the last batches"
for pid in "${LOADS[@]}"; do
    wait "$pid" 2>/dev/null || true
done
sleep 3
after_gw_fds=$(fds_of "$GATEWAY_PID")
after_gw_rss=$(status_of "$GATEWAY_PID" VmRSS)

# --- report ------------------------------------------------------------------

python3 - "$SAMPLES" "$TMP" "$MINUTES" "$after_gw_rss" "$after_gw_fds" "$before_gw_rss" "$before_gw_fds" <<'EOF'
import csv, json, os, sys
samples, tmp, minutes, quiet_rss, quiet_fds, start_rss, start_fds = sys.argv[1:8]
rows = list(csv.DictReader(open(samples)))
if len(rows) < 2:
    sys.exit("error: fewer than two samples; raise SOAK_MINUTES")

def results(kind):
    path = os.path.join(tmp, f"{kind}.results")
    counts = {}
    if os.path.exists(path):
        for line in open(path):
            try:
                status = json.loads(line).get("status", "?")
            except ValueError:
                continue
            counts[status] = counts.get(status, 0) + 1
    return counts

def first_line(name):
    path = os.path.join(tmp, name)
    return open(path).read().strip() if os.path.exists(path) else "n/a"

tunnels = [json.loads(l) for l in open(os.path.join(tmp, "tunnels.out")) if l.startswith("{")] if os.path.exists(os.path.join(tmp, "tunnels.out")) else []
print(f"### Soak, {minutes} min: load\n")
print("| load | outcome |\n|---|---|")
print(f"| http jobs (with 2 denied per batch of 202) | {results('http')} |")
print(f"| chromium jobs | {results('chromium')} |")
print(f"| CONNECT tunnels (rounds of 500 held ~10 s) | {sum(t['open'] for t in tunnels)} opened, {sum(t['failed'] for t in tunnels)} failed, {len(tunnels)} rounds |")
print(f"| denials, 20/s (denied.local) | {first_line('denials.out')} |")
print(f"| rate limited, 10/s at 60/min (limited.local) | {first_line('limited.out')} |")

cols = [("gw_rss_kb", "gateway RSS (MB)", 1 / 1024), ("gw_fds", "gateway fds", 1), ("gw_threads", "gateway threads", 1),
        ("sched_rss_kb", "scheduler RSS (MB)", 1 / 1024), ("sched_tree_rss_kb", "scheduler + browsers RSS (MB)", 1 / 1024),
        ("sched_fds", "scheduler fds", 1), ("sched_threads", "scheduler threads", 1),
        ("p50_ms", "probe p50 (ms)", 1), ("p99_ms", "probe p99 (ms)", 1)]
print(f"\n### Soak, {minutes} min: drift ({len(rows)} samples)\n")
print("| figure | first | last | drift | min | max |\n|---|---:|---:|---:|---:|---:|")
for key, name, scale in cols:
    values = [float(r[key] or 0) * scale for r in rows]
    first, last = values[0], values[-1]
    print(f"| {name} | {first:.2f} | {last:.2f} | {last - first:+.2f} | {min(values):.2f} | {max(values):.2f} |")
print(f"\nGateway before the load: RSS {int(start_rss) / 1024:.1f} MB, {start_fds} fds; "
      f"after it stopped: RSS {int(quiet_rss) / 1024:.1f} MB, {quiet_fds} fds.")
print("\n<details><summary>samples</summary>\n\n```\n" + open(samples).read() + "```\n</details>")
EOF
