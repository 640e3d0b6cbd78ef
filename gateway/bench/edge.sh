#!/usr/bin/env bash
# Issue 13's figures in one run, inside the lab's network namespaces
# (deploy/lab/net.sh; 198.18.0.0/15 only, removed on exit):
#  1. 1 KB responses over kept-alive HTTP and over TLS, from the worker:
#     - direct: the client in the edge namespace, one veth hop from the
#       origin, no gateway (the physical limit of this machine);
#     - explicit: the worker through the gateway's proxy port (CONNECT and
#       passthrough TLS for https);
#     - transparent: the worker with no proxy settings, through the compiled
#       nftables ruleset and the transparent listener.
#     Target: transparent >= 0.9x explicit.
#  2. The DNS control server vs dnsmasq (Debian) as a forwarding cache of the
#     same upstream, cached allowlisted names, measured with dnsperf from the
#     worker. Target: >= 1x dnsmasq.
#
# Environment: BENCH_DURATION (default 10), BENCH_PASSES (3), BENCH_WARMUP (1),
# BENCH_CONNECTIONS (8), CLAWGRESS_BIN, BENCH_KEEP_TMP=1,
# OUT (default target/bench/edge.json).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
[ "$(id -u)" = 0 ] || { echo "the edge benchmark creates network namespaces: run it as root" >&2; exit 1; }

DURATION=${BENCH_DURATION:-10}
PASSES=${BENCH_PASSES:-3}
WARMUP=${BENCH_WARMUP:-1}
CONNECTIONS=${BENCH_CONNECTIONS:-8}
OUT=${OUT:-target/bench/edge.json}
NAME=cgbench
W=$NAME-w E=$NAME-e I=$NAME-i

# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"
clawgress_bin

lab_down() { cleanup; ./deploy/lab/net.sh down "$NAME"; }
trap lab_down EXIT
./deploy/lab/net.sh down "$NAME"
./deploy/lab/net.sh up "$NAME"
# The benchmark's names come from hosts files (`ip netns exec` mounts
# /etc/netns/NS/hosts): a lookup is not what is measured.
for ns in "$W" "$E"; do
    mkdir -p "/etc/netns/$ns"
    printf '198.18.2.2 site.lab\n' >"/etc/netns/$ns/hosts"
done

wait_in() {  # wait_in NS NAME HOST:PORT PID
    local tries=0
    until ip netns exec "$1" bash -c "exec 3<>/dev/tcp/${3%:*}/${3##*:}" 2>/dev/null; do
        kill -0 "$4" 2>/dev/null || die "$2 exited before listening on $3"
        tries=$((tries + 1)); [ "$tries" -lt 300 ] || die "$2 is not listening on $3"
        sleep 0.1
    done
}

# The internet: the origins, and a resolver for the DNS figures.
ip netns exec "$I" "$BIN" bench-target --listen 198.18.2.2:80 --size 1024 2>"$TMP/http-target.log" &
PIDS+=($!); wait_in "$I" http-target 198.18.2.2:80 $!
ip netns exec "$I" "$BIN" bench-target --listen 198.18.2.2:443 --size 1024 \
    --tls-name site.lab --tls-ca-out "$TMP/site-ca.pem" 2>"$TMP/https-target.log" &
PIDS+=($!); wait_in "$I" https-target 198.18.2.2:443 $!
ip netns exec "$I" dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
    --listen-address 198.18.2.2 --port 53 --pid-file="$TMP/upstream.pid" --local-ttl=300 \
    --address=/site.lab/198.18.2.2 --address=/api.lab/198.18.2.3 --address=/cdn.lab/198.18.2.3 \
    2>"$TMP/upstream.log" &
PIDS+=($!)

# The edge.
cat >"$TMP/policy.yaml" <<YAML
egress: {default_action: deny, logging: all_requests, monitoring: enabled}
allowlist:
  lab:
    - domain: "site.lab"
      ports: [80, 443]
      protocols: [http, https]
      allow_private: true
    - domain: "api.lab"
      ports: [443]
      protocols: [https]
      allow_private: true
    - domain: "cdn.lab"
      ports: [443]
      protocols: [https]
      allow_private: true
fault_containment: {max_concurrent_requests: 10000}
$(unlimited_rates)
dns:
  nameservers: ["198.18.2.2:53"]
YAML
"$BIN" policy compile --target nftables --policy "$TMP/policy.yaml" \
    --workload-cidr 198.18.1.0/24 --egress-ip 198.18.2.10 --egress-iface "$NAME-e1" \
    --transparent-port 15001 --dns-port 5353 --proxy-port 3128 --out "$TMP/edge.nft" 2>/dev/null
ip netns exec "$E" nft -f "$TMP/edge.nft"
ip netns exec "$E" "$BIN" gateway --policy "$TMP/policy.yaml" --agents deploy/lab/agents.yaml \
    --listen 198.18.1.1:3128 --transparent 0.0.0.0:15001 --admin 127.0.0.1:9128 \
    --audit "$TMP/audit.jsonl" --state-dir "$TMP/state" >"$TMP/gateway.log" 2>&1 &
