#!/usr/bin/env bash
# Clawgress vs Squid: the same load, the same target, the same machine.
#
# Starts bench-target, Squid 5.7 (Debian) and the Clawgress gateway on
# loopback, runs `clawgress bench` against the target directly (the physical
# limit), through Squid and through Clawgress, at 1 and 64 keep-alive
# connections and in CONNECT mode at 16 connections, prints a Markdown table
# and writes the raw results to $OUT. Everything it starts is stopped on exit.
#
# Works on a fresh Debian bookworm: installs squid if missing and builds the
# release binary. Run from anywhere: paths are relative to the repository.
#
# Environment:
#   BENCH_DURATION   measured seconds per run (default 10)
#   BENCH_WARMUP     warmup seconds per run (default 1)
#   BENCH_SIZE       response body bytes (default 1024)
#   BENCH_PROXIES    which proxies to measure (default "squid clawgress")
#   OUT              raw results (default target/bench/proxy.json)
#   CLAWGRESS_BIN    use this binary instead of building target/release/clawgress
#   BENCH_KEEP_TMP   1 keeps the temp dir (configs, logs, audit) for inspection
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-1}
SIZE=${BENCH_SIZE:-1024}
PROXIES=${BENCH_PROXIES:-squid clawgress}
OUT=${OUT:-target/bench/proxy.json}

TARGET_LISTEN=127.0.0.1:18080
SQUID_LISTEN=127.0.0.1:13128
CLAWGRESS_LISTEN=127.0.0.1:13129
CLAWGRESS_ADMIN=127.0.0.1:19129
# Both proxies are asked for the same name; each maps it to 127.0.0.1 itself.
TARGET_URL=http://bench.local:18080/
DIRECT_URL=http://127.0.0.1:18080/
BENCH_USER=bench-agent:bench-key

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"

# --- prerequisites -----------------------------------------------------------

SQUID=$(command -v squid || true)
[ -n "$SQUID" ] || [ ! -x /usr/sbin/squid ] || SQUID=/usr/sbin/squid
if [ -z "$SQUID" ] && [[ " $PROXIES " == *" squid "* ]]; then
    log "installing squid"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq squid >/dev/null
    SQUID=/usr/sbin/squid
fi

clawgress_bin

# --- processes -------------------------------------------------------------

start_squid() {
    local dir=$TMP/squid
    mkdir -p "$dir"
    printf '127.0.0.1 bench.local\n' >"$dir/hosts"
    cat >"$dir/squid.conf" <<EOF
# Written by gateway/bench/proxy_vs_squid.sh: forward proxy for one target.
http_port $SQUID_LISTEN
workers 1
pid_filename $dir/squid.pid
cache_log $dir/cache.log
access_log stdio:$dir/access.log squid
cache_store_log none
logfile_rotate 0
coredump_dir $dir
# bench.local comes from the hosts file, like Clawgress's static_hosts; any
# other lookup goes to loopback, where nothing answers.
hosts_file $dir/hosts
dns_nameservers 127.0.0.1
pinger_enable off
cache deny all
cache_mem 0 MB
max_filedescriptors 4096
shutdown_lifetime 0 seconds
acl bench_host dstdomain bench.local
acl bench_port port 18080
acl CONNECT method CONNECT
http_access allow CONNECT bench_host bench_port
http_access allow !CONNECT bench_host bench_port
http_access deny all
EOF
    # Squid started as root drops to its own user, which must write here.
    if [ "$(id -u)" -eq 0 ] && id proxy >/dev/null 2>&1; then
        chmod 755 "$TMP"
        chown -R proxy "$dir"
    fi
    "$SQUID" -N -f "$dir/squid.conf" 2>"$dir/stderr.log" &
    PIDS+=($!)
    wait_listening squid "$SQUID_LISTEN" $!
    probe squid "$dir/cache.log" --proxy "http://$SQUID_LISTEN" --target "$TARGET_URL"
}

# --- runs ------------------------------------------------------------------

