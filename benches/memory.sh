#!/usr/bin/env bash
# Memory benchmark: resident memory at idle after start, and the peak under a
# flood of unique names, allowdns against unbound in the same run.
#   idle   VmRSS 3 s after each server answers its first query
#   flood  FLOOD unique names, each asked once (dnsperf -n 1): allowed names
#          under a wildcard (KIND=allowed, the default: every one forwarded
#          and cached, so the cache fills to its limit and churns) or denied
#          names (KIND=denied: a DNS tunnel)
# While the flood runs, each server's VmRSS is sampled every second; the
# table shows it at each tenth of the flood and the peak (VmHWM) at the end.
# knotd (or allowdns, without knotd) answers the wildcard zone upstream.
# allowdns audits to a file, as users run it. PIN=1 (the default on 2+
# CPUs) pins the servers to CPU 0, dnsperf and the upstream to CPU 1.
#
# Usage: benches/memory.sh   (needs dnsperf, unbound, python3; knotd optional)
# Env:   FLOOD=1000000 KIND=allowed SERVERS="allowdns unbound" PARALLEL=1
#        BIN=target/release/allowdns ARGS= (extra `serve` arguments) PORT=5340
# PARALLEL=1 floods every server at once (the same load, half the wall time).
# Traffic stays on 127.0.0.1.
set -euo pipefail

FLOOD=${FLOOD:-1000000}
KIND=${KIND:-allowed}
SERVERS=${SERVERS:-allowdns unbound}
PARALLEL=${PARALLEL:-1}
ARGS=${ARGS:-}

cd "$(dirname "$0")/.."
. benches/lib.sh
bench_start memory dnsperf unbound python3
declare -A PID_OF

PORT=${PORT:-5340}
UP=$PORT
port_of() { case $1 in allowdns) echo $((PORT + 1));; unbound) echo $((PORT + 2));; esac; }

mkdir -p "$WORK/zones" "$WORK/up"
cat > "$WORK/zones/flood.bench.zone" <<'ZONE'
$ORIGIN flood.bench.
$TTL 86400
@ IN SOA ns.flood.bench. h.flood.bench. 1 3600 600 86400 300
@ IN NS ns.flood.bench.
ns IN A 127.0.0.1
* IN A 192.0.2.9
ZONE
printf 'agent_name: upstream\nallowed_dynamic_resolution: ["*"]\n' > "$WORK/up/policy.yaml"
printf 'agent_name: bench_agent\nallowed_dynamic_resolution: ["*.flood.bench"]\nexfil: {budget: off}\n' > "$WORK/policy.yaml"
python3 - "$WORK" "$FLOOD" "$KIND" <<'PY'
import sys
work, flood, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
zone = "flood.bench" if kind == "allowed" else "tunnel.evil.example"
with open(f"{work}/flood.txt", "w") as f:
    for start in range(0, flood, 100_000):
        f.write("".join(f"u{i:x}.f{i % 97}.{zone} A\n" for i in range(start, min(flood, start + 100_000))))
PY

start_upstream flood.bench ns.flood.bench

for s in $SERVERS; do
  case $s in
    allowdns)
      # shellcheck disable=SC2086
      "${SRV[@]}" "$BIN" serve --listen 127.0.0.1:"$(port_of allowdns)" --policy "$WORK/policy.yaml" \
        --upstream 127.0.0.1:$UP --audit-log "$WORK/audit.jsonl" $ARGS 2>"$WORK/allowdns.log" & PIDS+=($!) ;;
    unbound)
      unbound_conf "$WORK" "$(port_of unbound)" flood.bench "$UP" > "$WORK/unbound.conf"
      "${SRV[@]}" unbound -c "$WORK/unbound.conf" & PIDS+=($!) ;;
  esac
  PID_OF[$s]=$!
  wait_port "$(port_of "$s")" ns.flood.bench
done
sleep 3
for s in $SERVERS; do
  echo "$s idle: $(awk '/VmRSS/ {print $2}' "/proc/${PID_OF[$s]}/status") kB" | tee -a "$WORK/idle.txt" >&2
done

# VmRSS every second while the flood runs: "seconds kB".
sample() {
  local pid=$1 out=$2 t=0
  while [ -e "/proc/$pid/status" ]; do
    echo "$t $(awk '/VmRSS/ {print $2}' "/proc/$pid/status")" >> "$out"
    sleep 1; t=$((t + 1))
  done
}
flood() {
  local s=$1
  sample "${PID_OF[$s]}" "$WORK/rss-$s.txt" & local sampler=$!
  local started out
  started=$(date +%s)
  out=$("${CLI[@]}" dnsperf -s 127.0.0.1 -p "$(port_of "$s")" -d "$WORK/flood.txt" -n 1 -c 8 -q 500 -T 1 2>&1)
  echo "$s: $(awk '/Queries completed/ {print $3}' <<<"$out") of $FLOOD answered in $(( $(date +%s) - started )) s" >&2
  kill "$sampler" 2>/dev/null || true
}
if [ "$PARALLEL" = 1 ]; then
  FLOODS=()
  for s in $SERVERS; do flood "$s" & FLOODS+=($!); done
  for f in "${FLOODS[@]}"; do wait "$f"; done
else
  for s in $SERVERS; do flood "$s"; done
fi

python3 - "$WORK" "$FLOOD" "$KIND" $SERVERS <<'PY'
import sys
work, flood, kind, servers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
print(f"\n{flood:,} unique {kind} names, each asked once; VmRSS in MB at each tenth of the flood's duration\n")
print("| server | idle | " + " | ".join(f"{i}0%" for i in range(1, 11)) + " |")
print("|---|---:|" + "---:|" * 10)
idle = dict(l.split(" idle: ") for l in open(f"{work}/idle.txt").read().splitlines())
for s in servers:
    rows = [l.split() for l in open(f"{work}/rss-{s}.txt").read().splitlines() if len(l.split()) == 2]
    kb = [int(r[1]) for r in rows] or [0]
    at = [kb[min(len(kb) - 1, len(kb) * i // 10)] for i in range(1, 11)]
    print(f"| {s} | {int(idle[s].split()[0]) / 1000:.1f} | " + " | ".join(f"{k / 1000:.1f}" for k in at) + " |")
PY
for s in $SERVERS; do
  echo "$s after the flood: $(awk '/VmHWM|VmRSS/ {printf "%s %s kB  ", $1, $2}' "/proc/${PID_OF[$s]}/status")" >&2
done
