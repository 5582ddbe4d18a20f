#!/usr/bin/env bash
# Long fuzz run: the targets of tests/it/fuzz.rs (policy compiler in process,
# query path through the real binary over UDP and TCP), release build,
# CASES cases per target. Traffic stays on 127.0.0.1; the server under test
# has no upstream. A failure prints proptest's shrunk minimal input.
#
# Usage: benches/fuzz.sh        Env: CASES=1000000
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${CASES:-1000000}
cargo test --release --quiet --test it --no-run
started=$(date +%s)
status=0
PROPTEST_CASES=$CASES cargo test --release --quiet --test it fuzz:: -- --nocapture 2>&1 \
  | grep -E "^fuzz_|test result|panicked|minimal|Fail" || status=$?
echo "$CASES cases per target in $(( $(date +%s) - started )) s"
exit "$status"
