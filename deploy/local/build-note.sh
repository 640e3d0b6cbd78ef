#!/usr/bin/env bash
# Says what the build before `make up` is about to do. A first release build
# compiles Clawgress and every dependency and takes minutes with no output
# of its own worth reading; later builds redo only what changed.
cd "$(dirname "$0")/../.."
cores=$(nproc 2>/dev/null || echo 1)
if [ ! -x target/release/clawgress ]; then
    crates=$(grep -c '^name = ' Cargo.lock 2>/dev/null || echo 450)
    # Measured: BENCHMARKS.md, "Build profile": 10 m 25 s on 2 cores, about
    # 20 CPU-minutes in all.
    minutes=$(( (20 + cores - 1) / cores + 1 ))
    echo "make up: first build of Clawgress and its ${crates} crates (release mode): about ${minutes} minutes on ${cores} core(s); later starts take seconds."
else
    echo "make up: rebuilding what changed since the last build (seconds, or a minute or two after a pull)."
fi