PIDS+=($!); wait_in "$E" gateway 198.18.1.1:3128 $!

# run NS NAME BENCH-ARGS...: a measured run inside a namespace.
run_in() {
    local ns=$1 name=$2 line
    shift 2
    log "run: $name ($ns) $*"
    line=$(ip netns exec "$ns" "$BIN" bench "$@" --duration "$DURATION" --warmup "$WARMUP" --json) || true
    [ -n "$line" ] || die "run $name printed no result"
    printf '{"name":"%s",%s\n' "$name" "${line#\{}" >>"$RESULTS"
}
proxy=(--proxy http://198.18.1.1:3128 --proxy-user lab-worker:lab-worker-key)
tls=(--reqwest --ca-file "$TMP/site-ca.pem")
for _ in $(seq "$PASSES"); do
    run_in "$E" http-direct --target http://site.lab/ --connections "$CONNECTIONS"
    run_in "$W" http-explicit "${proxy[@]}" --target http://site.lab/ --connections "$CONNECTIONS"
    run_in "$W" http-transparent --target http://site.lab/ --connections "$CONNECTIONS"
    run_in "$E" tls-direct "${tls[@]}" --target https://site.lab/ --connections "$CONNECTIONS"
    run_in "$W" tls-explicit "${tls[@]}" "${proxy[@]}" --target https://site.lab/ --connections "$CONNECTIONS"
    run_in "$W" tls-transparent "${tls[@]}" --target https://site.lab/ --connections "$CONNECTIONS"
done

# DNS: the control server and dnsmasq, each a cache of the same upstream,
# on the edge, queried from the worker (the ruleset would send every port
# 53 query to the control server, so it is taken down for this part).
ip netns exec "$E" nft delete table inet clawgress
ip netns exec "$E" "$BIN" dns --listen 198.18.1.1:5353 --upstream 198.18.2.2:53 \
    --policy "$TMP/policy.yaml" --agents deploy/lab/agents.yaml --audit "$TMP/dns-audit.jsonl" \
    >"$TMP/dns.log" 2>&1 &
PIDS+=($!)
ip netns exec "$E" dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
    --listen-address 198.18.1.1 --port 5354 --pid-file="$TMP/peer.pid" --server=198.18.2.2 \
    --cache-size=10000 2>"$TMP/peer.log" &
PIDS+=($!)
# The same peer recording every query, as the control server does (its
# audit trail is hash-chained JSON; dnsmasq's log is a line of text).
ip netns exec "$E" dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
    --listen-address 198.18.1.1 --port 5355 --pid-file="$TMP/peer-log.pid" --server=198.18.2.2 \
    --cache-size=10000 --log-queries --log-facility="$TMP/dnsmasq-queries.log" --log-async=100 \
    2>"$TMP/peer-log.log" &
PIDS+=($!)
sleep 1
printf 'site.lab A\napi.lab A\ncdn.lab A\n' >"$TMP/queries.txt"
dns_run() {  # dns_run NAME PORT
    local qps
    qps=$(ip netns exec "$W" dnsperf -s 198.18.1.1 -p "$2" -d "$TMP/queries.txt" -l "$DURATION" -c 8 -Q 1000000 \
        -n 100000000 2>&1 | tee "$TMP/dnsperf-$1.txt" | awk '/Queries per second/ {print $4}')
    [ -n "$qps" ] || { cat "$TMP/dnsperf-$1.txt" >&2; die "dnsperf against $1 printed no rate"; }
    printf '{"name":"%s","qps":%s}\n' "$1" "$qps" >>"$RESULTS"
}
for _ in $(seq "$PASSES"); do
    dns_run dns-clawgress 5353
    dns_run dns-dnsmasq 5354
    dns_run dns-dnsmasq-logging 5355
done

mkdir -p "$(dirname "$OUT")"
cp "$RESULTS" "$OUT"
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
def median(name, key):
    return statistics.median(r[key] for r in runs if r["name"] == name)
for proto in ("http", "tls"):
    for path in ("direct", "explicit", "transparent"):
        name = f"{proto}-{path}"
        print(f"{name:18} {median(name, 'rps'):9.0f} req/s   p50 {median(name, 'p50_us'):7.0f} us   p99 {median(name, 'p99_us'):7.0f} us")
    ratio = median(f"{proto}-transparent", "rps") / median(f"{proto}-explicit", "rps")
    print(f"{proto}: transparent / explicit = {ratio:.2f}x (target >= 0.9x); "
          f"transparent / direct = {median(f'{proto}-transparent', 'rps') / median(f'{proto}-direct', 'rps'):.2f}x")
ours, peer, logging = (median(n, "qps") for n in ("dns-clawgress", "dns-dnsmasq", "dns-dnsmasq-logging"))
print(f"dns-clawgress {ours:9.0f} q/s (every query audited)")
print(f"dns-dnsmasq   {peer:9.0f} q/s (no query log): ratio {ours / peer:.2f}x")
print(f"dns-dnsmasq   {logging:9.0f} q/s (--log-queries): ratio {ours / logging:.2f}x (target >= 1x)")
PY
