#!/usr/bin/env bash
# Idle and loaded RSS/CPU of one allowdns with a small policy and a local zone.
set -euo pipefail
bin=${1:-target/release/allowdns}
d=$(mktemp -d); trap 'kill $pid 2>/dev/null; rm -rf $d' EXIT
mkdir $d/zones
printf '$ORIGIN m.test.\n$TTL 60\n@ IN SOA ns. h. 1 3600 600 86400 5\nok IN A 192.0.2.1\n' > $d/zones/m.test.zone
printf 'agent_name: m\nexpected_outbound:\n  - destination: ok.m.test\n  - destination: "*.example.org"\n' > $d/p.yaml
for i in $(seq 1 10); do echo "ok.m.test A"; echo "x$i.denied.test A"; done > $d/q.txt
$bin serve --listen 127.0.0.1:5399 --policy $d/p.yaml --zones $d/zones --upstream none --audit-log $d/audit.jsonl 2>$d/err &
pid=$!
for i in $(seq 50); do grep -q "listening on" $d/err && break; sleep 0.1; done
sleep 2
cpu() { awk '{print $14+$15}' /proc/$pid/stat; }
echo "idle: rss_kb=$(ps -o rss= -p $pid) threads=$(ls /proc/$pid/task | wc -l) cpu_ticks=$(cpu)"
c0=$(cpu); sleep 10; echo "idle 10s: cpu_ticks_used=$(( $(cpu) - c0 ))"
c0=$(cpu)
dnsperf -s 127.0.0.1 -p 5399 -d $d/q.txt -l 10 -Q 1000 -c 1 2>&1 | grep -E "Queries sent|Queries completed|Queries lost|Run time"
echo "after 10s at 1000 qps: rss_kb=$(ps -o rss= -p $pid) cpu_ticks_used=$(( $(cpu) - c0 )) (ticks are 1/$(getconf CLK_TCK) s)"
echo "audit lines: $(wc -l < $d/audit.jsonl)"
