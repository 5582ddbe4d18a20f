#!/usr/bin/env bash
# Side-by-side DNS benchmark: allowdns vs dnsmasq vs unbound, same allowlist,
# same upstream, interleaved repetitions, three loads:
#   hits   allowed names, all cache hits after warm-up
#   flood  unique denied names (a DNS tunnel)
#   mix    90% allowed hits, 10% unique denied
#   tcp1   (TCP=1, the default) allowed hits over ONE TCP connection, 100
#          queries outstanding on it (RFC 7766 pipelining)
#   miss   (MISS=1, the default) unique allowed names: every query forwarded
#          (fresh names for every server and repetition)
# Peers: dnsmasq, unbound, and knotd (KNOT=1, the default when installed),
# which is then also the upstream, serving the bench zone authoritatively:
# on hits it is the ceiling. NULLAUDIT=1 (the default) adds allowdns with
# --audit-log /dev/null ("allowdns-null") beside allowdns logging to a file.
# PIN=1 (the default on 2+ CPUs) pins the servers to CPU 0 and dnsperf and
# the upstream to CPU 1.
# For each: saturated QPS (dnsperf, fixed concurrency), then p50/p99 latency
# at a fixed offered rate below every server's capacity.
#
# FEED=1 instead compares nftables feeding: allowdns feeding a set, allowdns
# without feeding, and dnsmasq with --nftset, all in a network namespace this
# script creates (root needed), on allowed cache hits, the mix and (MISS=1)
# misses, each answer's address fed.
#
# LOADS="miss" (any of the loads above, space-separated) runs only those.
#
# BASELINE=/path/to/older/allowdns adds that binary as a fourth server
# ("allowdns-base"), to measure what a change costs on the hot path.
#
# ATTRIB=1 instead compares allowdns naming the process behind each denial
# (the default) with allowdns under `alerts.attribution: false`, and with
# `alerts.attribution_rate: 100000` (every denial looked up), on hits and the
# denied flood (docs/attribution.md).
#
# Usage: benches/dnsperf.sh            (needs dnsperf, dnsmasq, unbound: see .ci/run)
# Env:   REPS=3 DURATION=8 LAT_QPS=20000 LAT_SECS=3 FEED=0 TCP=1 BASELINE= ATTRIB=0
#        MISS=1 KNOT=1 NULLAUDIT=1 PIN=1 LOADS=
# Traffic stays on 127.0.0.1 (inside the namespace with FEED=1).
set -euo pipefail

REPS=${REPS:-3}
DURATION=${DURATION:-8}
LAT_QPS=${LAT_QPS:-20000}
LAT_SECS=${LAT_SECS:-3}
HOSTS=${HOSTS:-1000}
DENIED=${DENIED:-300000}

cd "$(dirname "$0")/.."
. benches/lib.sh
for tool in dnsperf dnsmasq unbound python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install dnsperf dnsmasq-base unbound)"; exit 2; }
done
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/allowdns

WORK=$(mktemp -d /tmp/allowdns-bench.XXXXXX)
PIDS=()
FEED=${FEED:-0}
NS=""
RUN=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  [ -n "$NS" ] && ip netns del "$NS" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
if [ "$FEED" = 1 ]; then
  NS=allowdns-bench-$$
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  RUN=(ip netns exec "$NS")
fi

