#!/usr/bin/env bash
# Issue 16's browser figures, side by side in one run, on 127.0.0.1 only:
# the same script-rendered pages (bench-target --html: its `.price` exists
# only once a script ran) through the same Clawgress gateway, as many pages
# at once, by
#
#   clawgress        chromium jobs published to NATS and run by `clawgress
#                    scheduler` (its chromium backend: warm pages, a browser
#                    context of the agent's kept between jobs and wiped);
#   crawlee          Crawlee's PuppeteerCrawler (gateway/bench/browser/
#                    crawl.js, puppeteer-core), the gateway as its proxy with
#                    the agent's credential;
#   clawgress_fresh  the scheduler again with --browser-page-jobs 1: a new
#                    browser context (and renderer) per job, for the price of
#                    that isolation;
#
# all launching the same Debian binary. Each reports pages/s, p50/p95 page
# latency, the peak memory of its whole process tree (browsers included) as
# PSS and as summed RSS (browser/memory.py), and the CPU it spent per page;
# then the ratio. Target: Clawgress ≥ 2× Crawlee's pages/s at no more
# memory.
#
# Environment: BENCH_BROWSERS (default "chromium chromium-headless-shell":
# Debian's /usr/bin names), BENCH_PAGES (400), BENCH_CONCURRENCY (10),
# BENCH_ORDER ("clawgress crawlee clawgress_fresh"), CLAWGRESS_BIN,
# BENCH_KEEP_TMP=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
DURATION=5
WARMUP=1
SIZE=4096
BROWSERS=${BENCH_BROWSERS:-chromium chromium-headless-shell}
PAGES=${BENCH_PAGES:-400}
CONCURRENCY=${BENCH_CONCURRENCY:-10}
ORDER=${BENCH_ORDER:-clawgress crawlee clawgress_fresh}
# Ports of their own, so this can run next to the other benchmarks.
TARGET_PORT=18087
TARGET_LISTEN=127.0.0.1:$TARGET_PORT
TARGET_URL=http://bench.local:$TARGET_PORT/
NATS_PORT=14227
NATS_URL=nats://127.0.0.1:$NATS_PORT
GATEWAY=127.0.0.1:13147
NODE_PROJECT=$ROOT/gateway/bench/browser

# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"

# Every browser of this run has a profile under $TMP/tmp (both Clawgress's
# pool and puppeteer put theirs in $TMPDIR), so its command line names $TMP:
# whatever is left of them when the bench ends, however it ends, is killed.
mkdir -p "$TMP/tmp"
GROUPS_STARTED=()
stop_browsers() {
    local group pid
    for group in "${GROUPS_STARTED[@]}"; do
        kill -TERM -- "-$group" 2>/dev/null || true
    done
    for pid in $(pgrep -f -- "$TMP/tmp" || true); do
        log "killing a browser process left behind: $pid"
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap 'stop_browsers; cleanup' EXIT

nats_server_bin
clawgress_bin
./deploy/local/prereqs.sh chromium node
python3 -c 'pass' 2>/dev/null || die "python3 is needed to summarise results"

# Node >= 22.12 (puppeteer-core 25): Debian's, or the one prereqs.sh installed.
NODE_DIR="${XDG_DATA_HOME:-$HOME/.local/share}/clawgress/node/node_modules/.bin"
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 22 || (a === 22 && b >= 12) ? 0 : 1)' 2>/dev/null; then
    export PATH="$NODE_DIR:$PATH"
