#!/usr/bin/env bash
# Restart benchmark: queries lost while allowdns restarts under load, with
# its sockets held (tests/data/holder.py plays systemd's allowdns.socket:
# it binds UDP and TCP once, passes them as LISTEN_FDS, and on "restart"
# stops allowdns with SIGTERM, runs `allowdns check`, and starts it again).
# dnsperf offers QPS queries a second over UDP (allowed names, cache hits
# after warm-up, and every tenth a unique denied name) for DURATION s;
# RESTARTS restarts are spread over the run. A query is lost when dnsperf
# gets no answer within its timeout (5 s). The kernel's UDP receive-buffer
# drops over the run are shown too (system-wide: other traffic counts).
# Each run is two passes: a control with no restart, then the restarts; a
# loss in the control means the machine could not serve QPS at all (lower
# it, or idle the machine), and says nothing about restarts.
#
# Usage: benches/restart.sh   (needs dnsperf, python3; knotd optional)
# Env:   QPS=20000 DURATION=12 RESTARTS=2 GAP=0 RUNS=1
#        BIN=target/release/allowdns (default: builds it)
# GAP: seconds between stopping allowdns and starting it again.
# Traffic stays on 127.0.0.1.
set -euo pipefail

QPS=${QPS:-20000}
DURATION=${DURATION:-12}
RESTARTS=${RESTARTS:-2}
GAP=${GAP:-0}
RUNS=${RUNS:-1}
HOSTS=1000

cd "$(dirname "$0")/.."
. benches/lib.sh
bench_start restart dnsperf python3

UP=5350; PORT=5351
mkdir -p "$WORK/zones" "$WORK/up"
{
  echo '$ORIGIN allowed.bench.'
  echo '$TTL 86400'
  echo '@ IN SOA ns.allowed.bench. h.allowed.bench. 1 3600 600 86400 300'
  echo '@ IN NS ns.allowed.bench.'
  echo 'ns IN A 127.0.0.1'
  for i in $(seq 1 $HOSTS); do echo "host$i IN A 192.0.2.$((i % 250 + 1))"; done
} > "$WORK/zones/allowed.bench.zone"
printf 'agent_name: upstream\nallowed_dynamic_resolution: ["*"]\n' > "$WORK/up/policy.yaml"
printf 'agent_name: bench_agent\nallowed_dynamic_resolution: ["*.allowed.bench"]\nexfil: {budget: off}\n' > "$WORK/policy.yaml"
python3 - "$WORK" "$HOSTS" "$QPS" "$DURATION" <<'PY'
import sys, random
work, hosts, qps, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(1)
lines = []
for i in range(qps * secs * 11 // 10):
    if i % 10 == 9:
        lines.append(f"r{i:x}.t{i % 89}.tunnel.evil.example A")
    else:
        lines.append(f"host{rng.randint(1, hosts)}.allowed.bench A")
open(f"{work}/load.txt", "w").write("\n".join(lines) + "\n")
open(f"{work}/warm.txt", "w").write("".join(f"host{i}.allowed.bench A\n" for i in range(1, hosts + 1)))
PY

start_upstream allowed.bench host1.allowed.bench

rcvbuf_errors() { awk '/^Udp:/ {n++; if (n == 1) for (i = 1; i <= NF; i++) col[$i] = i; else print $col["RcvbufErrors"]}' /proc/net/snmp; }
# "listening on" lines in allowdns's log (one per start).
starts() { grep -c "listening on" "$WORK/holder.log" || true; }

for pass in $(seq 1 $((RUNS * 2))); do
  run=$(( (pass + 1) / 2 ))
  if [ $((pass % 2)) = 1 ]; then kind=control; restarts=0; else kind=restarts; restarts=$RESTARTS; fi
  : > "$WORK/holder.log"
  mkfifo "$WORK/control"
  "${SRV[@]}" python3 tests/data/holder.py $PORT "$GAP" "$BIN" serve --listen 127.0.0.1:$PORT \
    --policy "$WORK/policy.yaml" --upstream 127.0.0.1:$UP --audit-log "$WORK/audit.jsonl" \
    < "$WORK/control" > /dev/null 2>"$WORK/holder.log" & PIDS+=($!)
  exec 7>"$WORK/control"
  for _ in $(seq 100); do [ "$(starts)" -ge 1 ] && break; sleep 0.1; done
  wait_port "$PORT" host1.allowed.bench
  dnsperf -s 127.0.0.1 -p $PORT -d "$WORK/warm.txt" -n 2 -q 50 >/dev/null 2>&1
  before=$(rcvbuf_errors)
  # Outstanding queries allowed: every query of a restart's gap (the kernel
  # queues them), so dnsperf keeps offering QPS throughout.
  "${CLI[@]}" dnsperf -s 127.0.0.1 -p $PORT -d "$WORK/load.txt" -l "$DURATION" -Q "$QPS" -c 8 -q 60000 -T 1 \
    > "$WORK/dnsperf.txt" 2>&1 & perf=$!
  # Restarts spread evenly over the run, none in its first or last second.
  for r in $(seq 1 "$restarts"); do
    sleep "$(python3 -c "print($DURATION / ($restarts + 1))")"
    t0=$(date +%s.%N)
    echo restart >&7
    for _ in $(seq 300); do [ "$(starts)" -ge $((r + 1)) ] && break; sleep 0.01; done
    echo "run $run restart $r: started again after $(python3 -c "import time; print(f'{time.time() - $t0:.2f}')") s" >&2
  done
  wait "$perf"
  after=$(rcvbuf_errors)
  exec 7>&-
  wait "${PIDS[-1]}" || true
  rm -f "$WORK/control"
  sent=$(awk '/Queries sent/ {print $3}' "$WORK/dnsperf.txt")
  lost=$(awk '/Queries lost/ {print $3}' "$WORK/dnsperf.txt")
  printf 'run %s, %s: %s queries sent (%s QPS offered) over %s s, %s restarts (%s starts seen): %s lost; UDP receive-buffer drops (system-wide) %s\n' \
    "$run" "$kind" "$sent" "$QPS" "$DURATION" "$restarts" "$(starts)" "$lost" "$((after - before))"
  # Each gap: from the old allowdns's "SIGTERM received" to the new one's "listening on".
  python3 - "$WORK/holder.log" <<'PY'
import re, sys
from datetime import datetime
stamp = re.compile(r"^(\d{4}-\d\d-\d\dT[\d:.]+)Z .*(SIGTERM received|listening on)")
term, gaps = None, []
for line in open(sys.argv[1], errors="replace"):
    m = stamp.match(line)
    if not m:
        continue
    t = datetime.fromisoformat(m.group(1))
    if m.group(2) == "SIGTERM received":
        term = t
    elif term is not None:
        gaps.append((t - term).total_seconds() * 1000)
        term = None
if gaps:
    print("  gaps (SIGTERM to listening again): " + ", ".join(f"{g:.0f} ms" for g in gaps))
PY
  if [ -n "${LOG:-}" ]; then cp "$WORK/holder.log" "$LOG.$pass"; fi
done
