#!/usr/bin/env bash
# Memory under a port scan and a denied-name flood (docs/attribution.md).
#
# A network namespace this script creates (and removes) is fenced as the
# manual deployment does it: `allowdns nft-ruleset` loaded in it, `allowdns
# serve` inside it with `firewall: {}`. Then, from inside it:
#   scan   ATTEMPTS UDP datagrams, each to a distinct address:port in the
#          documentation ranges 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24
#          (routed to a veth pair inside it: nothing leaves the namespace), plus
#          TCP_ATTEMPTS non-blocking TCP connects (SYNs) the same way;
#   flood  NAMES unique denied names, by dnsperf.
# Each load is sent in two parts (a tenth, then the rest) and allowdns's peak
# RSS (VmHWM) is read after each: bounded means the second does not grow
# with the nine times more attempts. Lost: attempts the kernel could not
# hand over (NFLOG overruns) and audit records missing.
#
# Usage: benches/portscan.sh   (root; needs nft, ip, python3, dnsperf)
# Env:   ATTEMPTS=1000000 TCP_ATTEMPTS=20000 NAMES=1000000 DEBUG=0 (debug build)
set -euo pipefail

ATTEMPTS=${ATTEMPTS:-1000000}
TCP_ATTEMPTS=${TCP_ATTEMPTS:-20000}
NAMES=${NAMES:-1000000}

cd "$(dirname "$0")/.."
for tool in nft ip python3 dnsperf curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool"; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (network namespace, nftables)"; exit 2; }
if [ "${DEBUG:-0}" = 1 ]; then
  cargo build --quiet; BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug/allowdns
else
  cargo build --release --quiet; BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/allowdns
fi

NS=allowdns-scan-$$
WORK=$(mktemp -d /tmp/allowdns-scan.XXXXXX)
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
RUN=(ip netns exec "$NS")

ip netns add "$NS"
ip -n "$NS" link set lo up
# Everything not local goes to a veth pair whose both ends are in the
# namespace (and no address behind it): dropped by the fence first.
ip -n "$NS" link add d0 type veth peer name d1
ip -n "$NS" addr add 10.201.0.2/24 dev d0
ip -n "$NS" link set d0 up
ip -n "$NS" link set d1 up
ip -n "$NS" route add default dev d0

printf 'agent_name: scan_agent\nallowed_dynamic_resolution: ["*.allowed.bench"]\nfirewall: {}\n' > "$WORK/policy.yaml"
"$BIN" nft-ruleset --policy "$WORK/policy.yaml" --dns 127.0.0.1 > "$WORK/ruleset.nft"
"${RUN[@]}" nft -f "$WORK/ruleset.nft"
"${RUN[@]}" "$BIN" serve --listen 127.0.0.1:53 --policy "$WORK/policy.yaml" --upstream none \
  --audit-log "$WORK/audit.jsonl" --metrics 127.0.0.1:9153 2>"$WORK/allowdns.log" &
PID=$!
for _ in $(seq 100); do grep -qs "listening on" "$WORK/allowdns.log" && break; sleep 0.1; done
grep -q "listening on" "$WORK/allowdns.log" || { cat "$WORK/allowdns.log"; exit 1; }

metric() { "${RUN[@]}" curl -s http://127.0.0.1:9153/metrics | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }
hwm() { awk '/VmHWM/ {print $2}' "/proc/$PID/status"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
# Waits until allowdns has taken in `want` egress attempts, or they stop coming.
settle() {
  local last=-1 now
  for _ in $(seq 600); do
    now=$(metric allowdns_egress_total)
    { [ "$now" -ge "$1" ] || [ "$now" = "$last" ]; } && break
    last=$now; sleep 1
  done
}
echo "idle: VmRSS $(rss) kB, VmHWM $(hwm) kB" >&2

# --- scan -------------------------------------------------------------------
scan() { # FIRST COUNT PROTO
  "${RUN[@]}" python3 - "$1" "$2" "$3" <<'PY'
import socket, sys, time
first, count, proto = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
nets = ["192.0.2.", "198.51.100.", "203.0.113."]
def target(i):
    # 762 addresses, then the next port: every (address, port) distinct.
    a = i % 762
    return nets[a // 254] + str(a % 254 + 1), 1024 + i // 762
start = time.time()
if proto == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(first, first + count):
        try:
            s.sendto(b"x", target(i))
        except OSError:
            pass  # the fence's reject, reported on a later send
else:
    for i in range(first, first + count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(target(i))
        s.close()
print(f"{proto}: {count} attempts in {time.time() - start:.1f} s", file=sys.stderr)
PY
}
tenth=$((ATTEMPTS / 10))
scan 0 "$tenth" udp
settle "$tenth"
hwm_scan1=$(hwm)
scan "$tenth" $((ATTEMPTS - tenth)) udp
scan "$ATTEMPTS" "$TCP_ATTEMPTS" tcp
total=$((ATTEMPTS + TCP_ATTEMPTS))
settle "$total"
hwm_scan2=$(hwm)
seen=$(metric allowdns_egress_total)
lost=$(metric allowdns_egress_records_lost_total)
overruns=$(metric allowdns_egress_overruns_total)
records=$(grep -c '"event":"egress_denied"' "$WORK/audit.jsonl" || true)
limited=$(grep '"event":"egress_denied"' "$WORK/audit.jsonl" | grep -c '"owner_unknown":"rate limited"' || true)
alerts=$(grep -c "UNEXPECTED OUTBOUND CONNECTION" "$WORK/allowdns.log" || true)

# --- flood ------------------------------------------------------------------
python3 - "$WORK" "$NAMES" <<'PY'
import sys
work, n = sys.argv[1], int(sys.argv[2])
with open(f"{work}/flood1.txt", "w") as f:
    f.write("".join(f"c{i:x}.t{i % 97}.tunnel.evil.example A\n" for i in range(n // 10)))
with open(f"{work}/flood2.txt", "w") as f:
    f.write("".join(f"c{i:x}.t{i % 97}.tunnel.evil.example A\n" for i in range(n // 10, n)))
PY
flood() { "${RUN[@]}" dnsperf -s 127.0.0.1 -p 53 -d "$1" -n 1 -c 8 -q 256 -t 2 2>&1 | awk '/Queries (sent|completed|lost)|Queries per second/'; }
denied_before=$(grep -c '"decision":"deny"' "$WORK/audit.jsonl" || true)
flood "$WORK/flood1.txt" >&2
sleep 2
hwm_flood1=$(hwm)
flood "$WORK/flood2.txt" >&2
sleep 3
hwm_flood2=$(hwm)
denied=$(( $(grep -c '"decision":"deny"' "$WORK/audit.jsonl" || true) - denied_before ))
named=$(grep '"decision":"deny"' "$WORK/audit.jsonl" | grep -c '"pid":' || true)
audit_lost=$(metric allowdns_audit_records_lost_total)

cat <<REPORT
| load | attempts | taken in | NFLOG lost / overruns | audit records | rate limited | full alerts | VmHWM after 1/10 | VmHWM after all |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
| port scan ($ATTEMPTS UDP + $TCP_ATTEMPTS TCP) | $total | $seen | $lost / $overruns | $records | $limited | $alerts | $((hwm_scan1 / 1024)) MB | $((hwm_scan2 / 1024)) MB |
| unique denied names | $NAMES | $denied | | $denied (lost: $audit_lost) | $((denied - named)) | | $((hwm_flood1 / 1024)) MB | $((hwm_flood2 / 1024)) MB |
REPORT
echo "final VmRSS $(rss) kB" >&2
