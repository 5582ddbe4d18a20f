#!/usr/bin/env bash
# The kennel (`allowdns run`): start-up, throughput and resolve-then-connect.
# Root; builds a throwaway "world" network namespace (documentation addresses
# only) and runs everything inside it. Usage: benches/kennel.sh [ROUNDS]
#   start-up: median of N runs, from launching to CMD's first instruction,
#             vs `unshare -n` and `bwrap --unshare-net` (same run)
#   iperf3:   TCP throughput through the fence vs the same pasta namespace unfenced
#   resolve-then-connect: ROUNDS (default 1000) distinct names/addresses,
#             failures and p50/p99 from the answer to a successful connect
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-1000}
N=${STARTS:-21}
BIN=${ALLOWDNS:-target/release/allowdns}
[ -x "$BIN" ] || BIN=${CARGO_TARGET_DIR:-target}/release/allowdns
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
for t in pasta nft iperf3 bwrap unshare python3; do
  command -v $t >/dev/null || { echo "missing $t (apt: passt nftables iperf3 bubblewrap util-linux python3)" >&2; exit 1; }
done

W=akb-$$; WP=akbp-$$
WORK=$(mktemp -d -p "${CARGO_TARGET_DIR:-$PWD/target}" kennel-bench.XXXXXX)   # visible inside the kennel (it hides /tmp)
chmod 755 "$WORK"
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  ip netns del $W 2>/dev/null || true; ip netns del $WP 2>/dev/null || true
  rm -rf "$WORK"
}
PIDS=()
trap cleanup EXIT
ip netns add $W; ip netns add $WP
ip -n $W link set lo up
ip -n $W link add w0 type veth peer name w1 netns $WP
ip -n $W link set w0 up; ip -n $WP link set w1 up
ip -n $W addr add 198.51.100.1/28 dev w0; ip -n $WP addr add 198.51.100.14/28 dev w1
ip -n $W -6 addr add 2001:db8:1::1/64 dev w0 nodad; ip -n $WP -6 addr add 2001:db8:1::fe/64 dev w1 nodad
ip -n $W addr add 198.51.100.200/32 dev lo
ip -n $W route add default via 198.51.100.14; ip -n $W -6 route add default via 2001:db8:1::fe

# One distinct IPv6 address per round, so every round feeds a new set element.
mkdir -p "$WORK/zones"
{
  printf '$ORIGIN kennel.test.\n$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 30\n@ IN NS ns\nns IN A 198.51.100.53\nweb IN A 198.51.100.200\n'
  for i in $(seq 1 "$ROUNDS"); do printf 'r%d IN AAAA 2001:db8:3::%x\n' "$i" "$i"; done
} > "$WORK/zones/kennel.test.zone"
# The whole /64 is local to the world (AnyIP): no address list for pasta to read.
ip -n $W -6 route add local 2001:db8:3::/64 dev lo
cat > "$WORK/policy.yaml" <<'EOF'
agent_name: bench
expected_outbound:
  - destination: web.kennel.test
    port: 5201
    protocol: TCP
  - destination: "*.kennel.test"
    port: 8080
    protocol: TCP
EOF
ip netns exec $W iperf3 -s -B 198.51.100.200 -D -I "$WORK/iperf3.pid" >/dev/null
sleep 0.3; PIDS+=("$(cat "$WORK/iperf3.pid")")
ip netns exec $W python3 -c '
import socket
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 8080)); s.listen(512)
while True:
    c, _ = s.accept(); c.close()' &
PIDS+=($!)
RUN=(ip netns exec $W "$BIN" run --policy "$WORK/policy.yaml" --zones "$WORK/zones" --upstream none --)

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
startup() {  # prints ms from launch to CMD's first instruction
  local t0 t1
  t0=$(date +%s%N); t1=$("$@" date +%s%N); echo $(( (t1 - t0) / 1000000 ))
}
echo "== start-up (median of $N, ms, to CMD's first instruction)"
for name in kennel unshare bwrap; do
  case $name in
    kennel) cmd=("${RUN[@]}") ;;
    unshare) cmd=(ip netns exec $W unshare -n --) ;;
    bwrap) cmd=(ip netns exec $W bwrap --dev-bind / / --unshare-net --) ;;
  esac
  m=$(for _ in $(seq "$N"); do startup "${cmd[@]}"; done | median)
  echo "$name $m"
done

echo "== iperf3 (5 s, TCP, Gbit/s)"
# Both through pasta, each after a 1 s settle; the only difference is the fence.
gbps() { python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'; }
fenced=$("${RUN[@]}" sh -c 'getent hosts web.kennel.test >/dev/null && sleep 1 && iperf3 -c web.kennel.test -t 5 -J' | gbps)
unfenced=$(ip netns exec $W setpriv --reuid=65534 --regid=65534 --clear-groups \
  pasta -f -q -t none -u none -T none -U none --no-map-gw --config-net -- \
  sh -c 'sleep 1 && iperf3 -c 198.51.100.200 -t 5 -J' | gbps)
world=$(ip netns exec $W iperf3 -c 198.51.100.200 -t 5 -J | gbps)
echo "fenced $fenced"
echo "pasta-unfenced $unfenced"
echo "world-direct $world"
python3 -c "print('fenced/unfenced %.0f%%' % (100*$fenced/$unfenced))"

echo "== resolve-then-connect ($ROUNDS rounds, each a new name and address)"
cat > "$WORK/rtc.py" <<'EOF'
import socket, sys, time
rounds, fails, lat = int(sys.argv[1]), 0, []
for i in range(1, rounds + 1):
    try:
        info = socket.getaddrinfo(f"r{i}.kennel.test", 8080, socket.AF_INET6, socket.SOCK_STREAM)
        t = time.perf_counter()
        s = socket.create_connection(info[0][4][:2], timeout=3)
        lat.append(time.perf_counter() - t); s.close()
    except Exception as e:
        if fails == 0:
            print(f"first failure (r{i}): {e}", file=sys.stderr)
        fails += 1
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3 if lat else float("nan")
print(f"rounds {rounds} failures {fails} p50 {q(0.5):.3f} ms p99 {q(0.99):.3f} ms max {q(1.0):.3f} ms")
EOF
"${RUN[@]}" python3 "$WORK/rtc.py" "$ROUNDS"
