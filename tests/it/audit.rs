//! Audit records and alerts, read from the real binary's outputs.

use crate::common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

#[test]
fn one_audit_record_per_query_and_the_alert_users_expect() {
    let up = Upstream::start(
        "127.0.0.13",
        0,
        &[
            data("upstream/allowed.test.zone"),
            data("upstream/other.test.zone"),
            data("upstream/third.test.zone"),
        ],
    );
    let dir = TempDir::new("audit");
    let log = dir.0.join("audit.jsonl");
    let upstream = up.addr.to_string();
    let policy = data("policy.yaml");
    let dns = Allowdns::upstream_audit(&upstream, &policy, &log, &[]);

    assert_rcode(dns.udp, "www.allowed.test A", ResponseCode::NoError);
    assert_rcode(dns.udp, "hop.other.test A", ResponseCode::NoError);
    assert_rcode(
        dns.udp,
        "sketchy-mirror.example.com A",
        ResponseCode::NXDomain,
    );
    let refused = query_from(dns.udp, "www.allowed.test", RecordType::A, "127.0.0.2");
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    // A flood of unique denied names: every one audited, a few alerts.
    for i in 0..300 {
        query(
            dns.udp,
            &format!("chunk{i}.tunnel.example"),
            RecordType::TXT,
        );
    }
    let (status, stderr) = dns.terminate();
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status:?}\n{stderr}"
    );

    let records = read_audit(&log);
    assert_eq!(
        records.len(),
        4 + 300,
        "one record per query, flushed on SIGTERM"
    );

    let www = &records[0];
    assert_eq!(www["decision"], "allow");
    assert_eq!(www["agent"], "test_agent");
    assert_eq!(www["qname"], "www.allowed.test");
    assert_eq!(www["qtype"], "A");
    assert_eq!(www["rule"], "www.allowed.test");
    assert_eq!(www["dynamic"], false);
    assert_eq!(www["rcode"], "NOERROR");
    assert_eq!(www["answers"][0]["name"], "www.allowed.test");
    assert_eq!(www["answers"][0]["type"], "A");
    assert_eq!(www["answers"][0]["ttl"], 300);
    assert_eq!(www["answers"][0]["data"], "192.0.2.1");
    assert!(www["upstream_ms"].as_f64().unwrap() > 0.0);
    assert!(www["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    let ts = www["ts"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.contains('T'), "RFC 3339 UTC: {ts}");

    let hop = &records[1];
    assert_eq!(hop["decision"], "allow");
    assert_eq!(hop["dynamic"], true);
    assert_eq!(hop["rule"], "*.other.test");
    assert_eq!(
        hop["answers"].as_array().unwrap().len(),
        2,
        "CNAME and the A behind it"
    );

    let denied = &records[2];
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["rule"], serde_json::Value::Null);
    assert_eq!(denied["rcode"], "NXDOMAIN");
    assert_eq!(denied["upstream_ms"], serde_json::Value::Null);
    assert_eq!(denied["answers"].as_array().unwrap().len(), 0);

    let refused = &records[3];
    assert_eq!(refused["decision"], "refused");
    assert_eq!(refused["agent"], serde_json::Value::Null);
    assert_eq!(refused["rcode"], "REFUSED");
    assert!(
        refused["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.2:")
    );

    assert!(records[4..].iter().all(|r| r["decision"] == "deny"));

    // The alert, in the shape users expect.
    let alert_at = stderr
        .find("[!] UNEXPECTED DNS LOOKUP")
        .expect("alert printed");
    let alert: Vec<&str> = stderr[alert_at..].lines().take(10).collect();
    assert!(
        alert[1].starts_with("Timestamp: ") && alert[1].ends_with('Z'),
        "{alert:?}"
    );
    assert_eq!(alert[2], "Agent: test_agent");
    assert!(alert[3].starts_with("Client: 127.0.0.1:"), "{alert:?}");
    // Who asked (this test): named, or why not (docs/attribution.md).
    assert!(alert[4].starts_with("PID: "), "{alert:?}");
    let query = alert.iter().position(|l| l.starts_with("Query: ")).unwrap();
    assert_eq!(alert[query], "Query: sketchy-mirror.example.com A");
    assert_eq!(alert[query + 1], "Action: NXDOMAIN");
    assert_eq!(
        alert[query + 2],
        "Rule Matched: NONE - name not in allow-list"
    );
    // Five names in full (the first four of the flood), the rest summed up.
    assert_eq!(
        stderr.matches("UNEXPECTED DNS LOOKUP").count(),
        5,
        "the flood was aggregated:\n{stderr}"
    );
    assert_has(
        &stderr,
        "[!] ... and 296 more denied lookups from 127.0.0.1 (agent test_agent)",
    );
    assert_eq!(
        up.names().iter().filter(|n| n.contains("tunnel")).count(),
        0
    );
}

