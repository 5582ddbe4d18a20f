#!/usr/bin/env bash
# Reloads under load: dnsperf offers a fixed rate of allowed cache hits while
# the server reloads every RELOAD_EVERY seconds, and the same run without
# reloads is the baseline. allowdns reloads a RULES-rule policy (SIGHUP,
# alternating two versions); unbound, the peer, reloads its config with
# `unbound-control reload`, which also flushes its cache.
#
# Reported per server and case: queries sent, completed, lost, answered with
# another rcode than NOERROR (all are allowed names), and the p50 / p99 / max
# latency dnsperf saw. A lost query is one dnsperf never got an
# answer for within its 1 s timeout.
#
# Usage: benches/reload.sh            (needs dnsperf, unbound: see .ci/run)
# Env:   RULES=20000 SECS=10 QPS=20000 RELOAD_EVERY=0.5
# Traffic stays on 127.0.0.1; the run is bounded by SECS per case.
set -euo pipefail

RULES=${RULES:-20000}
SECS=${SECS:-10}
QPS=${QPS:-20000}
RELOAD_EVERY=${RELOAD_EVERY:-0.5}

cd "$(dirname "$0")/.."
. benches/lib.sh
for tool in dnsperf unbound unbound-control python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install dnsperf unbound)"; exit 2; }
done
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/allowdns

WORK=$(mktemp -d /tmp/allowdns-reload.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
UP=5310; ALLOWDNS=5311; UNBOUND=5312

mkdir -p "$WORK/zones" "$WORK/up"
{
  echo '$ORIGIN allowed.bench.'
  echo '$TTL 86400'
  echo '@ IN SOA ns.allowed.bench. h.allowed.bench. 1 3600 600 86400 300'
  for i in $(seq 1 1000); do echo "host$i IN A 10.$((i / 250 % 250)).$((i % 250)).1"; done
} > "$WORK/zones/allowed.bench.zone"
printf 'agent_name: upstream\nallowed_dynamic_resolution: ["*"]\n' > "$WORK/up/policy.yaml"
for i in $(seq 1 1000); do echo "host$i.allowed.bench A"; done > "$WORK/hits.txt"
python3 - "$WORK" "$RULES" <<'PY'
import sys
work, rules = sys.argv[1], int(sys.argv[2])
for tag in ("one", "two"):
    with open(f"{work}/policy-{tag}.yaml", "w") as f:
        f.write("agent_name: bench_agent\nexpected_outbound:\n")
        for i in range(rules):
            f.write(f"  - destination: h{i}.{tag}.example\n")
        f.write('allowed_dynamic_resolution: ["*.allowed.bench"]\n')
PY
cp "$WORK/policy-one.yaml" "$WORK/policy.yaml"

wait_port() { for _ in $(seq 100); do dig +time=1 +tries=1 @127.0.0.1 -p "$1" host1.allowed.bench >/dev/null 2>&1 && return; sleep 0.1; done; echo "port $1 did not answer"; exit 1; }

"$BIN" serve --listen 127.0.0.1:$UP --policy "$WORK/up/policy.yaml" --zones "$WORK/zones" \
  --upstream none --audit-log /dev/null 2>"$WORK/up.log" & PIDS+=($!)
wait_port $UP
"$BIN" serve --listen 127.0.0.1:$ALLOWDNS --policy "$WORK/policy.yaml" --upstream 127.0.0.1:$UP \
  --audit-log "$WORK/audit.jsonl" 2>"$WORK/allowdns.log" & PIDS+=($!); ALLOWDNS_PID=$!

{
  unbound_conf "$WORK" $UNBOUND allowed.bench $UP
  # For `unbound-control reload`.
  printf 'remote-control:\n  control-enable: yes\n  control-interface: "%s"\n  control-use-cert: no\n' "$WORK/unbound.ctl"
} > "$WORK/unbound.conf"
unbound -c "$WORK/unbound.conf" & PIDS+=($!)
wait_port $ALLOWDNS; wait_port $UNBOUND

reload_loop() { # server, count
  local n=0
  while [ "$n" -lt "$2" ]; do
    sleep "$RELOAD_EVERY"
    n=$((n + 1))
    if [ "$1" = allowdns ]; then
      if [ $((n % 2)) = 1 ]; then cp "$WORK/policy-two.yaml" "$WORK/policy.yaml"; else cp "$WORK/policy-one.yaml" "$WORK/policy.yaml"; fi
      kill -HUP "$ALLOWDNS_PID"
    else
      unbound-control -c "$WORK/unbound.conf" reload >/dev/null
    fi
  done
}

# RcvbufErrors from /proc/net/snmp: datagrams the kernel dropped for a full socket buffer.
udp_drops() { awk '/^Udp:/ { if (h) { print $6; exit } h = 1 }' /proc/net/snmp; }
RELOADS=$(python3 -c "print(int($SECS / $RELOAD_EVERY) - 1)")
echo "| server | reloads | sent | completed | lost | not NOERROR | p50 µs | p99 µs | max µs |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for server in allowdns unbound; do
  port=$([ "$server" = allowdns ] && echo $ALLOWDNS || echo $UNBOUND)
  for reloads in 0 "$RELOADS"; do
    dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/hits.txt" -n 1 -q 50 >/dev/null 2>&1 # warm the cache
    drops_before=$(udp_drops)
    [ "$reloads" -gt 0 ] && { reload_loop "$server" "$reloads" & LOOP=$!; }
    dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/hits.txt" -l "$SECS" -Q "$QPS" -c 8 -q 500 -t 1 -v \
      > "$WORK/run.txt" 2>&1 || true
    [ "$reloads" -gt 0 ] && wait "$LOOP"
    echo "$server, $reloads reloads: kernel UDP receive-buffer drops (any socket): $(( $(udp_drops) - drops_before ))" >&2
    python3 - "$WORK/run.txt" "$server" "$reloads" <<'PY'
import sys, re
text = open(sys.argv[1]).read()
num = lambda pat: int(re.search(pat, text).group(1))
sent, done, lost = num(r"Queries sent:\s+(\d+)"), num(r"Queries completed:\s+(\d+)"), num(r"Queries lost:\s+(\d+)")
# "> RCODE name type latency" per answer; lost queries have no latency.
lat, other = [], 0
for l in text.splitlines():
    f = l.split()
    if l.startswith("> ") and len(f) >= 5:
        other += f[1] != "NOERROR"
        try:
            lat.append(float(f[-1]))
        except ValueError:
            pass
lat.sort()
pick = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] * 1e6 if lat else float("nan")
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sent:,} | {done:,} | {lost:,} | {other:,} | {pick(0.5):.0f} | {pick(0.99):.0f} | {lat[-1] * 1e6 if lat else float('nan'):.0f} |")
PY
  done
done
echo "allowdns reloads logged: $(grep -c 'reloaded' "$WORK/allowdns.log"), failed: $(grep -c 'RELOAD FAILED' "$WORK/allowdns.log" || true)" >&2
echo "allowdns denied answers during the runs: $(grep -c '"decision":"deny"' "$WORK/audit.jsonl" || true) (any would be a wrong answer)" >&2
