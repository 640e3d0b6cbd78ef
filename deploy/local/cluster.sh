#!/usr/bin/env bash
# `make cluster`: Clawgress scaled out on this machine, on loopback only.
#
#   three nats-servers  JetStream on each, routes between them (cluster
#                       "clawgress"): streams and KV buckets get 3 replicas
#   two gateways        the shipped policy and example agents, sharing the
#                       control state and token budgets through the cluster
#   two schedulers      each with its workers, fetching through either
#                       gateway (--gateway A,B) and sharing per-host slots
#   a demo site         127.0.0.1:3002 (the seed policy allows it)
#
# Every process logs to $DIR/<name>.log; Ctrl-C stops them all. Kill one
# (`kill -9 $(cat $DIR/nats-2.pid)`) to watch the rest carry on; start it
# again with `$DIR/restart <name>`.
#
# Environment: CLAWGRESS_BIN (default target/release/clawgress),
# CLAWGRESS_CLUSTER_DIR (default ~/.local/state/clawgress/cluster),
# CLUSTER_BASE_PORT (default 4222: NATS clients on BASE..BASE+2, routes on
# BASE+2000..; gateways on 3128/9128 and 3138/9138, schedulers' metrics on
# 9129 and 9139).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

BIN=${CLAWGRESS_BIN:-target/release/clawgress}
DIR=${CLAWGRESS_CLUSTER_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/clawgress/cluster}
BASE=${CLUSTER_BASE_PORT:-4222}
[ -x "$BIN" ] || { echo "error: $BIN is missing: run \`cargo build --release\` (or \`make cluster\`)" >&2; exit 1; }
NATS=$(command -v nats-server 2>/dev/null || echo "${XDG_DATA_HOME:-$HOME/.local/share}/clawgress/venv/bin/nats-server")
[ -x "$NATS" ] || { echo "error: nats-server is missing: run ./deploy/local/prereqs.sh nats" >&2; exit 1; }
mkdir -p "$DIR"

NATS_URLS=""
ROUTES=""
for i in 0 1 2; do
    NATS_URLS+="${NATS_URLS:+,}nats://127.0.0.1:$((BASE + i))"
    ROUTES+="${ROUTES:+,}nats://127.0.0.1:$((BASE + 2000 + i))"
done
GATEWAYS="http://127.0.0.1:3128,http://127.0.0.1:3138"

