#!/usr/bin/env bash
# Issue 6's figure: what the observability additions cost a request, side by
# side in one run. Plain-HTTP GETs of 1 KB over kept-alive connections
# (`clawgress bench`, 8 connections, closed loop) to a local bench target,
#  1. direct (the physical limit),
#  2. through the gateway as it ships: metrics per agent and denied host,
#     the dashboard's counters, spans created but no OTLP endpoint,
#  3. through a second gateway exporting a `decision` span per request over
#     OTLP/HTTP to a local sink (batched, as in production),
#  4. through a third sampling 1% of traces (OTEL_TRACES_SAMPLER=traceidratio).
# Everything listens on 127.0.0.1 and is stopped on exit.
#
# Environment: BENCH_DURATION (default 5), BENCH_PASSES (3), BENCH_WARMUP (1),
# BENCH_SIZE (1024), CLAWGRESS_BIN, BENCH_KEEP_TMP=1,
# OUT (default target/bench/observability.json).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

DURATION=${BENCH_DURATION:-5}
PASSES=${BENCH_PASSES:-3}
WARMUP=${BENCH_WARMUP:-1}
SIZE=${BENCH_SIZE:-1024}
OUT=${OUT:-target/bench/observability.json}
TARGET_LISTEN=127.0.0.1:18080
SINK_LISTEN=127.0.0.1:14318

# shellcheck source=gateway/bench/lib.sh
. "$ROOT/gateway/bench/lib.sh"

clawgress_bin
start_target
# The OTLP sink: answers every export 200 with an empty (valid) protobuf body.
"$BIN" bench-target --listen "$SINK_LISTEN" --size 0 2>"$TMP/sink.log" &
PIDS+=($!)
wait_listening otlp-sink "$SINK_LISTEN" $!

cat >"$TMP/policy.yaml" <<YAML
egress: {default_action: deny, logging: all_requests, monitoring: enabled}
allowlist:
  bench:
    - domain: "bench.local"
      ports: [18080]
      protocols: [http]
$(unlimited_rates)
dns:
  resolver: internal
  nameservers: ["127.0.0.1:9"]
  static_hosts:
    bench.local: 127.0.0.1
YAML
start_clawgress shipped 127.0.0.1:13151 127.0.0.1:19151 "$TMP/policy.yaml" --workers 1
OTEL_EXPORTER_OTLP_ENDPOINT="http://$SINK_LISTEN" OTEL_SERVICE_NAME=clawgress-bench \
    start_clawgress otlp 127.0.0.1:13152 127.0.0.1:19152 "$TMP/policy.yaml" --workers 1
OTEL_EXPORTER_OTLP_ENDPOINT="http://$SINK_LISTEN" OTEL_SERVICE_NAME=clawgress-bench \
    OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.01 \
    start_clawgress sampled 127.0.0.1:13153 127.0.0.1:19153 "$TMP/policy.yaml" --workers 1

common=(--connections 8 --target "$TARGET_URL")
for _ in $(seq "$PASSES"); do
    run direct --connections 8 --target "http://$TARGET_LISTEN/"
    run gateway "${common[@]}" --proxy http://127.0.0.1:13151 --proxy-user "$BENCH_USER"
    run gateway-otlp "${common[@]}" --proxy http://127.0.0.1:13152 --proxy-user "$BENCH_USER"
    run gateway-otlp-1pct "${common[@]}" --proxy http://127.0.0.1:13153 --proxy-user "$BENCH_USER"
done

mkdir -p "$(dirname "$OUT")"
cp "$RESULTS" "$OUT"
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
def median(name, key):
    return statistics.median(r[key] for r in runs if r["name"] == name)
for name in ("direct", "gateway", "gateway-otlp", "gateway-otlp-1pct"):
    print(f"{name:18} p50 {median(name, 'p50_us'):8.0f} us   p99 {median(name, 'p99_us'):8.0f} us   {median(name, 'rps'):8.0f} req/s")
ratio = median("gateway-otlp", "rps") / median("gateway", "rps")
added = median("gateway-otlp", "p50_us") - median("gateway", "p50_us")
print(f"OTLP export keeps {ratio:.0%} of the gateway's throughput and adds {added:.0f} us at p50")
print(f"sampling 1%: {median('gateway-otlp-1pct', 'rps') / median('gateway', 'rps'):.0%} of the gateway's throughput")
print(f"gateway vs direct: {median('gateway', 'rps') / median('direct', 'rps'):.0%} of direct throughput")
PY
