#!/usr/bin/env bash
# The test suite (`make test`): cargo test over the workspace, then every
# test that skipped itself, with its reason, then a check that nothing the
# suite started outlived it.
#
# A skip is not a pass: tests that need something this machine lacks (a
# Steel Browser server, say) record themselves in $CLAWGRESS_SKIP_LOG and
# are listed here, after the results.
#
# Leftovers fail the run: every process the suite starts inherits
# CLAWGRESS_TEST_RUN (browsers, nats-servers, gateways, PostgreSQL), so one
# still alive afterwards is an orphan; it is listed, killed, and the run
# fails. The suite's temporary files go to a directory of its own (TMPDIR),
# which must be empty at the end.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
log="$PWD/target/skipped-tests.txt"
mkdir -p target
: > "$log"
run_id="clawgress-test-$$-$(date +%s)"
suite_tmp=$(mktemp -d "${TMPDIR:-/tmp}/clawgress-suite.XXXXXX")
# Like /tmp: PostgreSQL's tests run it as another user, under here.
chmod 1777 "$suite_tmp"
CLAWGRESS_TEST_RUN="$run_id" TMPDIR="$suite_tmp" CLAWGRESS_SKIP_LOG="$log" \
    cargo test --locked --workspace --no-fail-fast "$@"
status=$?
if [ -s "$log" ]; then
    count=$(sort -u "$log" | cut -f1 | sort -u | wc -l)
    printf '\nSKIPPED (not passed): %s test(s) skipped all or part of what they check:\n' "$count"
    sort -u "$log" | while IFS=$'\t' read -r test reason; do
        printf '  %s\n      %s\n' "$test" "$reason"
    done
else
    printf '\nNo test skipped.\n'
fi

# Processes of this run still alive. A process may take a moment to go
# after its parent: look twice.
orphans() {
    local pid
    for environ in /proc/[0-9]*/environ; do
        pid=${environ#/proc/}
        pid=${pid%/environ}
        [ "$pid" = "$$" ] && continue
        if tr '\0' '\n' 2>/dev/null <"$environ" | grep -qx "CLAWGRESS_TEST_RUN=$run_id"; then
            echo "$pid"
        fi
    done
}
left=$(orphans)
[ -n "$left" ] && sleep 3 && left=$(orphans)
if [ -n "$left" ]; then
    printf '\nLEFT RUNNING by the suite (orphans, now killed):\n'
    for pid in $left; do
        printf '  %s  %s\n' "$pid" "$(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null | cut -c1-160)"
    done
    # shellcheck disable=SC2086
    kill -9 $left 2>/dev/null
    status=1
else
    printf 'Nothing the suite started is still running.\n'
fi

leftover=$(find "$suite_tmp" -mindepth 1 -maxdepth 1 2>/dev/null | head -20)
if [ -n "$leftover" ]; then
    printf '\nLEFT BEHIND by the suite in its temporary directory %s:\n' "$suite_tmp"
    find "$suite_tmp" -mindepth 1 -maxdepth 2 2>/dev/null | head -40 | sed 's/^/  /'
    status=1
else
    printf 'No temporary file or directory left behind.\n'
fi
rm -rf "$suite_tmp"
exit "$status"