PIDS=()
# stop_wait SECONDS PID...: until they have exited; then kill -9 what is left.
stop_wait() {
    local seconds=$1 tick=0 pid alive
    shift
    while :; do
        alive=()
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        [ "${#alive[@]}" = 0 ] && return 0
        if [ "$tick" -ge $((seconds * 10)) ]; then
            echo "still running after $seconds s, killed: ${alive[*]}" >&2
            kill -KILL "${alive[@]}" 2>/dev/null || true
            return 0
        fi
        tick=$((tick + 1))
        sleep 0.1
    done
}
cleanup() {
    trap - EXIT INT TERM
    echo "stopping: schedulers, then gateways, then NATS" >&2
    local name pid stopping=()
    for name in scheduler-1 scheduler-2 gateway-1 gateway-2 site nats-1 nats-2 nats-3; do
        [ -f "$DIR/$name.pid" ] || continue
        pid=$(cat "$DIR/$name.pid")
        kill -INT "$pid" 2>/dev/null && stopping+=("$pid")
        # Schedulers drain (--drain-timeout, 30 s) before the gateways they
        # fetch through go, and the gateways before NATS.
        case $name in scheduler-2 | site) stop_wait 35 "${stopping[@]}" ;; esac
    done
    stop_wait 35 "${stopping[@]}" "${PIDS[@]}"
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -f "$DIR"/*.pid
    echo "stopped" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
    local name=$1 port=$2 tries=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        tries=$((tries + 1))
        [ "$tries" -lt 300 ] || { echo "error: $name is not listening on $port after 30 s; see $DIR/$name.log" >&2; tail -n 20 "$DIR/$name.log" >&2; exit 1; }
        sleep 0.1
    done
}

# start NAME COMMAND...: runs it in the background, logging, with a pid file
# and a line in $DIR/commands for `restart`.
start() {
    local name=$1
    shift
    # Checks read only this run's lines: the logs are appended to.
    echo "--- cluster.sh: starting $(date -u +%FT%TZ)" >>"$DIR/$name.log"
    # A session of its own: Ctrl-C reaches this script only, which stops
    # the processes in order (a second SIGINT would make them skip the drain).
    setsid "$@" >>"$DIR/$name.log" 2>&1 </dev/null &
    PIDS+=($!)
    echo $! >"$DIR/$name.pid"
    printf '%s\t%q' "$name" "$1" >>"$DIR/commands"
    shift
    printf ' %q' "$@" >>"$DIR/commands"
    printf '\n' >>"$DIR/commands"
}

: >"$DIR/commands"
for i in 1 2 3; do
    port=$((BASE + i - 1))
    mkdir -p "$DIR/nats-$i"
    start "nats-$i" "$NATS" -js -a 127.0.0.1 -p "$port" -n "clawgress-$i" -sd "$DIR/nats-$i" \
        --cluster_name clawgress --cluster "nats://127.0.0.1:$((BASE + 2000 + i - 1))" --routes "$ROUTES"
done
for i in 1 2 3; do wait_port "nats-$i" $((BASE + i - 1)); done
# JetStream answers once the servers have elected a metadata leader (up to
# tens of seconds on a fresh cluster); the gateways and schedulers need it at
# start. Only this run's lines count: the logs are appended to.
elected() {
    local log
    for log in "$DIR"/nats-[123].log; do
        awk '/cluster.sh: starting/ { found = 0 } /new metadata leader/ { found = 1 } END { exit !found }' "$log" && return 0
    done
    return 1
}
tries=0
until elected; do
    tries=$((tries + 1))
    [ "$tries" -lt 900 ] || { echo "error: the NATS cluster elected no JetStream leader in 90 s; see $DIR/nats-*.log" >&2; exit 1; }
    sleep 0.1
done

start site "$BIN" bench-target --listen 127.0.0.1:3002 --html --size 2048
for i in 1 2; do
    proxy=$((3128 + (i - 1) * 10)) admin=$((9128 + (i - 1) * 10))
    # Each gateway lists the servers in its own order: they spread over the cluster.
    urls=$(echo "$NATS_URLS" | tr ',' '\n' | { [ "$i" = 2 ] && tac || cat; } | paste -sd,)
    start "gateway-$i" "$BIN" gateway --policy policies/default.yaml --agents policies/agents.example.yaml \
        --admin-tokens policies/admin-tokens.example.yaml --listen "127.0.0.1:$proxy" --admin "127.0.0.1:$admin" \
        --state-dir "$DIR/gateway-$i" --nats "$urls"
done
wait_port gateway-1 3128
wait_port gateway-2 3138
# The schedulers create the replicated streams at start and stop if
# JetStream cannot yet place them; a gateway whose control store has synced
# has created (or found) its replicated bucket, so JetStream can.
for i in 1 2; do
    tries=0
    until awk '/cluster.sh: starting/ { found = 0 } /control store synced/ { found = 1 } END { exit !found }' "$DIR/gateway-$i.log"; do
        tries=$((tries + 1))
        [ "$tries" -lt 900 ] || { echo "error: gateway-$i has no control store after 90 s; see $DIR/gateway-$i.log" >&2; exit 1; }
        sleep 0.1
    done
done
for i in 1 2; do
    start "scheduler-$i" "$BIN" scheduler --nats "$NATS_URLS" --gateway "$GATEWAYS" \
        --credentials policies/credentials.example.yaml --metrics "127.0.0.1:$((9129 + (i - 1) * 10))" \
        --gateway-admin http://127.0.0.1:9128,http://127.0.0.1:9138
done
wait_port scheduler-1 9129
wait_port scheduler-2 9139

cat >"$DIR/restart" <<'EOF'
#!/usr/bin/env bash
# restart NAME: starts a stopped process of the cluster again, as it was.
set -euo pipefail
dir=$(cd "$(dirname "$0")" && pwd)
line=$(grep -P "^$1\t" "$dir/commands") || { echo "no process named $1 (see $dir/commands)" >&2; exit 1; }
eval "setsid ${line#*$'\t'}" >>"$dir/$1.log" 2>&1 </dev/null &
echo $! >"$dir/$1.pid"
echo "$1 started again (pid $!)"
EOF
chmod +x "$DIR/restart"

cat >&2 <<EOF

The Clawgress cluster is up (logs and pid files in $DIR).
  NATS        $NATS_URLS  (cluster "clawgress": streams and buckets with 3 replicas)
  gateways    $GATEWAYS  (admin http://127.0.0.1:9128, http://127.0.0.1:9138)
  schedulers  2, fetching through either gateway; metrics http://127.0.0.1:9129/metrics, :9139
  demo site   http://127.0.0.1:3002/ (allowed as localhost:3002 by the seed policy)
Submit:   $BIN submit --nats $NATS_URLS --url http://localhost:3002/ --select title=h1 --wait
Faults:   kill -9 \$(cat $DIR/nats-2.pid); $DIR/restart nats-2     (also gateway-1, scheduler-2, ...)
Control:  CLAWGRESS_ADMIN_TOKEN=maintainer-demo-token $BIN egress emergency-block --reason drill --admin http://127.0.0.1:9138
Ctrl-C stops everything.
EOF

# Runs until Ctrl-C, or until every process has gone; says when one exits.
declare -A reported=()
while true; do
    alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    for file in "$DIR"/*.pid; do
        [ -f "$file" ] || continue
        name=$(basename "$file" .pid) pid=$(cat "$file")
        if kill -0 "$pid" 2>/dev/null; then
            alive=1 reported[$name]=
        elif [ -z "${reported[$name]:-}" ]; then
            reported[$name]=1
            echo "$name (pid $pid) exited; see $DIR/$name.log, start it again with $DIR/restart $name" >&2
        fi
    done
    [ "$alive" = 1 ] || break
    sleep 1
done
