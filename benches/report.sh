#!/usr/bin/env bash
# `allowdns report` on a 1M-record audit log: wall time and peak RSS
# (GNU time), for a realistic day, a day in learn mode (with the suggest
# pass), and for a flood of unique denied names
# under unique domains (the report's maps at their caps). docs/report.md
# has the numbers.
#
# Usage: benches/report.sh          (needs python3 and /usr/bin/time)
# Env:   RECORDS=1000000 MODES="realistic flood"
set -euo pipefail

RECORDS=${RECORDS:-1000000}
MODES=${MODES:-realistic learn flood}

cd "$(dirname "$0")/.."
[ -x /usr/bin/time ] || { echo "missing /usr/bin/time (apt-get install time)"; exit 2; }
cargo build --release --quiet --locked
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/allowdns

WORK=$(mktemp -d /tmp/allowdns-report-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

for mode in $MODES; do
  python3 benches/report_log.py "$WORK/$mode.jsonl" "$RECORDS" "$mode"
  size=$(du -m "$WORK/$mode.jsonl" | cut -f1)
  /usr/bin/time -v "$BIN" report --audit-log "$WORK/$mode.jsonl" -o "$WORK/$mode.html" \
    2> "$WORK/$mode.time"
  wall=$(grep 'Elapsed (wall clock)' "$WORK/$mode.time" | awk '{print $NF}')
  rss=$(grep 'Maximum resident set size' "$WORK/$mode.time" | awk '{print $NF}')
  page=$(du -k "$WORK/$mode.html" | cut -f1)
  echo "$mode: $RECORDS records ($size MB): wall $wall, max RSS $((rss / 1024)) MB, page $page KB"
done
