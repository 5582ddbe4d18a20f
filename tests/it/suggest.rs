//! `allowdns suggest`: from an audit log to a policy that `check` accepts,
//! run through the real binary.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use allowdns::observe::audit::schema::{Event, EventLine, Millis, QueryRecord, RecordsLost};
use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

/// Runs the binary; (exit code, stdout, stderr).
fn allowdns(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check` must accept the policy alone, with no warnings at all.
fn assert_checks_clean(policy: &Path, agent: &str) {
    let (ok, stdout, stderr) = check_policy(policy);
    assert!(ok, "{stdout}{stderr}");
    assert_lacks(&stderr, "warning");
    assert_has(&stdout, &format!("agent '{agent}'"));
}

/// One query record as the writer would write it, built from the audit schema.
fn record(ts: &str, client: &str, agent: &str, qname: &str, decision: &str, rcode: &str) -> String {
    let record = QueryRecord {
        ts: ts.into(),
        client: client.into(),
        transport: "udp".into(),
        agent: Some(agent.into()),
        qname: Some(qname.into()),
        qtype: Some("A".into()),
        decision: serde_json::from_value(serde_json::json!(decision)).unwrap(),
        rule: None,
        dynamic: false,
        rcode: rcode.into(),
        answers: Vec::new(),
        stripped: Vec::new(),
        upstream_ms: Some(Millis(1.25)),
        exfil: None,
        owner: Default::default(),
    };
    serde_json::to_string(&record).unwrap() + "\n"
}

/// The uncommented destinations of a policy, unquoted.
fn destinations(policy: &str) -> Vec<String> {
    policy
        .lines()
        .filter_map(|l| l.strip_prefix("  - destination: \""))
        .map(|l| l[..l.find('"').unwrap()].to_string())
        .collect()
}

/// A log of `(qname, decision)` lookups by agent `a`.
fn log_of(lookups: &[(&str, &str)]) -> String {
    lookups
        .iter()
        .enumerate()
        .map(|(i, (qname, decision))| {
            record(
                &format!("2026-11-22T01:{:02}:{:02}.000000Z", i / 60 % 60, i % 60),
                "10.200.1.2:40000",
                "a",
                qname,
                decision,
                "NOERROR",
            )
        })
        .collect()
}

/// Suggests from `log` with extra `args`; (exit code, policy, stderr).
fn suggest_from(dir: &TempDir, log: &str, args: &[&str]) -> (i32, String, String) {
    let log = dir.write("audit.jsonl", log);
    let mut all = vec!["suggest", "--audit-log", log.to_str().unwrap()];
    all.extend(args);
    allowdns(&all)
}

fn handcrafted() -> String {
    let mut log = String::new();
    for i in 1..=5 {
        for _ in 0..i {
            log += &record(
                &format!("2026-11-22T01:02:0{i}.000000Z"),
                "10.200.1.2:40000",
                "travel_agent_v1",
                &format!("cdn-{i}.images.example.net"),
                "would_deny",
                "NOERROR",
            );
        }
    }
    log += &record(
        "2026-11-22T01:03:00.000000Z",
        "[fd00::2]:40000",
        "travel_agent_v1",
        "images.example.net",
        "would_deny",
        "NXDOMAIN",
    );
    log += &record(
        "2026-11-22T01:04:00.000000Z",
        "10.200.1.2:40001",
        "travel_agent_v1",
        "api.company-internal.com",
        "allow",
        "NOERROR",
    );
    log += &record(
        "2026-11-22T01:05:00.000000Z",
        "10.200.1.2:40002",
        "travel_agent_v1",
        "sketchy-mirror.example.com",
        "deny",
        "NXDOMAIN",
    );
    for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        log += &record(
            &format!("2026-11-22T01:06:0{i}.000000Z"),
            "10.200.1.2:40003",
            "travel_agent_v1",
            &format!("{name}.github.io"),
            "would_deny",
            "NOERROR",
        );
    }
    log += r#"{"ts":"2026-11-22T01:07:00.000000Z","client":"10.200.1.9:53","transport":"udp","agent":null,"qname":null,"qtype":null,"decision":"refused","rule":null,"dynamic":false,"rcode":"FORMERR","answers":[],"upstream_ms":null}"#;
    log += "\n";
    log += &EventLine {
        ts: "2026-11-22T01:07:01.000000Z".into(),
        event: Event::AuditRecordsLost(RecordsLost {
            count: 2,
            cause: None,
        }),
    }
    .to_json();
    log + "\n"
}

#[test]
fn a_suggested_policy_passes_check_without_warnings() {
    let dir = TempDir::new("suggest");
    let log = dir.write("audit.jsonl", &handcrafted());
    let out = dir.0.join("suggested.yaml");
    let (code, stdout, stderr) = allowdns(&[
        "suggest",
        "--audit-log",
        log.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout, "", "the policy goes to --output");
    let policy = std::fs::read_to_string(&out).unwrap();
    // Whitespace squeezed: the comments' column depends on the longest entry.
    let flat: Vec<String> = policy
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for want in [
        "agent_name: \"travel_agent_v1\"",
        "- \"10.200.1.2/32\"",
        "- \"fd00::2/128\"",
        "# cdn-1, cdn-2, cdn-3, cdn-4, cdn-5",
        "- destination: \"*.images.example.net\" # 5 names, 15 lookups, first 2026-11-22T01:02:01Z, last 2026-11-22T01:02:05Z",
        "- destination: \"images.example.net\" # 1 lookup, 2026-11-22T01:03:00Z; NXDOMAIN 1",
        "# - destination: \"sketchy-mirror.example.com\" # denied 1 time, never allowed: review before enabling; 1 lookup, 2026-11-22T01:05:00Z",
        "- destination: \"e.github.io\" # 1 lookup, 2026-11-22T01:06:04Z",
        "# The log reports 2 records lost: lookups may be missing here.",
    ] {
        assert!(
            flat.iter().any(|l| l == want),
            "missing {want:?} in\n{policy}"
        );
    }
    assert_lacks(&policy, "*.github.io");
    assert_has(&stderr, "warning: ");
    assert_has(
        &stderr,
        ": 1 name was only denied, never allowed: commented out; review them, or pass --include-denied",
    );
    assert_checks_clean(&out, "travel_agent_v1");

    // Denied names become entries on request.
    let (code, stdout, stderr) = allowdns(&[
        "suggest",
        "--audit-log",
        log.to_str().unwrap(),
        "--include-denied",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_lacks(&stderr, "only denied");
    let policy = std::fs::read_to_string(&out).unwrap();
    assert!(
        destinations(&policy).contains(&"sketchy-mirror.example.com".to_string()),
        "{policy}"
    );
    assert_checks_clean(&out, "travel_agent_v1");
}

#[test]
fn learned_from_the_real_resolver_and_locked_down() {
    // The seeds' observation period: learn mode resolves everything and
    // audits what it would deny; `suggest` turns that into the lock-down policy.
    let dir = TempDir::new("suggest-e2e");
    let log = dir.0.join("audit.jsonl");
    let learning = dir.write("learn.yaml", "agent_name: observer\nmode: learn\n");
    let dns = Allowdns::offline_audit(&learning, &repo("zones"), &log, &[]);
    let observed = [
        "API.Company-Internal.COM",
        "flights.company-internal.com",
        "hotels.company-internal.com",
        "ns1.company-internal.com",
        "weather.service.com",
        "sketchy-mirror.example.com",
    ];
    for name in observed {
        assert_eq!(
            rcode(dns.udp, name, RecordType::A),
            ResponseCode::NoError,
            "learn mode resolves {name}"
        );
    }
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    assert!(
        read_audit(&log)
            .iter()
            .all(|r| r["decision"] == "would_deny"),
        "nothing was on the (empty) allowlist"
    );

    let out = dir.0.join("suggested.yaml");
    let (code, stdout, stderr) = allowdns(&[
        "suggest",
        "--audit-log",
        log.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let policy = std::fs::read_to_string(&out).unwrap();
    let destinations: Vec<&str> = policy
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- destination: "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        destinations,
        [
            "\"*.company-internal.com\"",
            "\"sketchy-mirror.example.com\"",
            "\"weather.service.com\""
        ],
        "{policy}"
    );
    assert_has(&policy, "  - \"127.0.0.1/32\"\n");
    assert_checks_clean(&out, "observer");

    // Locked down: what was observed still resolves, nothing else does.
    let dns = Allowdns::serve_offline(&out, &repo("zones"));
    for name in observed {
        assert_eq!(
            rcode(dns.udp, name, RecordType::A),
            ResponseCode::NoError,
            "{name}"
        );
    }
    assert_rcode(dns.udp, "ns1.example.com A", ResponseCode::NXDomain);
}

#[test]
fn several_agents_need_agent_and_the_policy_goes_to_stdout() {
    let dir = TempDir::new("suggest-agents");
    let mut text = handcrafted();
    text += &record(
        "2026-11-22T02:00:00.000000Z",
        "10.200.2.2:40000",
        "mail_agent",
        "smtp.example.org",
        "would_deny",
        "NOERROR",
    );
    let log = dir.write("audit.jsonl", &text);
    let log = log.to_str().unwrap();

    let (code, stdout, stderr) = allowdns(&["suggest", "--audit-log", log]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_has(
        &stderr,
        "the log holds lookups by 2 agents: 'mail_agent' (1 lookups), 'travel_agent_v1' (23 lookups); choose one with --agent",
    );

    let (code, stdout, stderr) =
        allowdns(&["suggest", "--audit-log", log, "--agent", "mail_agent"]);
    assert_eq!(code, 0, "{stderr}");
    assert_has(&stdout, "agent_name: \"mail_agent\"");
    assert_has(&stdout, "\"smtp.example.org\"");
    assert_lacks(&stdout, "images");
    let out = dir.write("mail.yaml", &stdout);
    assert_checks_clean(&out, "mail_agent");

    let (code, _, stderr) = allowdns(&["suggest", "--audit-log", log, "--agent", "nobody"]);
    assert_eq!(code, 1);
    assert_has(&stderr, "no lookups by agent 'nobody'");
}

#[test]
fn bad_input_is_reported_with_file_and_line() {
    let dir = TempDir::new("suggest-bad");
    let text = handcrafted()
        + "{\"ts\":\n"
        + &record("x", "10.0.0.1:1", "a", "b.example", "allow", "NOERROR");
    let lines = text.lines().count();
    let log = dir.write("audit.jsonl", &(text + "\n"));
    let out = dir.0.join("never.yaml");
    let (code, _, stderr) = allowdns(&[
        "suggest",
        "--audit-log",
        log.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    let file = log.display();
    assert_has(
        &stderr,
        &format!("error: {file}:{}: not a JSON audit record", lines - 1),
    );
    assert_has(
        &stderr,
        &format!("error: {file}:{lines}: ts: 'x' is not an RFC 3339 time"),
    );
    assert!(!out.exists(), "nothing is written on errors");

    let missing = dir.0.join("missing.jsonl");
    let (code, _, stderr) = allowdns(&["suggest", "--audit-log", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_has(
        &stderr,
        &format!(
            "error: {}: cannot read audit log: No such file",
            missing.display()
        ),
    );
}

#[test]
fn addresses_are_left_out_and_never_become_address_rules() {
    let dir = TempDir::new("suggest-ip");
    let log = log_of(&[
        ("9.9.9.9", "would_deny"),
        ("1.2.3.4", "allow"),
        ("a.2.3.4", "allow"),
        ("b.2.3.4", "allow"),
        ("c.2.3.4", "allow"),
        ("d.2.3.4", "allow"),
        ("api.example.com", "allow"),
    ]);
    let (code, policy, stderr) = suggest_from(&dir, &log, &[]);
    assert_eq!(code, 0, "{policy}{stderr}");
    assert_eq!(destinations(&policy), ["api.example.com"], "{policy}");
    assert_has(
        &stderr,
        ":1: qname: left out \"9.9.9.9\": an IP address, not a name",
    );
    assert_has(
        &stderr,
        ":3: qname: left out \"a.2.3.4\": a numeric last label",
    );
    assert_has(
        &policy,
        "  # \"9.9.9.9\": an IP address, not a name; 1 lookup",
    );
    let out = dir.write("suggested.yaml", &policy);
    assert_checks_clean(&out, "a");
}

#[test]
fn no_wildcard_over_other_owners_names() {
    let dir = TempDir::new("suggest-psl");
    let mut names = vec!["management.core.windows.net".to_string()];
    for service in ["blob", "file", "queue", "table"] {
        names.push(format!("acct1.{service}.core.windows.net"));
        names.push(format!("acct2.{service}.core.windows.net"));
    }
    for i in 0..5 {
        names.push(format!("pub-{i}.r2.dev"));
    }
    let lookups: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "allow")).collect();
    let (code, policy, stderr) = suggest_from(&dir, &log_of(&lookups), &[]);
    assert_eq!(code, 0, "{policy}{stderr}");
    let got = destinations(&policy);
    assert_eq!(got.len(), names.len(), "{policy}");
    assert!(got.iter().all(|d| !d.starts_with('*')), "{policy}");
    assert_lacks(&policy, "\"*.core.windows.net\"");
    assert_lacks(&policy, "\"*.r2.dev\"");
    let out = dir.write("suggested.yaml", &policy);
    assert_checks_clean(&out, "a");
}

#[test]
fn a_denied_dns_tunnel_is_commented_out_and_warned_about() {
    let dir = TempDir::new("suggest-tunnel");
    // Hex-encoded data, as a tunnel client sends it; every lookup denied.
    let tunnel: Vec<String> = (0..300u64)
        .map(|i| {
            let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            format!("{x:016x}{:016x}.t.evil.example", x.rotate_left(17))
        })
        .collect();
    let mut lookups: Vec<(&str, &str)> = tunnel.iter().map(|n| (n.as_str(), "deny")).collect();
    lookups.push(("api.example.com", "allow"));
    let log = log_of(&lookups);
    for extra in [&[][..], &["--include-denied"][..]] {
        let (code, policy, stderr) = suggest_from(&dir, &log, extra);
        assert_eq!(code, 0, "{policy}{stderr}");
        assert_eq!(destinations(&policy), ["api.example.com"], "{policy}");
        assert_has(
            &policy,
            "  # - destination: \"*.t.evil.example\"   # looks like a DNS tunnel (300 distinct names): review; ",
        );
        assert_has(
            &stderr,
            "qname: \"*.t.evil.example\" looks like a DNS tunnel (300 distinct names, 300 with random-looking labels",
        );
        assert!(!policy.contains(&tunnel[0]), "children are summarized");
        let out = dir.write("suggested.yaml", &policy);
        assert_checks_clean(&out, "a");
    }
}

#[test]
fn skip_malformed_proceeds() {
    let dir = TempDir::new("suggest-skip");
    let good = log_of(&[("api.example.com", "allow"), ("cdn.example.com", "allow")]);
    let mut lines = good.lines();
    let log = format!(
        "{}\n{{\"ts\":\n{}\n{}\n",
        lines.next().unwrap(),
        "z".repeat(70_000),
        lines.next().unwrap()
    );
    let (code, _, stderr) = suggest_from(&dir, &log, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_has(&stderr, "audit.jsonl:2: not a JSON audit record");
    assert_has(&stderr, "audit.jsonl:3: line longer than 65536 bytes");

    let (code, policy, stderr) = suggest_from(&dir, &log, &["--skip-malformed"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        destinations(&policy),
        ["api.example.com", "cdn.example.com"]
    );
    assert_has(&stderr, "warning: ");
    assert_has(&stderr, "audit.jsonl:2: skipped: not a JSON audit record");
    assert_has(
        &stderr,
        "audit.jsonl: 2 malformed lines skipped (--skip-malformed)",
    );
    let out = dir.write("suggested.yaml", &policy);
    assert_checks_clean(&out, "a");
}

#[test]
fn a_file_that_is_no_audit_log_gets_a_few_errors_and_a_count() {
    let dir = TempDir::new("suggest-script");
    let script: String = (0..20).map(|i| format!("print('line {i}')\n")).collect();
    // Positive control: a log with one good record and malformed lines reports each of them.
    let good = record(
        "2026-11-22T01:20:10Z",
        "10.0.0.1:1",
        "a",
        "b.example",
        "allow",
        "NOERROR",
    );
    let head: String = script.lines().take(4).map(|l| format!("{l}\n")).collect();
    let mixed = dir.write("mixed.jsonl", &format!("{good}\n{head}"));
    let (code, _, stderr) = allowdns(&["suggest", "--audit-log", mixed.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert_has(&stderr, "mixed.jsonl:5: not a JSON audit record");
    let log = dir.write("agent.py", &script);
    let (code, _, stderr) = allowdns(&["suggest", "--audit-log", log.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert!(errors.len() <= 5, "{stderr}");
    assert_has(&stderr, "agent.py:3: not a JSON audit record");
    assert_lacks(&stderr, "agent.py:4:");
    assert_has(&stderr, "... and 17 more malformed lines");
    assert_has(&stderr, "is this an allowdns audit log");
}

// ---- `allowdns report`: the page a person reads, rendered as they see it ----

/// Headless Chromium in a network namespace of its own (only `lo`, down):
/// nothing a page asks for can leave the machine. Its profile and HOME are
/// a temporary directory. `None` (skipped loudly, or failed in CI) without
/// chromium or without the right to make a namespace.
fn chromium(scratch: &TempDir, args: &[&str], page: &Path) -> Option<(String, String)> {
    let browser = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(browser) = browser else {
        require_or_skip("chromium is not installed (apt-get install chromium)");
        return None;
    };
    if !is_root() {
        require_or_skip("rendering offline needs root for `unshare -n`");
        return None;
    }
    let profile = scratch.0.join("chromium-profile");
    let out = Command::new("unshare")
        .args(["-n", browser])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--enable-logging=stderr",
            "--v=1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .env("HOME", &scratch.0)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The DOM after the page ran, as Chromium serializes it, and the URLs it
/// requested (scheme, host and path; Chromium's own update checks included).
fn dom_and_requests(scratch: &TempDir, page: &Path) -> Option<(String, BTreeSet<String>)> {
    let (dom, log) = chromium(scratch, &["--dump-dom"], page)?;
    let requests = log
        .lines()
        .filter_map(|l| l.split("NotifyBeforeURLRequest: ").nth(1))
        .map(|url| {
            url.split(['?', '#'])
                .next()
                .unwrap_or(url)
                .trim()
                .to_string()
        })
        .collect();
    Some((dom, requests))
}

/// (sampled pixels, distinct colours, share of the most common colour).
fn screenshot_stats(scratch: &TempDir, page: &Path, name: &str) -> Option<(u64, u64, f64)> {
    let png = scratch.0.join(name);
    chromium(
        scratch,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,2000",
        ],
        page,
    )?;
    Some(colour_stats(&png))
}

/// Every 4th pixel of a PNG: (pixels sampled, distinct colours, share of
/// the most common colour).
fn colour_stats(path: &Path) -> (u64, u64, f64) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bpp = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let mut counts: std::collections::HashMap<&[u8], u64> = std::collections::HashMap::new();
    for pixel in buf[..info.buffer_size()].chunks_exact(bpp).step_by(4) {
        *counts.entry(&pixel[..3]).or_default() += 1;
    }
    let total: u64 = counts.values().sum();
    let top = counts.values().max().copied().unwrap_or(0);
    (total, counts.len() as u64, top as f64 / total.max(1) as f64)
}

/// `allowdns report` on `log`; (exit code, stdout, stderr).
fn report(log: &Path, out: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec![
        "report",
        "--audit-log",
        log.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    all.extend(args);
    allowdns(&all)
}

/// A denied lookup by a hostile agent: its name and command line carry markup.
fn hostile_record() -> String {
    let mut record = QueryRecord::example();
    record.ts = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    record.agent = Some("travel_agent_v1".into());
    record.qname = Some("<script>alert(1)</script>.evil.test".into());
    record.decision = allowdns::observe::audit::schema::Decision::Deny;
    record.rule = None;
    record.exfil = None;
    record.owner.cmdline = Some("sh -c '<script>alert(2)</script>'".into());
    record.owner.owner_unknown = None;
    serde_json::to_string(&record).unwrap() + "\n"
}

#[test]
fn report_of_a_real_log_renders_offline_with_the_log_escaped() {
    let dir = TempDir::new("report-e2e");
    let log = dir.0.join("audit.jsonl");
    let policy = repo("policies/travel_agent_v1.yaml");
    let dns = Allowdns::offline_audit(&policy, &repo("zones"), &log, &[]);
    let asks = [
        ("api.company-internal.com", "NOERROR"),
        ("flights.company-internal.com", "NOERROR"),
        ("weather.service.com", "NOERROR"),
        ("sketchy-mirror.example.com", "NXDOMAIN"),
        ("sketchy-mirror.example.com", "NXDOMAIN"),
        ("ns1.example.com", "NXDOMAIN"),
    ];
    for (name, want) in asks {
        let Some(answer) = dig(dns.udp, &[name, "A", "+tries=1", "+time=2"]) else {
            return;
        };
        assert!(
            answer.contains(&format!("status: {want}")),
            "{name}: {answer}"
        );
    }
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    assert_eq!(read_audit(&log).len(), asks.len(), "one record per lookup");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text += &hostile_record();
    std::fs::write(&log, text).unwrap();

    let page = dir.0.join("report.html");
    let (code, stdout, stderr) = report(&log, &page, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: no reference to anything outside the file, and loading any is forbidden.
    assert!(html.contains("content=\"default-src 'none'; style-src 'unsafe-inline'\""));
    for outside in [
        "http://", "https://", "src=", "href=", "url(", "@import", "<script",
    ] {
        assert!(!html.contains(outside), "the page holds {outside:?}");
    }

    // Positive controls: markup from the log, pasted raw, runs in this
    // browser; a page that refers outside makes a request it logs.
    let control = dir.write(
        "control.html",
        "<html><body><table><tr><td><script>document.body.setAttribute('data-pwned','yes')</script>\
         </td></tr></table><img src=\"http://192.0.2.1/probe.png\"></body></html>",
    );
    let Some((control_dom, control_requests)) = dom_and_requests(&dir, &control) else {
        return;
    };
    assert_has(&control_dom, "data-pwned=\"yes\"");
    assert!(
        control_requests.contains("http://192.0.2.1/probe.png"),
        "{control_requests:?}"
    );
    let blank = dir.write("blank.html", "<html><body></body></html>");
    let (_, baseline) = dom_and_requests(&dir, &blank).unwrap();

    let (dom, requests) = dom_and_requests(&dir, &page).unwrap();
    let own: Vec<&String> = requests.difference(&baseline).collect();
    assert!(own.is_empty(), "the report requested {own:?}");
    assert_lacks(&dom, "data-pwned");
    assert_lacks(&dom, "<script");
    assert!(dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;.evil.test"));
    assert!(dom.contains("sh -c '&lt;script&gt;alert(2)&lt;/script&gt;'"));
    for id in [
        "summary",
        "timeline-chart",
        "events",
        "names-table",
        "rules-table",
        "denied-table",
        "connections",
        "exfil",
        "suggest",
    ] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "no #{id}");
    }
    let svg = &dom[dom.find("id=\"timeline-chart\"").unwrap()..];
    assert!(svg.contains("class=\"bar allow\"") && svg.contains("class=\"bar deny\""));
    let denied = &dom[dom.find("id=\"denied-table\"").unwrap()..];
    let denied = &denied[..denied.find("</table>").unwrap()];
    assert_has(denied, "<code>example.com</code> (2 names)");
    assert!(denied.contains("<code>sketchy-mirror.example.com</code></td><td class=\"n\">2</td>"));
    assert_lacks(denied, "weather.service.com");
    let names = &dom[dom.find("id=\"names-table\"").unwrap()..];
    assert!(names.contains(
        "<code>flights.company-internal.com</code></td><td class=\"n\">1</td><td class=\"n\">1</td>"
    ));
    assert!(
        names.contains("<code>*.company-internal.com</code>"),
        "the dynamic rule"
    );
    assert!(
        dom.contains("nothing to learn a policy from"),
        "not a learn-mode log"
    );

    // Not blank: a blank page is one colour (the check works), the report is not.
    let (_, colours, top) = screenshot_stats(&dir, &blank, "blank.png").unwrap();
    assert!(
        colours <= 2 && top > 0.99,
        "blank: {colours} colours, top {top}"
    );
    let (pixels, colours, top) = screenshot_stats(&dir, &page, "report.png").unwrap();
    assert!(pixels > 100_000, "{pixels}");
    assert!(
        colours >= 6 && top < 0.95,
        "report: {colours} colours, top {top}"
    );
}

#[test]
fn report_of_a_learn_mode_log_shows_the_suggested_policy_beside_its_evidence() {
    let dir = TempDir::new("report-learn");
    let log = dir.0.join("audit.jsonl");
    let learning = dir.write("learn.yaml", "agent_name: observer\nmode: learn\n");
    let dns = Allowdns::offline_audit(&learning, &repo("zones"), &log, &[]);
    for name in [
        "api.company-internal.com",
        "flights.company-internal.com",
        "hotels.company-internal.com",
        "ns1.company-internal.com",
        "weather.service.com",
    ] {
        assert_eq!(rcode(dns.udp, name, RecordType::A), ResponseCode::NoError);
    }
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");

    let page = dir.0.join("report.html");
    let (code, stdout, stderr) = report(&log, &page, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let Some((dom, _)) = dom_and_requests(&dir, &page) else {
        return;
    };
    let entries = &dom[dom.find("id=\"suggest-entries\"").expect("a suggest block")..];
    let entries = &entries[..entries.find("</table>").unwrap()];
    let row = |dest: &str| -> &str {
        let at = entries
            .find(&format!("<code>\"{dest}\"</code>").replace('"', "&quot;"))
            .or_else(|| entries.find(&format!("<code>\"{dest}\"</code>")))
            .unwrap_or_else(|| panic!("no entry {dest}: {entries}"));
        let row = &entries[at..];
        &row[..row.find("</tr>").unwrap()]
    };
    let wildcard = row("*.company-internal.com");
    assert!(
        wildcard.contains("4 names, 4 lookups"),
        "suggest's note: {wildcard}"
    );
    assert!(
        wildcard.contains(
            "<code>hotels.company-internal.com</code>: 1 lookups (0 allowed, 1 would deny"
        ),
        "the evidence: {wildcard}"
    );
    assert!(row("weather.service.com").contains("would deny"));
    assert!(dom.contains("id=\"suggest-policy\""));
    // The same policy `suggest` writes.
    let (code, suggested, stderr) = allowdns(&["suggest", "--audit-log", log.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let html = std::fs::read_to_string(&page).unwrap();
    let first_entry = suggested
        .lines()
        .find(|l| l.contains("- destination:"))
        .unwrap();
    assert!(
        html.contains(&first_entry.replace('"', "&quot;")),
        "{first_entry}"
    );
}

#[test]
fn report_bad_input_names_file_and_line_and_skips_only_when_asked() {
    let dir = TempDir::new("report-bad");
    let page = dir.0.join("report.html");
    let good = log_of(&[("a.example.com", "allow"), ("b.example.com", "deny")]);
    let mut lines: Vec<&str> = good.lines().collect();
    lines.insert(1, "{\"ts\":\"2026-11-22T01:00:00.5Z\",\"client\":");
    let log = dir.write("audit.jsonl", &(lines.join("\n") + "\n"));
    // Positive control: the same log without the bad line is reported.
    let clean = dir.write("clean.jsonl", &good);
    let (code, _, stderr) = report(&clean, &page, &[]);
    assert_eq!(code, 0, "{stderr}");
    std::fs::remove_file(&page).unwrap();

    let (code, _, stderr) = report(&log, &page, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_has(&stderr, &format!("{}:2:", log.display()));
    assert_has(&stderr, "no report was written");
    assert!(!page.exists(), "nothing written on bad input");

    let (code, _, stderr) = report(&log, &page, &["--skip-malformed"]);
    assert_eq!(code, 0, "{stderr}");
    assert_has(&stderr, &format!("{}:2:", log.display()));
    let html = std::fs::read_to_string(&page).unwrap();
    assert_has(&html, "id=\"skipped\">1 malformed lines skipped");
    assert!(
        html.contains("<td class=\"n\">2</td>"),
        "both good lines counted"
    );

    let missing = dir.0.join("missing.jsonl");
    let (code, _, stderr) = report(&missing, &page, &[]);
    assert_eq!(code, 1);
    assert_has(&stderr, &format!("{}: ", missing.display()));
    assert_has(&stderr, "cannot read");

    // Another agent's lines, an event from a newer writer, and a last line
    // cut short (a log still being written): left out, and said so.
    let mut more = good.clone();
    more += &record(
        "2026-11-22T01:00:05.000000Z",
        "10.200.1.3:40000",
        "b",
        "c.example.com",
        "allow",
        "NOERROR",
    );
    more += "{\"ts\":\"2026-11-22T01:00:06.000000Z\",\"event\":\"from_the_future\",\"x\":1}\n";
    more += "{\"ts\":\"2026-11-22T01:00:07.0";
    let partial = dir.write("partial.jsonl", &more);
    let (code, _, stderr) = report(&partial, &page, &["--agent", "a"]);
    assert_eq!(code, 0, "{stderr}");
    assert_has(&stderr, "incomplete last line skipped");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_has(&html, "1 lines of other agents left out");
    assert!(html.contains("1 events of a kind this version does not know left out"));
    assert!(!html.contains("c.example.com"), "agent b's name shown");

    // --since: a time after the log leaves every line out; a bad one is refused.
    let (code, _, stderr) = report(&clean, &page, &["--since", "2030-01-01T00:00:00Z"]);
    assert_eq!(code, 0, "{stderr}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_has(&html, "2 lines before --since left out");
    let (code, _, stderr) = report(&clean, &page, &["--since", "yesterday-ish"]);
    assert_eq!(code, 2, "{stderr}");
    assert_has(&stderr, "yesterday-ish");
}

#[test]
fn report_memory_is_capped_under_a_flood_of_unique_names() {
    let dir = TempDir::new("report-flood");
    let mut log = String::new();
    // A tunnel: 25 names under one domain, past the 20 listed per domain.
    for i in 0..25 {
        log += &record(
            &format!("2026-11-22T01:59:{i:02}.000000Z"),
            "10.200.1.2:40000",
            "a",
            &format!("chunk{i}.t.tunnel.example"),
            "deny",
            "NXDOMAIN",
        );
    }
    // 3,000 registrable domains, two names each: past the 1,000-domain cap.
    for i in 0..6000 {
        log += &record(
            &format!("2026-11-22T02:{:02}:{:02}.000000Z", i / 100 % 60, i % 60),
            "10.200.1.2:40000",
            "a",
            &format!("n{}.d{}.example", i % 2, i / 2),
            "deny",
            "NXDOMAIN",
        );
    }
    let log = dir.write("audit.jsonl", &log);
    let page = dir.0.join("report.html");
    let (code, _, stderr) = report(&log, &page, &[]);
    assert_eq!(code, 0, "{stderr}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(html.matches("<tr class=\"domain\">").count(), 1000);
    assert!(
        html.contains("and 4002 more denied lookups under domains past the first 1000"),
        "the rest is counted"
    );
    assert!(html.contains(
        "and 5 more lookups of further names under this domain (the first 20 are listed)"
    ));
    assert_eq!(
        html.matches("<tr class=\"name\">").count(),
        50,
        "top 50 shown"
    );
}
