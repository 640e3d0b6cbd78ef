# The two commands the README opens with. Each installs what it needs.
.PHONY: up install test deb lab cluster bench-budgets bench-analyze bench-proxy bench-limits bench-pipeline bench-inspection bench-observability bench-synthetic bench-edge bench-steel bench-audit bench-browser bench-tunnels soak

# The gateway with the shipped policy and the example agents, on
# 127.0.0.1:3128 (proxy) and 127.0.0.1:9128 (admin). Ctrl-C stops it.
up:
	./deploy/local/prereqs.sh build nats chromium
	@./deploy/local/build-note.sh
	cargo build --release --locked
	./deploy/local/up.sh

# `clawgress` on your PATH (cargo's bin directory, usually ~/.cargo/bin),
# from this checkout; after `make up` it reuses that release build.
install:
	./deploy/local/prereqs.sh build
	cargo install --path . --locked
	@command -v clawgress >/dev/null \
		&& echo "installed: $$(command -v clawgress)" \
		|| echo "installed in $${CARGO_HOME:-$$HOME/.cargo}/bin, which is not on your PATH: add it (export PATH=\"$${CARGO_HOME:-$$HOME/.cargo}/bin:\$$PATH\")"

# Formatting, lints and the whole test suite (unit and end to end).
test:
	./deploy/local/prereqs.sh build nats chromium prometheus k8s-schemas kubectl podman nftables deb
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	./deploy/local/run-tests.sh

# The .deb for Ubuntu 24.04 hosts (deploy/ubuntu/README.md), from a release
# build: target/debian/clawgress_<version>_amd64.deb.
deb:
	./deploy/local/prereqs.sh build deb
	cargo deb --locked

# The host edge by hand (as root): worker, edge and internet network
# namespaces with the transparent gateway and the DNS control server.
lab:
	./deploy/local/prereqs.sh build nftables dnsmasq
	cargo build --release --locked
	./deploy/lab/lab.sh

# Scale-out on this machine: three nats-servers (a JetStream cluster), two
# gateways and two schedulers on loopback (README: Scale-out). Ctrl-C stops them.
cluster:
	./deploy/local/prereqs.sh build nats
	cargo build --release --locked
	./deploy/local/cluster.sh

# Issue 16: four gateway replicas on one hot token budget over a real
# nats-server: CAS conflicts/s with leased blocks vs a CAS per request.
bench-budgets:
	./deploy/local/prereqs.sh build nats
	cargo build --release --locked
	./gateway/bench/budgets.sh

# Direct vs Clawgress vs Squid 5.7, side by side (see BENCHMARKS.md).
bench-proxy:
	./deploy/local/prereqs.sh build squid
	cargo build --release --locked
	./gateway/bench/proxy_vs_squid.sh

# Rate limiters on vs off, and emergency-block propagation across two
# replicas on a real nats-server (see BENCHMARKS.md).
bench-limits:
	./deploy/local/prereqs.sh build nats
	cargo build --release --locked
	./gateway/bench/limits_and_control.sh

# The job pipeline: dispatch with no fetch, http jobs end to end vs a plain
# reqwest loop, Chromium jobs with and without browser reuse (BENCHMARKS.md).
bench-pipeline:
	./deploy/local/prereqs.sh build nats chromium
	cargo build --release --locked
	./gateway/bench/pipeline.sh

# Issue 4: DLP scan throughput, the AI analyzer's cost, and TLS interception
# vs passthrough vs direct over kept-alive HTTPS (see BENCHMARKS.md).
bench-inspection:
	./deploy/local/prereqs.sh build
	cargo build --release --locked
	./gateway/bench/inspection.sh

# Issue 6: the gateway with and without OTLP span export vs direct, side by
# side (see BENCHMARKS.md).
bench-observability:
	./deploy/local/prereqs.sh build
	cargo build --release --locked
	./gateway/bench/observability.sh

# Issue 6: the synthetic rate-limit check's 100-request burst against the
# limiter's own schedule, the fastest any compliant client could finish.
bench-synthetic:
	./deploy/local/prereqs.sh build nats
	cargo build --release --locked
	./gateway/bench/synthetic.sh

# Issue 13: the transparent path vs the explicit proxy vs direct inside the
# lab's namespaces, and the DNS control server vs dnsmasq with dnsperf (as root).
bench-edge:
	./deploy/local/prereqs.sh build nftables dnsmasq dnsperf
	cargo build --release --locked
	./gateway/bench/edge.sh

# Issue 18: steel jobs/s with one Steel server and with each further one
# (STEEL_URLS=URL,URL...: servers you started; see README: Steel Browser).
bench-steel:
	./deploy/local/prereqs.sh build nats
	cargo build --release --locked
	./gateway/bench/steel.sh

# Issue 15: proxy req/s and p50 under each --audit-fsync mode (every
# response waits for its audit record), and with the trail shipped to NATS.
bench-audit:
	./deploy/local/prereqs.sh build nats
	cargo build --release --locked
	BENCH_NATS=1 ./gateway/bench/audit.sh

# Issue 16: Chromium jobs vs Crawlee's PuppeteerCrawler on the same pages,
# gateway and browser binary: pages/s, p95 and peak RSS side by side.
bench-browser:
	./deploy/local/prereqs.sh build nats chromium node
	cargo build --release --locked
	./gateway/bench/browser.sh

# Issue 16: 10,000 CONNECT tunnels held through the gateway: RSS per
# tunnel, and a request's latency while they are open (BENCHMARKS.md).
bench-tunnels:
	./deploy/local/prereqs.sh build
	cargo build --release --locked
	./gateway/bench/tunnels.sh

# Issue 16: mixed load for SOAK_MINUTES (10): http and Chromium jobs,
# CONNECT, denials and rate limits; the drift of RSS, fds, threads and p99.
soak:
	./deploy/local/prereqs.sh build nats chromium
	cargo build --release --locked
	./gateway/bench/soak.sh

# Issue 15: `clawgress analyze` events/s on one core over a synthetic trail,
# against the gateway's peak request rate (see BENCHMARKS.md).
bench-analyze:
	./deploy/local/prereqs.sh build
	cargo build --release --locked
	./gateway/bench/analyze.sh
