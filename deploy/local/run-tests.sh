#!/usr/bin/env bash
# The test suite (`make test`): cargo test over the workspace, then every
# test that skipped itself, with its reason. A skip is not a pass: tests that
# need something this machine lacks (a Steel Browser server, say) record
# themselves in $CLAWGRESS_SKIP_LOG and are listed here, after the results.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
log="$PWD/target/skipped-tests.txt"
mkdir -p target
: > "$log"
CLAWGRESS_SKIP_LOG="$log" cargo test --locked --workspace --no-fail-fast "$@"
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
exit "$status"