start_target
for proxy in $PROXIES; do
    case $proxy in
        squid) start_squid ;;
        clawgress) start_clawgress clawgress "$CLAWGRESS_LISTEN" "$CLAWGRESS_ADMIN" gateway/bench/policy.yaml ;;
        *) die "unknown proxy in BENCH_PROXIES: $proxy" ;;
    esac
done

for connections in 1 64; do
    run direct --target "$DIRECT_URL" --connections "$connections"
done
for proxy in $PROXIES; do
    case $proxy in
        squid) via=(--proxy "http://$SQUID_LISTEN") ;;
        clawgress) via=(--proxy "http://$CLAWGRESS_LISTEN" --proxy-user "$BENCH_USER") ;;
    esac
    for connections in 1 64; do
        run "$proxy" "${via[@]}" --target "$TARGET_URL" --connections "$connections"
    done
done
for proxy in $PROXIES; do
    case $proxy in
        squid) via=(--proxy "http://$SQUID_LISTEN") ;;
        clawgress) via=(--proxy "http://$CLAWGRESS_LISTEN" --proxy-user "$BENCH_USER") ;;
    esac
    run "$proxy" "${via[@]}" --target "$TARGET_URL" --connect --connections 16
done

# --- report ----------------------------------------------------------------

mkdir -p "$(dirname "$OUT")"
squid_version=$([ -n "$SQUID" ] && "$SQUID" -v | head -n 1 | sed 's/.*Version //' || echo none)
{
    printf '{"date":"%s","cpus":%s,"kernel":"%s","squid":"%s",' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(nproc)" "$(uname -r)" "$squid_version"
    printf '"duration_s":%s,"warmup_s":%s,"body_bytes":%s,"runs":[' "$DURATION" "$WARMUP" "$SIZE"
    paste -sd, "$RESULTS" | tr -d '\n'
    printf ']}\n'
} >"$OUT"

# The bench JSON is flat with plain values, so awk can read it without jq
# (which a fresh machine may lack).
awk '
function field(name,    rest) {
    if (!match($0, "\"" name "\":")) return ""
    rest = substr($0, RSTART + RLENGTH)
    sub(/^"/, "", rest)
    sub(/["},].*$/, "", rest)
    return rest
}
function ratio(a, b) { return (b > 0) ? sprintf("%.2f", a / b) : "n/a" }
{
    name = field("name"); mode = field("mode"); conns = field("connections")
    key = name "/" mode "/" conns
    order[++n] = key
    rps[key] = field("rps"); p50[key] = field("p50_us"); p99[key] = field("p99_us")
    errors[key] = field("errors")
    label[key] = name (mode == "connect" ? " CONNECT" : "")
    c[key] = conns; m[key] = mode
}
END {
    print "| run | conns | req/s | p50 us | p99 us | added p50 vs direct (us) | errors |"
    print "|---|---:|---:|---:|---:|---:|---:|"
    for (i = 1; i <= n; i++) {
        k = order[i]
        base = "direct/forward/" c[k]
        added = (m[k] == "forward" && (base in p50) && k != base) ? p50[k] - p50[base] : "n/a"
        if (k == base) added = "-"
        printf "| %s | %s | %.0f | %s | %s | %s | %s |\n", label[k], c[k], rps[k], p50[k], p99[k], added, errors[k]
    }
    print ""
    print "| clawgress / squid | conns | req/s | p50 | p99 |"
    print "|---|---:|---:|---:|---:|"
    compared = 0
    for (i = 1; i <= n; i++) {
        k = order[i]
        if (k !~ /^clawgress\//) continue
        s = k; sub(/^clawgress/, "squid", s)
        if (!(s in rps)) continue
        compared = 1
        printf "| %s | %s | %s | %s | %s |\n", m[k], c[k], ratio(rps[k], rps[s]), ratio(p50[k], p50[s]), ratio(p99[k], p99[s])
    }
    if (!compared) print "| (needs both squid and clawgress in BENCH_PROXIES) | | | | |"
}' "$RESULTS"

log "raw results: $OUT"
