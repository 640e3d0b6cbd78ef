#!/usr/bin/env bash
# Issue 18's figure: steel jobs/s through the whole pipeline (NATS, the
# scheduler's Steel leases, the gateway, the audit check of every page) with
# one Steel Browser server and with each further one given.
#
# Steel is an external service and nothing of it is in this repository:
# start the servers first (README: Steel Browser) and name them:
#   STEEL_URLS=http://127.0.0.1:3000,http://198.18.9.2:3000 make bench-steel
# STEEL_GATEWAY_HOST is the address every Steel server reaches the gateway
# at (default 127.0.0.1; a server in a network namespace needs the host's
# address on its veth). Each job renders an HTML page from a local bench
# target through the gateway.
#
# Environment: BENCH_JOBS (default 40), BENCH_PASSES (2), CLAWGRESS_BIN,
# BENCH_KEEP_TMP=1, OUT (default target/bench/steel.json).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
[ -n "${STEEL_URLS:-}" ] || { echo "set STEEL_URLS to the running Steel servers (README: Steel Browser)" >&2; exit 2; }
JOBS=${BENCH_JOBS:-40}
PASSES=${BENCH_PASSES:-2}
HOST=${STEEL_GATEWAY_HOST:-127.0.0.1}
OUT=${OUT:-target/bench/steel.json}
DURATION=0 WARMUP=0
# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"
clawgress_bin
nats_server_bin
IFS=, read -r -a SERVERS <<<"$STEEL_URLS"

"$NATS" -js -a 127.0.0.1 -p 14322 -sd "$TMP/nats" >"$TMP/nats.log" 2>&1 &
PIDS+=($!); wait_listening nats-server 127.0.0.1:14322 $!
"$BIN" bench-target --listen 0.0.0.0:18093 --html --size 4096 2>"$TMP/target.log" &
PIDS+=($!); wait_listening bench-target 127.0.0.1:18093 $!

cat >"$TMP/policy.yaml" <<YAML
egress: {default_action: deny, logging: all_requests, monitoring: enabled}
allowlist:
  bench:
    - domain: "steel.bench"
      ports: [18093]
      protocols: [http]
$(unlimited_rates)
dns:
  static_hosts:
    steel.bench: 127.0.0.1
YAML
TOKEN=bench-viewer-token
printf 'tokens:\n  - name: bench\n    role: viewer\n    token_sha256: "%s"\n' \
    "$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)" >"$TMP/tokens.yaml"
printf 'agents:\n  bench-agent: bench-key\n' >"$TMP/credentials.yaml"
"$BIN" gateway --policy "$TMP/policy.yaml" --agents gateway/bench/agents.yaml \
    --listen 0.0.0.0:13191 --admin 127.0.0.1:19191 --admin-tokens "$TMP/tokens.yaml" \
    --audit "$TMP/audit.jsonl" --state-dir "$TMP/state" >"$TMP/gateway.log" 2>&1 &
PIDS+=($!); wait_listening gateway 127.0.0.1:13191 $!

# run_jobs N: the first N servers, $JOBS jobs; prints seconds until the last result.
run_jobs() {
    local n=$1 steel start end sched
    steel=$(IFS=,; echo "${SERVERS[*]:0:$n}")
    CLAWGRESS_ADMIN_TOKEN=$TOKEN "$BIN" scheduler --nats nats://127.0.0.1:14322 \
        --gateway http://127.0.0.1:13191 --credentials "$TMP/credentials.yaml" \
        --steel "$steel" --steel-gateway "http://$HOST:13191" --gateway-admin http://127.0.0.1:19191 \
        --per-domain 16 --concurrency 32 >"$TMP/scheduler-$n.log" 2>&1 &
    sched=$!
    sleep 1
    : >"$TMP/jobs.jsonl"
    for i in $(seq "$JOBS"); do
        printf '{"version":1,"type":"scrape","id":"steel-%s-%s-%s","agent":"bench-agent","url":"http://steel.bench:18093/p%s","fetch":"steel","extract":{"h":{"selector":"h1","required":true}}}\n' \
            "$n" "$RANDOM" "$i" "$i" >>"$TMP/jobs.jsonl"
    done
    start=$(date +%s.%N)
    "$BIN" submit --nats nats://127.0.0.1:14322 --wait --wait-secs 600 --json "$TMP/jobs.jsonl" >"$TMP/results-$n.jsonl" 2>"$TMP/submit-$n.log" || true
    end=$(date +%s.%N)
    kill -INT "$sched"; wait "$sched" 2>/dev/null || true
    local ok
    ok=$(grep -c '"status":"ok"' "$TMP/results-$n.jsonl" || true)
    [ "$ok" = "$JOBS" ] || { tail -5 "$TMP/results-$n.jsonl" >&2; tail -20 "$TMP/scheduler-$n.log" >&2; die "$ok of $JOBS steel jobs ok with $n server(s)"; }
    python3 - "$n" "$JOBS" "$start" "$end" <<'PY' >>"$RESULTS"
import json, sys
n, jobs, start, end = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print(json.dumps({"name": f"steel-{n}", "servers": n, "jobs": jobs, "seconds": end - start, "jobs_per_s": jobs / (end - start)}))
PY
}
for _ in $(seq "$PASSES"); do
    for n in $(seq "${#SERVERS[@]}"); do
        run_jobs "$n"
    done
done

mkdir -p "$(dirname "$OUT")"
cp "$RESULTS" "$OUT"
python3 - "$RESULTS" "$TMP/audit.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
for n in sorted({r["servers"] for r in runs}):
    rates = [r["jobs_per_s"] for r in runs if r["servers"] == n]
    print(f"{n} Steel server(s): {statistics.median(rates):.2f} steel jobs/s (median of {len(rates)}; {runs[0]['jobs']} jobs each)")
lines = [json.loads(l) for l in open(sys.argv[2])]
pages = sum(1 for l in lines if l.get("decision") == "allow" and l.get("request", {}).get("domain") == "steel.bench")
other = [l for l in lines if l.get("request", {}).get("domain") not in ("steel.bench", None)]
print(f"gateway audit: {pages} allowed page requests; {len(other)} other requests under the agent "
      f"({', '.join(sorted({l['request']['domain'] for l in other})) or 'none'})")
PY
