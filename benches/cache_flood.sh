#!/usr/bin/env bash
# Cache flood benchmark: does a flood of unique allowed names cost the
# cache-hot set its hit rate and its rate? allowdns vs unbound vs dnsmasq,
# measured in the same run. For each server, in turn:
#   1. warm:   every hot name asked a few times
#   2. before: dnsperf saturates the server with the hot set for DURATION s
#   3. flood:  FLOOD unique allowed names, each asked once
#   4. after:  the hot set again, as in 2
# Hit rate = 1 - (questions the server's upstream got during the run) /
# (queries completed). Each server has an upstream of its own (allowdns
# answering a wildcard zone locally), whose /metrics counts its questions.
#
# Usage: benches/cache_flood.sh   (needs dnsperf, dnsmasq, unbound, python3)
# Env:   FLOOD=1000000 HOT=1000 DURATION=8 SERVERS="allowdns unbound dnsmasq"
# Traffic stays on 127.0.0.1.
set -euo pipefail

FLOOD=${FLOOD:-1000000}
HOT=${HOT:-1000}
DURATION=${DURATION:-8}
SERVERS=${SERVERS:-allowdns unbound dnsmasq}

cd "$(dirname "$0")/.."
. benches/lib.sh
for tool in dnsperf dnsmasq unbound python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install dnsperf dnsmasq-base unbound)"; exit 2; }
done
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/allowdns

WORK=$(mktemp -d /tmp/allowdns-cache-flood.XXXXXX)
PIDS=()
declare -A PID_OF
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- data -------------------------------------------------------------------
mkdir -p "$WORK/zones" "$WORK/up"
cat > "$WORK/zones/flood.bench.zone" <<'ZONE'
$ORIGIN flood.bench.
$TTL 86400
@ IN SOA ns.flood.bench. h.flood.bench. 1 3600 600 86400 300
@ IN NS ns.flood.bench.
ns IN A 127.0.0.1
* IN A 10.9.9.9
ZONE
printf 'agent_name: upstream\nallowed_dynamic_resolution: ["*"]\n' > "$WORK/up/policy.yaml"
printf 'agent_name: bench_agent\nallowed_dynamic_resolution: ["*.flood.bench"]\n' > "$WORK/policy.yaml"
python3 - "$WORK" "$HOT" "$FLOOD" <<'PY'
import sys
work, hot, flood = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
open(f"{work}/hot.txt", "w").write("".join(f"host{i}.flood.bench A\n" for i in range(hot)))
open(f"{work}/flood.txt", "w").write("".join(f"u{i:x}.f{i % 97}.flood.bench A\n" for i in range(flood)))
PY

# --- servers ----------------------------------------------------------------
port_of() { case $1 in allowdns) echo 5321;; unbound) echo 5322;; dnsmasq) echo 5323;; esac; }
up_of() { echo $(( $(port_of "$1") + 10 )); }
metrics_of() { echo $(( $(port_of "$1") + 20 )); }

for s in $SERVERS; do
  "$BIN" serve --listen 127.0.0.1:"$(up_of "$s")" --policy "$WORK/up/policy.yaml" --zones "$WORK/zones" \
    --upstream none --audit-log /dev/null --metrics 127.0.0.1:"$(metrics_of "$s")" 2>"$WORK/up-$s.log" & PIDS+=($!)
  wait_port "$(up_of "$s")" ns.flood.bench
  case $s in
    allowdns)
      "$BIN" serve --listen 127.0.0.1:"$(port_of "$s")" --policy "$WORK/policy.yaml" \
        --upstream 127.0.0.1:"$(up_of "$s")" --audit-log /dev/null 2>"$WORK/allowdns.log" & PIDS+=($!) ;;
    dnsmasq)
      dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll --bind-interfaces \
        --listen-address=127.0.0.1 --port="$(port_of "$s")" --address=/#/ \
        --server=/flood.bench/127.0.0.1#"$(up_of "$s")" --cache-size=10000 --user=root \
        --pid-file="$WORK/dnsmasq.pid" --log-facility="$WORK/dnsmasq.log" & PIDS+=($!) ;;
    unbound)
      unbound_conf "$WORK" "$(port_of unbound)" flood.bench "$(up_of unbound)" > "$WORK/unbound.conf"
      unbound -c "$WORK/unbound.conf" & PIDS+=($!) ;;
  esac
  PID_OF[$s]=$!
  wait_port "$(port_of "$s")" ns.flood.bench
done

# Questions an upstream has answered so far.
asked() {
  python3 - "$(metrics_of "$1")" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
print(sum(int(float(l.rsplit(" ", 1)[1])) for l in text.splitlines() if l.startswith("allowdns_queries_total{")))
PY
}

# One saturated hot-set run: prints "qps completed upstream_questions".
hot_run() {
  local s=$1 before out
  before=$(asked "$s")
  out=$(dnsperf -s 127.0.0.1 -p "$(port_of "$s")" -d "$WORK/hot.txt" -l "$DURATION" -c 8 -q 256 -T 1 2>&1)
  echo "$(awk '/Queries per second/ {print $4}' <<<"$out") $(awk '/Queries completed/ {print $3}' <<<"$out") $(( $(asked "$s") - before ))"
}

RESULTS="$WORK/results.tsv"
: > "$RESULTS"
for s in $SERVERS; do
  port=$(port_of "$s")
  dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/hot.txt" -n 3 -q 50 >/dev/null 2>&1
  read -r qb cb ub < <(hot_run "$s")
  started=$(date +%s.%N)
  fout=$(dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/flood.txt" -n 1 -c 8 -q 500 -T 1 2>&1)
  took=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
  flood_done=$(awk '/Queries completed/ {print $3}' <<<"$fout")
  read -r qa ca ua < <(hot_run "$s")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$qb" "$cb" "$ub" "$qa" "$ca" "$ua" "$flood_done" "$took" >> "$RESULTS"
  echo "$s: before qps=$qb upstream=$ub/$cb; flood $flood_done answered in ${took}s; after qps=$qa upstream=$ua/$ca" >&2
done

python3 - "$RESULTS" "$FLOOD" "$HOT" "$DURATION" <<'PY'
import sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
flood, hot, dur = sys.argv[2:5]
print(f"\nhot set of {hot} names, {dur} s saturated dnsperf runs (8 clients, 256 outstanding) "
      f"before and after {int(flood):,} unique allowed names\n")
print("| server | QPS before | hit rate before | QPS after | hit rate after | QPS after/before | flood answered |")
print("|---|---:|---:|---:|---:|---:|---:|")
for s, qb, cb, ub, qa, ca, ua, fd, took in rows:
    hb = 1 - int(ub) / max(int(cb), 1)
    ha = 1 - int(ua) / max(int(ca), 1)
    print(f"| {s} | {float(qb):,.0f} | {hb:.4%} | {float(qa):,.0f} | {ha:.4%} | {float(qa)/float(qb):.3f} | {int(fd or 0):,} in {took} s |")
PY
for s in $SERVERS; do
  echo "$s memory after the run: $(awk '/VmHWM|VmRSS/ {printf "%s %s kB  ", $1, $2}' "/proc/${PID_OF[$s]}/status")" >&2
done
