# Pieces the bench scripts share; sourced (`. benches/lib.sh`), not run.

# knot_conf WORK PORT ZONE: knotd serving $WORK/zones/ZONE.zone
# authoritatively on 127.0.0.1@PORT, one background worker, warnings logged.
knot_conf() {
  cat <<CONF
server:
    listen: 127.0.0.1@$2
    rundir: "$1/knot"
    background-workers: 1
database:
    storage: "$1/knot"
log:
  - target: "$1/knot.log"
    any: warning
zone:
  - domain: $3
    file: "$1/zones/$3.zone"
CONF
}

# unbound_conf WORK PORT ZONE UPSTREAM_PORT: unbound on 127.0.0.1@PORT, two
# threads, forwarding ZONE to 127.0.0.1@UPSTREAM_PORT and answering NXDOMAIN
# for every other name (the peer of an allowlist of ZONE).
unbound_conf() {
  cat <<CONF
server:
  interface: 127.0.0.1
  port: $2
  num-threads: 2
  so-reuseport: yes
  do-daemonize: no
  use-syslog: no
  logfile: "$1/unbound.log"
  chroot: ""
  username: ""
  directory: "$1"
  pidfile: "$1/unbound.pid"
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "iterator"
  qname-minimisation: no
  local-zone: "." always_nxdomain
  local-zone: "$3." transparent
forward-zone:
  name: "$3."
  forward-addr: 127.0.0.1@$4
CONF
}

# bench_start NAME TOOL...: exits 2 unless every TOOL is installed; builds
# the release binary unless BIN names one; pins servers (SRV) to CPU 0 and
# clients (CLI) to CPU 1 when PIN (default: on 2 or more CPUs); makes WORK,
# and on exit ends every process in PIDS and removes WORK.
bench_start() {
  local name=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install dnsperf unbound knot python3)"; exit 2; }
  done
  if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
    BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/allowdns
  fi
  if [ -z "${PIN:-}" ]; then PIN=0; [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null && PIN=1; fi
  SRV=(); CLI=()
  if [ "$PIN" = 1 ]; then SRV=(taskset -c 0); CLI=(taskset -c 1); fi
  WORK=$(mktemp -d "/tmp/allowdns-$name.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

# wait_port PORT NAME: until a server on 127.0.0.1:PORT answers NAME (10 s).
wait_port() {
  for _ in $(seq 100); do
    dig +time=1 +tries=1 @127.0.0.1 -p "$1" "$2" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "port $1 did not answer"
  exit 1
}

# start_upstream ZONE NAME: the authoritative upstream for $WORK/zones/ZONE.zone
# on 127.0.0.1:$UP (knotd when installed, else allowdns serving the zone
# under $WORK/up/policy.yaml), on the clients' CPU; waits until NAME answers.
start_upstream() {
  if command -v knotd >/dev/null; then
    mkdir -p "$WORK/knot"
    knot_conf "$WORK" "$UP" "$1" > "$WORK/knot.conf"
    "${CLI[@]}" knotd -c "$WORK/knot.conf" 2>"$WORK/up.log" & PIDS+=($!)
  else
    "${CLI[@]}" "$BIN" serve --listen 127.0.0.1:"$UP" --policy "$WORK/up/policy.yaml" --zones "$WORK/zones" \
      --upstream none --audit-log /dev/null 2>"$WORK/up.log" & PIDS+=($!)
  fi
  wait_port "$UP" "$2"
}
