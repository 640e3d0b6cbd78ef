#!/usr/bin/env bash
# The platform on a laptop: `clawgress up` starts nats-server (JetStream, a
# store under the state directory) unless one answers on 127.0.0.1:4222,
# then the gateway with the shipped policy, the example agents and the demo
# admin tokens, then the scheduler and its workers, and with --demo a local
# site and a job that scrapes it through the gateway. Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/../.."
state="${CLAWGRESS_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/clawgress}"
mkdir -p "$state"
exec target/release/clawgress up --demo --state-dir "$state" --data "$state/nats" "$@"
