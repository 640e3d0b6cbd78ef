#!/usr/bin/env bash
# make lab: the host edge on one machine, to try by hand. Three network
# namespaces (deploy/lab/net.sh): a worker with no proxy settings, the edge
# (the compiled nftables ruleset, the transparent gateway, the explicit
# proxy, the DNS control server) and an "internet" (dnsmasq as its resolver,
# an HTTP and an HTTPS site). Prints what to run in the worker; Ctrl-C
# removes everything.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
NAME=${LAB_NAME:-clawlab}
BIN=${CLAWGRESS_BIN:-target/release/clawgress}
[ "$(id -u)" = 0 ] || { echo "make lab creates network namespaces: run it as root" >&2; exit 1; }
[ -x "$BIN" ] || { echo "$BIN is missing: cargo build --release" >&2; exit 1; }
W=$NAME-w E=$NAME-e I=$NAME-i
TMP=$(mktemp -d "${TMPDIR:-/tmp}/clawgress-lab.XXXXXX")
PIDS=()
down() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ./deploy/lab/net.sh down "$NAME"
    rm -rf "$TMP"
}
trap down EXIT
trap 'exit 130' INT TERM

./deploy/lab/net.sh up "$NAME"
# The internet: a resolver for *.lab, and the two sites on 80 and 443.
ip netns exec "$I" dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
    --listen-address 198.18.2.2 --port 53 --pid-file="$TMP/dnsmasq.pid" --local-ttl=300 \
    --address=/site.lab/198.18.2.2 --address=/other.lab/198.18.2.3 2>"$TMP/dnsmasq.log" &
PIDS+=($!)
for ip in 198.18.2.2 198.18.2.3; do
    ip netns exec "$I" "$BIN" bench-target --listen "$ip:80" --html --size 2048 2>>"$TMP/sites.log" &
    PIDS+=($!)
    ip netns exec "$I" "$BIN" bench-target --listen "$ip:443" --html --size 2048 \
        --tls-name site.lab --tls-name other.lab --tls-ca-out "$TMP/lab-ca-$ip.pem" 2>>"$TMP/sites.log" &
    PIDS+=($!)
done
# The edge.
"$BIN" policy compile --target nftables --policy deploy/lab/policy.yaml \
    --workload-cidr 198.18.1.0/24 --egress-ip 198.18.2.10 --egress-iface "$NAME-e1" \
    --transparent-port 15001 --dns-port 5353 --proxy-port 3128 --out "$TMP/edge.nft"
ip netns exec "$E" nft -f "$TMP/edge.nft"
ip netns exec "$E" "$BIN" gateway --policy deploy/lab/policy.yaml --agents deploy/lab/agents.yaml \
    --listen 198.18.1.1:3128 --transparent 0.0.0.0:15001 --admin 127.0.0.1:9128 \
    --audit "$TMP/audit.jsonl" --state-dir "$TMP/state" >"$TMP/gateway.log" 2>&1 &
PIDS+=($!)
ip netns exec "$E" "$BIN" dns --listen 198.18.1.1:5353 --upstream 198.18.2.2:53 \
    --policy deploy/lab/policy.yaml --agents deploy/lab/agents.yaml \
    --audit "$TMP/dns-audit.jsonl" >"$TMP/dns.log" 2>&1 &
PIDS+=($!)
sleep 1
cat <<MSG

The lab is up (namespaces $W, $E, $I). In another shell, as root:

  ip netns exec $W curl -sS http://site.lab/                     # allowed: through the transparent gateway
  ip netns exec $W curl -sS --cacert $TMP/lab-ca-198.18.2.2.pem https://site.lab/
  ip netns exec $W curl -sS http://198.18.2.99/                  # an unlisted address: 403
  ip netns exec $W curl -sS -m 3 http://198.18.2.99:8080/        # not a redirected port: times out
  ip netns exec $W getent hosts example.com                      # NXDOMAIN from the DNS control server
  ip netns exec $W curl -sS -x http://198.18.1.1:3128 -U lab-worker:lab-worker-key http://site.lab/
  ip netns exec $E nft list counters                             # what the edge dropped

  audit: $TMP/audit.jsonl   dns audit: $TMP/dns-audit.jsonl   logs: $TMP/*.log

Ctrl-C stops the lab and removes the namespaces.
MSG
wait -n "${PIDS[@]}" || true
echo "a lab process ended; see $TMP/*.log" >&2