UP=5300; ALLOWDNS=5301; DNSMASQ=5302; UNBOUND=5303; BASE=5304; NOATTR=5305; NULLAUDIT_PORT=5306; BASE_NULL=5307; ALLRATE=5308
MISS=${MISS:-1}
NULLAUDIT=${NULLAUDIT:-1}
if [ -z "${KNOT:-}" ]; then KNOT=0; command -v knotd >/dev/null && KNOT=1; fi
if [ -z "${PIN:-}" ]; then PIN=0; [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null && PIN=1; fi
SRV=(); CLI=()
if [ "$PIN" = 1 ]; then SRV=(taskset -c 0); CLI=(taskset -c 1); fi
ATTRIB=${ATTRIB:-0}
BASELINE=${BASELINE:-}

# --- data -------------------------------------------------------------------
mkdir -p "$WORK/zones" "$WORK/up"
{
  echo '$ORIGIN allowed.bench.'
  echo '$TTL 86400'
  echo '@ IN SOA ns.allowed.bench. h.allowed.bench. 1 3600 600 86400 300'
  echo '@ IN NS ns.allowed.bench.'
  echo 'ns IN A 127.0.0.1'
  # Documentation ranges: addresses the fence hands out (private ones it strips).
  nets=(192.0.2 198.51.100 203.0.113)
  for i in $(seq 1 "$HOSTS"); do echo "host$i IN A ${nets[i % 3]}.$((i / 3 % 256))"; done
  echo "*.miss IN A 192.0.2.250"
} > "$WORK/zones/allowed.bench.zone"
printf 'agent_name: upstream\nallowed_dynamic_resolution: ["*"]\n' > "$WORK/up/policy.yaml"
# The peers have no exfiltration budget; unique names under a wildcard would spend it.
printf 'agent_name: bench_agent\nallowed_dynamic_resolution: ["*.allowed.bench"]\nexfil: {budget: off}\n' > "$WORK/policy.yaml"
# The same policy, feeding the namespace's own sets.
printf 'agent_name: bench_agent\nallowed_dynamic_resolution: ["*.allowed.bench"]\nexfil: {budget: off}\nfirewall: {}\n' > "$WORK/feed.yaml"

python3 - "$WORK" "$HOSTS" "$DENIED" <<'PY'
import sys, random
work, hosts, denied = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
allowed = [f"host{i}.allowed.bench A" for i in range(1, hosts + 1)]
flood = [f"c{i:x}.t{i % 97}.tunnel.evil.example A" for i in range(denied)]
open(f"{work}/hits.txt", "w").write("\n".join(allowed) + "\n")
open(f"{work}/flood.txt", "w").write("\n".join(flood) + "\n")
rng = random.Random(1)
mix, d = [], 0
for i in range(denied):
    if i % 10 == 9:
        mix.append(f"m{d:x}.t{d % 89}.exfil.evil.example A"); d += 1
    else:
        mix.append(rng.choice(allowed))
open(f"{work}/mix.txt", "w").write("\n".join(mix) + "\n")
PY

# --- servers ----------------------------------------------------------------
wait_port() { for _ in $(seq 100); do "${RUN[@]}" dig +time=1 +tries=1 @127.0.0.1 -p "$1" host1.allowed.bench >/dev/null 2>&1 && return; sleep 0.1; done; echo "port $1 did not answer"; exit 1; }

# The upstream: knotd (or allowdns) answering the bench zone, allowing everything.
if [ "$KNOT" = 1 ]; then
  mkdir -p "$WORK/knot"
  knot_conf "$WORK" "$UP" allowed.bench > "$WORK/knot.conf"
  "${RUN[@]}" "${CLI[@]}" knotd -c "$WORK/knot.conf" 2>"$WORK/up.log" & PIDS+=($!); KNOT_PID=$!
else
  "${RUN[@]}" "${CLI[@]}" "$BIN" serve --listen 127.0.0.1:$UP --policy "$WORK/up/policy.yaml" --zones "$WORK/zones" \
    --upstream none --audit-log /dev/null 2>"$WORK/up.log" & PIDS+=($!)
fi
wait_port $UP

if [ "$FEED" = 1 ]; then
  # The sets allowdns and dnsmasq feed, with the ruleset a person would load.
  "$BIN" nft-ruleset --policy "$WORK/feed.yaml" --dns 127.0.0.1 > "$WORK/ruleset.nft"
  "${RUN[@]}" nft -f "$WORK/ruleset.nft"
  # dnsmasq gets a set of its own: sharing one would let its timeout-less
  # re-adds turn allowdns's elements permanent.
  "${RUN[@]}" nft add set inet allowdns dnsmasq_v4 '{ type ipv4_addr; flags timeout; }'
  "${RUN[@]}" "$BIN" serve --listen 127.0.0.1:$ALLOWDNS --policy "$WORK/feed.yaml" --upstream 127.0.0.1:$UP \
    --audit-log "$WORK/audit.jsonl" 2>"$WORK/allowdns.log" & PIDS+=($!); ALLOWDNS_PID=$!
  "${RUN[@]}" "$BIN" serve --listen 127.0.0.1:$UNBOUND --policy "$WORK/policy.yaml" --upstream 127.0.0.1:$UP \
    --audit-log "$WORK/audit-nofeed.jsonl" 2>"$WORK/allowdns-nofeed.log" & PIDS+=($!); UNBOUND_PID=$!
  "${RUN[@]}" dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll --bind-interfaces \
    --listen-address=127.0.0.1 --port=$DNSMASQ --address=/#/ --server=/allowed.bench/127.0.0.1#$UP \
    --nftset=/allowed.bench/4#inet#allowdns#dnsmasq_v4 \
    --cache-size=10000 --user=root --pid-file="$WORK/dnsmasq.pid" --log-facility="$WORK/dnsmasq.log" & PIDS+=($!); DNSMASQ_PID=$!
  servers=(allowdns-feed dnsmasq-nftset allowdns-nofeed)
  loads=(hits mix)
  if [ "$MISS" = 1 ]; then loads+=(miss); fi
elif [ "$ATTRIB" = 1 ]; then
  printf 'alerts:\n  attribution: false\n' > "$WORK/noattr.yaml"
  "${SRV[@]}" "$BIN" serve --listen 127.0.0.1:$ALLOWDNS --policy "$WORK/policy.yaml" --upstream 127.0.0.1:$UP \
    --audit-log "$WORK/audit.jsonl" 2>"$WORK/allowdns.log" & PIDS+=($!); ALLOWDNS_PID=$!
  "${SRV[@]}" "$BIN" serve --config "$WORK/noattr.yaml" --listen 127.0.0.1:$NOATTR --policy "$WORK/policy.yaml" \
    --upstream 127.0.0.1:$UP --audit-log "$WORK/audit-noattr.jsonl" 2>"$WORK/allowdns-noattr.log" & PIDS+=($!)
  NOATTR_PID=$!
  printf 'alerts:\n  attribution_rate: 100000\n' > "$WORK/allrate.yaml"
  "${SRV[@]}" "$BIN" serve --config "$WORK/allrate.yaml" --listen 127.0.0.1:$ALLRATE --policy "$WORK/policy.yaml" \
    --upstream 127.0.0.1:$UP --audit-log "$WORK/audit-allrate.jsonl" 2>"$WORK/allowdns-allrate.log" & PIDS+=($!)
  ALLRATE_PID=$!
  servers=(allowdns allowdns-noattr allowdns-allrate)
  loads=(hits flood)
else
"${SRV[@]}" "$BIN" serve --listen 127.0.0.1:$ALLOWDNS --policy "$WORK/policy.yaml" --upstream 127.0.0.1:$UP \
  --audit-log "$WORK/audit.jsonl" 2>"$WORK/allowdns.log" & PIDS+=($!); ALLOWDNS_PID=$!
if [ "$NULLAUDIT" = 1 ]; then
  "${SRV[@]}" "$BIN" serve --listen 127.0.0.1:$NULLAUDIT_PORT --policy "$WORK/policy.yaml" --upstream 127.0.0.1:$UP \
    --audit-log /dev/null 2>"$WORK/allowdns-null.log" & PIDS+=($!); NULL_PID=$!
fi
if [ -n "$BASELINE" ]; then
  "${SRV[@]}" "$BASELINE" serve --listen 127.0.0.1:$BASE --policy "$WORK/policy.yaml" --upstream 127.0.0.1:$UP \
    --audit-log "$WORK/audit-base.jsonl" 2>"$WORK/allowdns-base.log" & PIDS+=($!); BASE_PID=$!
  if [ "$NULLAUDIT" = 1 ]; then
    "${SRV[@]}" "$BASELINE" serve --listen 127.0.0.1:$BASE_NULL --policy "$WORK/policy.yaml" --upstream 127.0.0.1:$UP \
      --audit-log /dev/null 2>"$WORK/allowdns-base-null.log" & PIDS+=($!); BASE_NULL_PID=$!
  fi
fi

"${SRV[@]}" dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll --bind-interfaces \
  --listen-address=127.0.0.1 --port=$DNSMASQ --address=/#/ --server=/allowed.bench/127.0.0.1#$UP \
  --cache-size=10000 --user=root --pid-file="$WORK/dnsmasq.pid" --log-facility="$WORK/dnsmasq.log" & PIDS+=($!); DNSMASQ_PID=$!

unbound_conf "$WORK" "$UNBOUND" allowed.bench "$UP" > "$WORK/unbound.conf"
"${SRV[@]}" unbound -c "$WORK/unbound.conf" & PIDS+=($!); UNBOUND_PID=$!

  servers=(allowdns dnsmasq unbound)
  loads=(hits flood mix)
  if [ "$MISS" = 1 ]; then loads+=(miss); fi
  if [ "${TCP:-1}" = 1 ]; then loads+=(tcp1); fi
  if [ -n "$BASELINE" ]; then servers+=(allowdns-base); fi
  if [ "$NULLAUDIT" = 1 ]; then servers+=(allowdns-null); fi
  if [ "$NULLAUDIT" = 1 ] && [ -n "$BASELINE" ]; then servers+=(allowdns-base-null); fi
  if [ "$KNOT" = 1 ]; then servers+=(knotd); fi
fi
if [ -n "${LOADS:-}" ]; then read -ra loads <<< "$LOADS"; fi
PORTS="$ALLOWDNS $DNSMASQ $UNBOUND"
if [ "$NULLAUDIT" = 1 ] && [ "$FEED" != 1 ] && [ "$ATTRIB" != 1 ]; then PORTS="$PORTS $NULLAUDIT_PORT"; fi
if [ "$ATTRIB" = 1 ]; then PORTS="$ALLOWDNS $NOATTR $ALLRATE"; fi
if [ -n "$BASELINE" ] && [ "$FEED" != 1 ]; then PORTS="$PORTS $BASE"; fi
if [ -n "$BASELINE" ] && [ "$NULLAUDIT" = 1 ] && [ "$FEED" != 1 ] && [ "$ATTRIB" != 1 ]; then PORTS="$PORTS $BASE_NULL"; fi
for p in $PORTS; do wait_port $p; done
for p in $PORTS; do
  "${RUN[@]}" dnsperf -s 127.0.0.1 -p $p -d "$WORK/hits.txt" -n 2 -q 50 >/dev/null 2>&1
done

# --- runs -------------------------------------------------------------------
RESULTS="$WORK/results.tsv"
: > "$RESULTS"
port_of() { case $1 in allowdns|allowdns-feed) echo $ALLOWDNS;; dnsmasq|dnsmasq-nftset) echo $DNSMASQ;; unbound|allowdns-nofeed) echo $UNBOUND;; allowdns-base) echo $BASE;; allowdns-noattr) echo $NOATTR;; allowdns-allrate) echo $ALLRATE;; allowdns-null) echo $NULLAUDIT_PORT;; allowdns-base-null) echo $BASE_NULL;; knotd) echo $UP;; esac; }
# Unique allowed names, never asked before: every one is forwarded.
miss_names() { python3 -c 'import sys; p, n = sys.argv[1], int(sys.argv[2]); sys.stdout.write("".join(f"{p}{i:x}.miss.allowed.bench A\n" for i in range(n)))' "$1" "$2"; }

