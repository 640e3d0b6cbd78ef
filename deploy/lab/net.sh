#!/usr/bin/env bash
# The lab's network: three namespaces joined by veth pairs, addressed from
# the benchmarking range 198.18.0.0/15 only. Used by `make lab` and by the
# end-to-end test of the transparent gateway (tests/gateway/transparent.rs),
# so both run on the same topology.
#
#   NAME-w (worker)    198.18.1.2/24  --veth--  198.18.1.1/24  NAME-e (edge)
#                      default via 198.18.1.1
#   NAME-e (edge)      198.18.2.1/24 and 198.18.2.10/24 (the fixed egress IP)
#                                     --veth--  198.18.2.2/24  NAME-i (internet)
#                      (NAME-i also holds 198.18.2.3 and 198.18.2.99)
#
#   net.sh up NAME     create (fails if NAME-w exists)
#   net.sh down NAME   remove whatever of NAME exists; never fails
set -euo pipefail
cmd="${1:-}"; name="${2:-}"
[ -n "$name" ] && [ "${#name}" -le 10 ] || { echo "usage: net.sh up|down NAME (NAME: at most 10 characters)" >&2; exit 2; }
w="$name-w"; e="$name-e"; i="$name-i"

down() {
    for ns in "$w" "$e" "$i"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
        rm -rf "/etc/netns/$ns"
    done
}

case "$cmd" in
    up)
        trap 'down' ERR
        for ns in "$w" "$e" "$i"; do
            ip netns add "$ns"
            ip -n "$ns" link set lo up
        done
        ip link add "$name-w0" netns "$w" type veth peer name "$name-e0" netns "$e"
        ip link add "$name-e1" netns "$e" type veth peer name "$name-i0" netns "$i"
        ip -n "$w" addr add 198.18.1.2/24 dev "$name-w0"
        ip -n "$e" addr add 198.18.1.1/24 dev "$name-e0"
        ip -n "$e" addr add 198.18.2.1/24 dev "$name-e1"
        ip -n "$e" addr add 198.18.2.10/24 dev "$name-e1"
        for a in 198.18.2.2/24 198.18.2.3/24 198.18.2.99/24; do
            ip -n "$i" addr add "$a" dev "$name-i0"
        done
        for link in "$w $name-w0" "$e $name-e0" "$e $name-e1" "$i $name-i0"; do
            set -- $link
            ip -n "$1" link set "$2" up
        done
        ip -n "$w" route add default via 198.18.1.1
        ip -n "$e" route add default via 198.18.2.2 src 198.18.2.1
        # The worker's resolver is the edge (nftables redirects port 53 to
        # the DNS control server whatever the address); `ip netns exec`
        # mounts this file over /etc/resolv.conf.
        mkdir -p "/etc/netns/$w"
        echo "nameserver 198.18.1.1" > "/etc/netns/$w/resolv.conf"
        trap - ERR
        ;;
    down) down ;;
    *) echo "usage: net.sh up|down NAME" >&2; exit 2 ;;
esac