fi
log "node $(node --version)"
if [ ! -d "$NODE_PROJECT/node_modules" ]; then
    log "installing Crawlee and puppeteer-core (npm ci) in $NODE_PROJECT"
    (cd "$NODE_PROJECT" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in $NODE_PROJECT"
fi

# --- helpers ---------------------------------------------------------------

# CPU seconds (user + system, reaped children included: Chromium's closed
# renderers) of a process and its descendants alive now.
tree_cpu() {
    python3 - "$1" <<'EOF'
import os, sys
root, hz = int(sys.argv[1]), os.sysconf("SC_CLK_TCK")
parent, cpu = {}, {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    parent[int(pid)] = int(fields[1])
    cpu[int(pid)] = sum(int(f) for f in fields[11:15]) / hz
def under(pid):
    while pid > 1:
        if pid == root:
            return True
        pid = parent.get(pid, 0)
    return False
print(f"{sum(c for p, c in cpu.items() if under(p)):.2f}")
EOF
}

# Peak memory of a process and all its descendants, RSS and PSS
# (gateway/bench/browser/memory.py says why both), until stop_sampler.
start_sampler() {
    rm -f "$TMP/mem-$1.stop"
    python3 "$NODE_PROJECT/memory.py" "$1" "$TMP/mem-$1" "$TMP/mem-$1.stop" &
    SAMPLER=$!
}
stop_sampler() {
    touch "$TMP/mem-$1.stop"
    wait "$SAMPLER"
    read -r PEAK_RSS PEAK_PSS <"$TMP/mem-$1"
    PEAK_RSS=$((PEAK_RSS / 1024)) PEAK_PSS=$((PEAK_PSS / 1024))
}

# summarise RESULTS: ok count, p50 and p95 of the jobs' durations.
summarise() {
    python3 - "$1" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ok = [r for r in rows if r.get("status") == "ok" and r.get("data", {}).get("price") == "42"]
lat = sorted(r["duration_ms"] for r in rows)
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0
print(f"{len(rows)} {len(ok)} {pct(0.50)} {pct(0.95)}")
EOF
}

# jobs FILE COUNT TAG PREFIX: JSON lines of chromium jobs, each a distinct
# page; ids unique to the run (a reused id would be answered from before).
jobs() {
    local file=$1 count=$2 tag=$3 prefix=$4 i
    for i in $(seq 1 "$count"); do
        printf '{"version":1,"type":"scrape","id":"%s-%s-%s-%s","agent":"bench-agent","url":"http://bench.local:%s/%s%s","fetch":"chromium","extract":{"price":{"selector":".price","required":true}}}\n' \
            "$tag" "$prefix" "$$" "$i" "$TARGET_PORT" "$prefix" "$i"
    done >"$file"
}

# wait_file FILE PID NAME: until FILE exists, while PID lives.
wait_file() {
    until [ -e "$1" ]; do
        kill -0 "$2" 2>/dev/null || { tail -n 20 "$TMP/$3.log" >&2; die "$3 exited early ($TMP/$3.log)"; }
        sleep 0.05
    done
}

submit_wait() {
    local name=$1 file=$2 start end
    start=$(date +%s.%N)
    "$BIN" submit --nats "$NATS_URL" --wait --wait-secs 900 --json "$file" \
        >"$TMP/$name.results" 2>"$TMP/$name.submit.log" \
        || { tail -n 5 "$TMP/$name.submit.log" >&2; log "$name: not every job succeeded"; }
    end=$(date +%s.%N)
    WALL=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", e - s }')
}

OUT=$TMP/table.md
printf '| browser | runner | pages/s | p50 / p95 page latency | peak PSS, process tree | peak RSS, summed | CPU per page |\n|---|---|---:|---:|---:|---:|---:|\n' >"$OUT"
row() { printf '| %s |\n' "$*" | tee -a "$OUT" >&2; }
per_page() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.0f ms", (b - a) * 1000 / n }'; }

# --- the shared set-up -----------------------------------------------------

"$BIN" bench-target --listen "$TARGET_LISTEN" --size "$SIZE" --html 2>"$TMP/target.log" &
PIDS+=($!)
wait_listening bench-target "$TARGET_LISTEN" $!
sed "s/ports: \[18080\]/ports: [$TARGET_PORT]/" gateway/bench/policy.yaml >"$TMP/policy.yaml"
start_clawgress gateway "$GATEWAY" 127.0.0.1:19147 "$TMP/policy.yaml"
"$NATS" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$TMP/nats" >"$TMP/nats.log" 2>&1 &
NATS_PID=$!
PIDS+=("$NATS_PID")
wait_listening nats-server "127.0.0.1:$NATS_PORT" "$NATS_PID"
printf 'agents:\n  bench-agent: bench-key\n' >"$TMP/credentials.yaml"

# --- the runs ------------------------------------------------------------

# run_clawgress EXE BROWSER [PAGE-JOBS]: the scheduler's chromium jobs, with
# warm pages (the default) or, with PAGE-JOBS 1, a new context per job.
run_clawgress() {
    local exe=$1 tag=clawgress-$2 page_jobs=${3:-} scheduler n ok p50 p95 cpu0 cpu1 nats0 nats1 label=Clawgress
    local extra=()
    if [ -n "$page_jobs" ]; then
        extra=(--browser-page-jobs "$page_jobs")
        tag=$tag-$page_jobs
        label="Clawgress, --browser-page-jobs $page_jobs"
    fi
    TMPDIR=$TMP/tmp "$BIN" scheduler --nats "$NATS_URL" --gateway "http://$GATEWAY" \
        --credentials "$TMP/credentials.yaml" --chromium "$exe" --browser-pages "$CONCURRENCY" \
        --browser-jobs 0 --concurrency "$CONCURRENCY" --per-domain "$CONCURRENCY" "${extra[@]}" \
        >"$TMP/$tag.log" 2>&1 &
    scheduler=$!
    PIDS+=("$scheduler")
    # The browser starts with the first job: a warm-up batch, not measured.
    jobs "$TMP/warm-$tag.jsonl" "$CONCURRENCY" "$tag" warm
    submit_wait "warm-$tag" "$TMP/warm-$tag.jsonl"
    jobs "$TMP/$tag.jsonl" "$PAGES" "$tag" p
    start_sampler "$NATS_PID"
    nats_sampler=$SAMPLER
    start_sampler "$scheduler"
    cpu0=$(tree_cpu "$scheduler")
    nats0=$(tree_cpu "$NATS_PID")
    log "run: $PAGES pages, $CONCURRENCY at once, Clawgress jobs in $exe"
    submit_wait "$tag" "$TMP/$tag.jsonl"
    cpu1=$(tree_cpu "$scheduler")
    nats1=$(tree_cpu "$NATS_PID")
    stop_sampler "$scheduler"
    local pss=$PEAK_PSS rss=$PEAK_RSS
    SAMPLER=$nats_sampler
    stop_sampler "$NATS_PID"
    kill "$scheduler"
    wait "$scheduler" 2>/dev/null || true
    read -r n ok p50 p95 < <(summarise "$TMP/$tag.results")
    local rate
    rate=$(awk -v n="$ok" -v w="$WALL" 'BEGIN { printf "%.2f", n / w }')
    if [ -z "$page_jobs" ]; then
        CLAWGRESS_RATE=$rate CLAWGRESS_PSS=$pss CLAWGRESS_RSS=$rss
    fi
    row "$exe | $label ($ok of $n ok, $WALL s) | $rate | $p50 / $p95 ms" \
        "| $pss MiB (+ nats-server $PEAK_PSS) | $rss MiB (+ nats-server $PEAK_RSS) |" \
        "$(per_page "$cpu0" "$cpu1" "$n") (+ nats-server $(per_page "$nats0" "$nats1" "$n"))"
}

# The price of a new browser context (and renderer) per job, for comparison.
run_clawgress_fresh() { run_clawgress "$1" "$2" 1; }

run_crawlee() {
    local exe=$1 label=$1 tag=crawlee-$2 headless=true node_pid cpu0 cpu1 line sync
    sync=$TMP/sync-$tag
    mkdir -p "$sync"
    # The real binary, as Clawgress starts it: Debian's wrapper does not exec.
    exe=/usr/lib/chromium/$(basename "$exe")
    [[ $exe == *headless-shell ]] && headless=shell
    log "run: $PAGES pages, $CONCURRENCY at once, Crawlee PuppeteerCrawler in $exe"
    # Its own process group (setsid), so the trap can end it and its browser.
    TMPDIR=$TMP/tmp CRAWLEE_STORAGE_DIR=$TMP/crawlee-storage setsid node "$NODE_PROJECT/crawl.js" \
        --executable "$exe" --headless "$headless" \
        --proxy "http://${BENCH_USER}@$GATEWAY" --urls "http://bench.local:$TARGET_PORT/" \
        --pages "$PAGES" --warmup "$CONCURRENCY" --concurrency "$CONCURRENCY" --sync "$sync" \
        >"$TMP/$tag.json" 2>"$TMP/$tag.log" &
    node_pid=$!
    GROUPS_STARTED+=("$node_pid")
    # The measured batch only, bracketed by crawl.js's --sync handshake.
    wait_file "$sync/warm" "$node_pid" "$tag"
    start_sampler "$node_pid"
    cpu0=$(tree_cpu "$node_pid")
    touch "$sync/go"
    wait_file "$sync/done" "$node_pid" "$tag"
    cpu1=$(tree_cpu "$node_pid")
    stop_sampler "$node_pid"
    touch "$sync/finish"
    wait "$node_pid" || { tail -n 20 "$TMP/$tag.log" >&2; die "crawl.js failed ($TMP/$tag.log)"; }
    line=$(cat "$TMP/$tag.json")
    [ -n "$line" ] || die "crawl.js printed no result ($TMP/$tag.log)"
    read -r ok failed wall rate p50 p95 < <(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["ok"], r["failed"], r["wall_s"], r["pages_per_s"], r["p50_ms"], r["p95_ms"])' "$line")
    CRAWLEE_RATE=$rate CRAWLEE_PSS=$PEAK_PSS CRAWLEE_RSS=$PEAK_RSS
    row "$label | Crawlee PuppeteerCrawler ($ok of $((ok + failed)) ok, $wall s) | $rate | $p50 / $p95 ms" \
        "| $PEAK_PSS MiB | $PEAK_RSS MiB | $(per_page "$cpu0" "$cpu1" "$PAGES")"
}

for browser in $BROWSERS; do
    exe=/usr/bin/$browser
    [ -x "$exe" ] || die "$exe is missing (./deploy/local/prereqs.sh chromium)"
    CLAWGRESS_RATE='' CRAWLEE_RATE=''
    for runner in $ORDER; do
        "run_$runner" "$exe" "$browser"
    done
    [ -n "$CLAWGRESS_RATE" ] && [ -n "$CRAWLEE_RATE" ] || continue
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'; }
    row "$exe | ratio Clawgress / Crawlee (target ≥ 2×, memory ≤ 1×) | $(ratio "$CLAWGRESS_RATE" "$CRAWLEE_RATE") | |" \
        "$(ratio "$CLAWGRESS_PSS" "$CRAWLEE_PSS") | $(ratio "$CLAWGRESS_RSS" "$CRAWLEE_RSS") | |"
done

log ""
cat "$OUT"