/// A type without a mnemonic keeps its number (RFC 3597), in the audit
/// record and the alert: a tunnel through private-use types is told apart.
#[test]
fn a_private_use_type_keeps_its_number() {
    let up = Upstream::start("127.0.0.13", 0, &[data("upstream/allowed.test.zone")]);
    let dir = TempDir::new("audit-type");
    let log = dir.0.join("audit.jsonl");
    let dns = Allowdns::upstream_audit(&up.addr.to_string(), &data("policy.yaml"), &log, &[]);
    let reply = query(dns.udp, "c2.private.example", RecordType::Unknown(65280));
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    let (_, stderr) = dns.terminate();
    let records = read_audit(&log);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["qtype"], "TYPE65280");
    assert!(
        stderr.contains("Query: c2.private.example TYPE65280"),
        "{stderr}"
    );
}

/// Runs tests/data/ask.py; returns its PID.
fn ask(host: &str, port: u16, name: &str, mode: &str) -> u32 {
    let mut child = std::process::Command::new("python3")
        .arg(data("ask.py"))
        .args([host, &port.to_string(), name, mode])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(status.success(), "ask.py {host} {name} {mode}");
    pid
}

fn signal(pid: u32, sig: &str) {
    let sent = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// On loopback, IPv4 and IPv6: the denied lookup's audit record and alert
/// name the process that asked; one that is gone before allowdns looks is
/// `unknown (exited)`, never a guess.
#[test]
fn a_denied_lookup_names_its_process_or_says_it_exited() {
    let dir = TempDir::new("attribution");
    let zones = dir.0.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    let policy = data("policy.yaml");
    let log4 = dir.0.join("audit4.jsonl");
    let log6 = dir.0.join("audit6.jsonl");
    // Here allowdns searches every process of the host (a debug build, on a
    // machine shared with builds): a generous budget, so the test is about
    // naming, not speed (docs/attribution.md has the release numbers).
    let config = dir.write("allowdns.yaml", "alerts:\n  attribution_budget_ms: 1000\n");
    let serve = |listen: &str, log: &std::path::Path| {
        Allowdns::offline_audit(
            &policy,
            &zones,
            log,
            &["--config", config.to_str().unwrap(), "--listen", listen],
        )
    };
    let dns = serve("127.0.0.1:0", &log4);
    let dns6 = serve("[::1]:0", &log6);

    // A real client, still there while allowdns looks.
    let port = dns.udp.port().to_string();
    let mut dig = std::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port, "+tries=1", "+time=3"])
        .arg("dig.denied.example")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("dig");
    let dig_pid = dig.id();
    dig.wait().unwrap();
    let r = &audit_for(&log4, "dig.denied.example", 1)[0];
    assert_eq!(r["pid"], dig_pid, "{r}");
    assert_eq!(r["host_pid"], dig_pid, "{r}");
    assert_eq!(r["comm"], "dig", "{r}");
    assert!(r["exe"].as_str().unwrap().ends_with("/dig"), "{r}");
    let ours = std::process::id();
    assert!(
        r["parents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["host_pid"] == ours),
        "the test, which started dig, is among its parents: {r}"
    );
    dns.wait_for("Query: dig.denied.example", 1);
    let stderr = dns.stderr();
    assert_has(
        &stderr,
        &format!("\nPID: {dig_pid}\nCommand: dig @127.0.0.1 -p {port} "),
    );

    // IPv6: the same, by a python client that waits for its answer.
    let pid = ask("::1", dns6.udp.port(), "v6.denied.example", "wait");
    let r = &audit_for(&log6, "v6.denied.example", 1)[0];
    assert_eq!(r["pid"], pid, "{r}");
    assert!(
        r["cmdline"].as_str().unwrap().contains("ask.py ::1 "),
        "{r}"
    );

    // Positive control for what follows: the sender that leaves at once is
    // named when allowdns reads its question at once.
    let pid = ask("127.0.0.1", dns.udp.port(), "quick.denied.example", "wait");
    let r = &audit_for(&log4, "quick.denied.example", 1)[0];
    assert_eq!(r["pid"], pid, "{r}");

    // Gone before allowdns looks: allowdns is stopped while the question
    // is sent and its sender exits, then continued.
    signal(dns.pid(), "-STOP");
    ask("127.0.0.1", dns.udp.port(), "gone.denied.example", "leave");
    signal(dns.pid(), "-CONT");
    let r = &audit_for(&log4, "gone.denied.example", 1)[0];
    assert_eq!(r["owner_unknown"], "exited", "{r}");
    assert!(r.get("pid").is_none(), "never a guess: {r}");
}