for rep in $(seq 1 "$REPS"); do
  for load in "${loads[@]}"; do
    # Rotate the order each repetition so no server always runs first.
    for k in "${!servers[@]}"; do
      s=${servers[$(( (k + rep) % ${#servers[@]} ))]}
      # knotd is authoritative for the bench zone only: the ceiling on hits.
      if [ "$s" = knotd ] && [ "$load" != hits ]; then continue; fi
      port=$(port_of "$s")
      data="$WORK/$load.txt"; lat_data=$data; how=(-c 8 -q 256)
      if [ "$load" = tcp1 ]; then data="$WORK/hits.txt"; lat_data=$data; how=(-m tcp -c 1 -q 100); fi
      if [ "$load" = miss ]; then
        data="$WORK/miss.txt"; lat_data="$WORK/miss-lat.txt"
        miss_names "r${rep}${s}q" $((DURATION * 60000)) > "$data"
        miss_names "r${rep}${s}l" $((LAT_SECS * LAT_QPS * 11 / 10)) > "$lat_data"
      fi
      qps=$("${RUN[@]}" "${CLI[@]}" dnsperf -s 127.0.0.1 -p "$port" -d "$data" -l "$DURATION" "${how[@]}" -T 1 2>&1 \
            | awk '/Queries per second/ {print $4}' || true)
      lat=$("${RUN[@]}" "${CLI[@]}" dnsperf -s 127.0.0.1 -p "$port" -d "$lat_data" -l "$LAT_SECS" -Q "$LAT_QPS" "${how[@]}" -T 1 -v 2>/dev/null \
            | awk '/^> / {print $NF}' | sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan nan"} else {print a[int(NR*0.5)+1]*1e6, a[int(NR*0.99)+1]*1e6}}' || true)
      # A peer that fails a pass (dnsmasq over pipelined TCP can) counts 0.
      printf '%s\t%s\t%s\t%s\t%s\n' "$s" "$load" "$rep" "${qps:-0}" "${lat:-nan nan}" >> "$RESULTS"
      echo "rep $rep $load $s: qps=$qps p50/p99(us)=$lat" >&2
    done
  done
done

python3 - "$RESULTS" "$REPS" "$DURATION" "$LAT_QPS" "${servers[@]}" <<'PY'
import sys, statistics as st
servers = sys.argv[5:]
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
reps, dur, lat_qps = sys.argv[2], sys.argv[3], sys.argv[4]
data = {}
for s, load, rep, qps, lat in rows:
    p50, p99 = lat.split()
    data.setdefault((load, s), []).append((float(qps or 0), float(p50), float(p99)))
print(f"\nmedian of {reps} interleaved runs; QPS saturated ({dur} s, 8 clients, 256 outstanding);")
print(f"latency p50/p99 at a fixed {lat_qps} QPS offered load; tcp1: 1 TCP connection, 100 outstanding\n")
print("| load | server | QPS | p50 µs | p99 µs |")
print("|---|---|---:|---:|---:|")
for load in ["hits", "flood", "mix", "miss", "tcp1"]:
    for s in servers:
        v = data.get((load, s), [])
        if not v: continue
        print(f"| {load} | {s} | {st.median(x[0] for x in v):,.0f} | {st.median(x[1] for x in v):.0f} | {st.median(x[2] for x in v):.0f} |")
PY
echo "audit records written by allowdns: $(wc -l < "$WORK/audit.jsonl")" >&2
if [ "$ATTRIB" = 1 ]; then
  for a in audit audit-allrate; do
    echo "$a: denials attributed: $(grep -c '"pid":' "$WORK/$a.jsonl"); not: $(grep -o '"owner_unknown":"[^"]*"' "$WORK/$a.jsonl" | sort | uniq -c | tr '\n' ' ')" >&2
  done
fi
for s in "${servers[@]}"; do
  case $(port_of "$s") in $ALLOWDNS) pid=$ALLOWDNS_PID;; $DNSMASQ) pid=$DNSMASQ_PID;; $BASE) pid=$BASE_PID;; $NOATTR) pid=$NOATTR_PID;; $ALLRATE) pid=$ALLRATE_PID;; $NULLAUDIT_PORT) pid=$NULL_PID;; $BASE_NULL) pid=$BASE_NULL_PID;; $UP) pid=$KNOT_PID;; *) pid=$UNBOUND_PID;; esac
  echo "$s memory after all runs: $(awk '/VmHWM|VmRSS/ {printf "%s %s kB  ", $1, $2}' "/proc/$pid/status")" >&2
done
if [ "$FEED" = 1 ]; then
  # One "elem" key names the list, one more per element.
  for set in allowed_v4 dnsmasq_v4; do
    # A set's element list is one "elem" key; each timed element is one more, each permanent one a bare string.
    echo "elements in $set: $("${RUN[@]}" nft -j list set inet allowdns $set | python3 -c 'import json,sys; d=json.load(sys.stdin); print(len([x for x in d["nftables"] if "set" in x][0]["set"].get("elem", [])))')" >&2
  done
  echo "firewall update failures logged: $(grep -c 'FIREWALL UPDATE FAILED' "$WORK/allowdns.log")" >&2
  echo "SERVFAIL answers from allowdns-feed: $(grep -c '"rcode":"SERVFAIL"' "$WORK/audit.jsonl")" >&2
fi
grep -h "records lost" "$WORK/allowdns.log" | tail -2 >&2 || true
