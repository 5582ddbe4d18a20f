#!/usr/bin/env python3
"""Writes a synthetic allowdns audit log in the exact schema
(src/observe/audit/schema.rs), for benches/report.sh.

Usage: report_log.py OUT RECORDS MODE
  MODE realistic: one agent; ~2,000 allowed names with answers (most
        lookups), denied names with the asking process, a DNS tunnel of
        unique names under one domain, would_deny, exfiltration marks,
        stripped addresses, egress_denied, grants, reloads, expiries.
  MODE learn: as realistic, in learn mode: the allowed names are
        would_deny, and no tunnel (so the report runs `suggest` too).
  MODE flood: every record a denied lookup of a unique name under a
        unique registrable domain (the worst case for the report's maps).
"""
import json
import random
import sys
from datetime import datetime, timedelta, timezone

out, total, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(20)
start = datetime(2026, 11, 22, 0, 0, tzinfo=timezone.utc)
step = timedelta(seconds=86400 / total)  # one day


def ts(i):
    return (start + step * i).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record(i, qname, decision, rule=None, answers=(), rcode="NOERROR", **extra):
    r = {
        "ts": ts(i),
        "client": "10.200.1.2:%d" % (40000 + i % 20000),
        "transport": "udp",
        "agent": "travel_agent_v1",
        "qname": qname,
        "qtype": "A",
        "decision": decision,
        "rule": rule,
        "dynamic": False,
        "rcode": rcode,
        "answers": [
            {"name": qname, "type": "A", "ttl": 300, "data": a} for a in answers
        ],
        "upstream_ms": round(rng.uniform(0.5, 40), 3) if answers else None,
    }
    r.update(extra)
    return r


OWNER = {
    "pid": 7,
    "host_pid": 412233,
    "comm": "python3",
    "exe": "/usr/bin/python3.12",
    "cmdline": "python3 /opt/agent/main.py --task travel",
    "parents": [{"pid": 1, "host_pid": 412230, "cmdline": "sh -c python3 /opt/agent/main.py"}],
}
allowed = ["host%d.svc%d.company-internal.com" % (n, n % 40) for n in range(2000)]
denied = ["mirror%d.sketchy%d.example" % (n, n % 50) for n in range(300)]

events = {}
if mode in ("realistic", "learn"):
    for k, i in enumerate(range(total // 10, total, total // 10)):
        events[i] = {"ts": ts(i), "event": "reload", "changes": ["travel_agent_v1: +%d entries" % k], "zones": 3}
    g = {"agent": "travel_agent_v1", "pattern": "*.vendor.example", "reason": "INC-4711",
         "granted_at": ts(total // 3)[:19] + "Z", "expires": ts(total // 2)[:19] + "Z", "uid": 0, "revoked_by": None}
    events[total // 3] = dict({"ts": ts(total // 3), "event": "grant"}, **g)
    events[total // 2] = dict({"ts": ts(total // 2), "event": "grant_expired"}, **g)
    events[2 * total // 3] = {"ts": ts(2 * total // 3), "event": "entry_expired", "agent": "travel_agent_v1",
                              "entry": "old.company-internal.com", "file": "/etc/allowdns/policies/p.yaml",
                              "expires": ts(2 * total // 3)[:19] + "Z"}

with open(out, "w") as f:
    for i in range(total):
        if i in events:
            f.write(json.dumps(events[i], separators=(",", ":")) + "\n")
            continue
        if mode == "flood":
            r = record(i, "x%d.d%d.example" % (i, i), "deny", rcode="NXDOMAIN", **OWNER)
        else:
            roll = rng.random()
            learn = mode == "learn"
            if roll < 0.85 or (learn and 0.92 <= roll < 0.97):
                name = allowed[int(rng.paretovariate(1.2)) % len(allowed)]
                extra = {}
                if roll < 0.002:
                    extra["stripped"] = ["169.254.169.254"]
                if 0.002 <= roll < 0.004:
                    extra["exfil"] = "soft"
                r = record(i, name, "would_deny" if learn else "allow",
                           None if learn else "*.company-internal.com",
                           ["192.0.2.%d" % (hash(name) % 250)], **extra)
            elif roll < 0.92:
                r = record(i, rng.choice(denied), "deny", rcode="NXDOMAIN", **OWNER)
            elif roll < 0.97:
                r = record(i, "%016x.t.tunnel.example" % rng.getrandbits(64), "deny", rcode="NXDOMAIN", **OWNER)
            elif roll < 0.995:
                r = record(i, "api%d.learned.example.org" % (i % 30), "would_deny",
                           answers=["198.51.100.%d" % (i % 250)])
            else:
                e = {"ts": ts(i), "event": "egress_denied", "agent": "travel_agent_v1", "action": "blocked",
                     "client": "10.200.1.2:50000", "addr": "203.0.113.%d" % (i % 20), "port": 443,
                     "proto": "tcp", "resolved": None, "rule": None}
                e.update(OWNER)
                f.write(json.dumps(e, separators=(",", ":")) + "\n")
                continue
        f.write(json.dumps(r, separators=(",", ":")) + "\n")