/// A flood of unique denied names past `alerts.attribution_rate`: the
/// denials alerted in full still name their process, the others within the
/// rate too, and the rest say `unknown (rate limited)`, never a guess.
#[test]
fn a_denied_flood_past_the_attribution_rate_is_rate_limited_not_guessed() {
    let dir = TempDir::new("attribution-rate");
    let zones = dir.0.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    let policy = data("policy.yaml");
    let serve = |config: &str, log: &std::path::Path| {
        let config = dir.write(&format!("{config}.yaml"), config);
        Allowdns::offline_audit(
            &policy,
            &zones,
            log,
            &["--config", config.to_str().unwrap()],
        )
    };
    // One socket, 40 unique denied names, each answered before the next;
    // or, as a burst, all sent before the first answer is read.
    const NAMES: usize = 40;
    let flood = |port: u16, burst: bool| -> u32 {
        let answers = if burst { "for i in range(N):\n" } else { "" };
        let script = format!(
            "import socket, struct\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(5)\nN = {NAMES}\nfor i in range(N):\n    q = struct.pack('>HHHHHH', i, 0x0100, 1, 0, 0, 0)\n    q += b''.join(bytes([len(l)]) + l.encode() for l in f'n{{i}}.flood.denied.example'.split('.')) + b'\\0' + struct.pack('>HH', 1, 1)\n    s.sendto(q, ('127.0.0.1', {port}))\n{answers}    assert s.recv(512)[3] & 15 == 3\n"
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .spawn()
            .expect("python3");
        let pid = child.id();
        assert!(child.wait().unwrap().success(), "the flood script failed");
        pid
    };
    let flood_records = |log: &std::path::Path| {
        audit_where(log, NAMES, |r| {
            r["qname"].as_str().is_some_and(|q| q.contains(".flood."))
        })
    };

    // Positive control: within the default rate, every denial is named.
    let log = dir.0.join("default.jsonl");
    let dns = serve("alerts:\n  attribution_budget_ms: 1000\n", &log);
    let pid = flood(dns.udp.port(), false);
    let records = flood_records(&log);
    assert_eq!(records.len(), NAMES);
    assert!(records.iter().all(|r| r["pid"] == pid), "{records:?}");
    drop(dns);

    // A rate of 2 a second: the 5 alerted in full and about 2 more named;
    // as many when the names come in one burst, all held at once.
    for burst in [false, true] {
        let log = dir.0.join(format!("limited-{burst}.jsonl"));
        let dns = serve(
            "alerts:\n  attribution_budget_ms: 1000\n  attribution_rate: 2\n",
            &log,
        );
        let started = std::time::Instant::now();
        let pid = flood(dns.udp.port(), burst);
        let took = started.elapsed().as_secs() as usize;
        let records = flood_records(&log);
        assert_eq!(records.len(), NAMES, "every denial is audited");
        // The first 5 distinct names of the window are alerted in full:
        // named, whatever the rate (it holds 2). In a burst, the serving
        // threads may take them in another order: any 5.
        if !burst {
            let alerted: Vec<_> = (0..5)
                .map(|i| format!("n{i}.flood.denied.example"))
                .collect();
            let first = records
                .iter()
                .filter(|r| alerted.iter().any(|n| r["qname"] == **n));
            assert!(
                first.clone().count() == 5 && first.clone().all(|r| r["pid"] == pid),
                "the alerted ones: {:?}",
                first.collect::<Vec<_>>()
            );
        }
        let named = records.iter().filter(|r| r["pid"] == pid).count();
        let limited = records
            .iter()
            .filter(|r| r["owner_unknown"] == "rate limited" && r.get("pid").is_none())
            .count();
        assert_eq!(named + limited, NAMES, "named or rate limited: {records:?}");
        assert!(
            (5..=5 + 2 + 2 * (took + 1)).contains(&named),
            "burst {burst}: {named} named in {took} s: {records:?}"
        );
        // The 5 alerts name it.
        dns.wait_for(&format!("\nPID: {pid}\nCommand: "), 5);
        assert_has(&dns.stderr(), "python3 -c import socket");
    }
}

/// More held denials at once than the lookups queue takes (256): the rest
/// are answered and audited at once, `over budget`, never waiting on /proc
/// on the serving thread. Each is answered once and audited once.
#[test]
fn a_burst_past_the_lookups_queue_is_answered_and_audited_at_once() {
    let dir = TempDir::new("held-burst");
    let zones = dir.0.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    let log = dir.0.join("audit.jsonl");
    let config = dir.write(
        "config.yaml",
        "alerts:\n  attribution_budget_ms: 1000\n  attribution_rate: 100000\n",
    );
    let dns = Allowdns::offline_audit(
        &data("policy.yaml"),
        &zones,
        &log,
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    // All sent at once; the replies drained as they come, into a buffer
    // large enough to lose none. Prints how many came back.
    const NAMES: usize = 3000;
    let script = format!(
        "import socket, struct, threading, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)
s.settimeout(3)
got = []
def drain():
    try:
        while True:
            got.append(s.recv(512))
    except socket.timeout:
        pass
t = threading.Thread(target=drain)
for i in range({NAMES}):
    q = struct.pack('>HHHHHH', i, 0x0100, 1, 0, 0, 0)
    q += b''.join(bytes([len(l)]) + l.encode() for l in f'n{{i}}.burst.denied.example'.split('.')) + b'\\0' + struct.pack('>HH', 1, 1)
    s.sendto(q, ('127.0.0.1', {port}))
    if i == 0:
        t.start()
t.join()
assert all(r[3] & 15 == 3 for r in got), 'all NXDOMAIN'
print(len(got))
",
        port = dns.udp.port()
    );
    let child = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the burst script failed");
    let answered: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let metrics = dns.scrape("/metrics");
    let full: u64 = series_value(&metrics, "allowdns_attribution_queue_full_total");
    assert!(full > 0, "the queue never filled: {metrics}");
    assert_eq!(answered, NAMES, "every question answered");
    let records = audit_where(&log, answered, |r| {
        r["qname"].as_str().is_some_and(|q| q.contains(".burst."))
    });
    assert_eq!(records.len(), answered, "one record per answer");
    let names: std::collections::HashSet<_> = records.iter().map(|r| r["qname"].clone()).collect();
    assert_eq!(names.len(), NAMES, "each question audited once");
    let named = records.iter().filter(|r| r["pid"] == pid).count();
    let unlooked = records
        .iter()
        .filter(|r| r["owner_unknown"] == "over budget")
        .count();
    assert_eq!(named + unlooked, NAMES, "named, or said why not");
    assert!(
        named >= 256 && unlooked as u64 >= full,
        "{named} named, {unlooked} not looked up, {full} past the queue"
    );
}

/// A process holding a great many fds cannot make one lookup outlast
/// `alerts.attribution_budget_ms`: the search stops at the budget, inside
/// the process's fd list too, and the record says `over budget`. (Without
/// the check per fd, its socket, listed last, was found after the whole
/// list: a lookup as slow as the attacker liked, on the serving path.)
#[test]
fn a_process_holding_many_fds_cannot_stretch_a_lookup_past_its_budget() {
    let dir = TempDir::new("fd-budget");
    let zones = dir.0.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    let log = dir.0.join("audit.jsonl");
    let config = dir.write("config.yaml", "alerts:\n  attribution_budget_ms: 5\n");
    let dns = Allowdns::offline_audit(
        &data("policy.yaml"),
        &zones,
        &log,
        &["--config", config.to_str().unwrap()],
    );
    // Holds up to `fds` duplicates of a directory 400 levels deep (each
    // readlink spells the whole path: slow), within the fd limit it may
    // raise to; then asks from a socket opened after them, the last in its
    // fd list.
    let deep = dir.0.join("deep");
    let ask_holding = |fds: u32, name: &str| -> u32 {
        let script = format!(
            "import os, resource, socket, struct
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
path = '{deep}' + '/d' * 400
os.makedirs(path, exist_ok=True)
d = os.open(path, os.O_RDONLY)
held = [os.dup(d) for _ in range(min({fds}, hard - 64))]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
q = struct.pack('>HHHHHH', 7, 0x0100, 1, 0, 0, 0)
q += b''.join(bytes([len(l)]) + l.encode() for l in '{name}'.split('.')) + b'\\0' + struct.pack('>HH', 1, 1)
s.sendto(q, ('127.0.0.1', {port}))
assert s.recv(512)[3] & 15 == 3
",
            deep = deep.display(),
            port = dns.udp.port()
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .spawn()
            .expect("python3");
        let pid = child.id();
        assert!(child.wait().unwrap().success(), "the asking script failed");
        pid
    };
    // Positive control: the same asker with few fds is named.
    let pid = ask_holding(0, "few.fds.denied.example");
    let r = &audit_for(&log, "few.fds.denied.example", 1)[0];
    assert_eq!(r["pid"], pid, "{r}");
    ask_holding(1_000_000, "many.fds.denied.example");
    let r = &audit_for(&log, "many.fds.denied.example", 1)[0];
    assert_eq!(r["owner_unknown"], "over budget", "{r}");
    assert!(r.get("pid").is_none(), "{r}");
}
