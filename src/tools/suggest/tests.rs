use super::group::{looks_random, may_wildcard};
use super::read::Seen;
use super::render::quote;
use super::*;
use std::collections::HashMap;
use std::time::SystemTime;

/// One audit line as the writer formats it, `sec` seconds into the log.
fn line(sec: u64, agent: &str, qname: &str, decision: &str, rcode: &str) -> String {
    let ts = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000 + sec);
    let mut v = serde_json::json!({
        "ts": humantime::format_rfc3339_micros(ts).to_string(),
        "client": "10.200.1.2:5353",
        "transport": "udp",
        "agent": agent,
        "qname": qname,
        "qtype": "A",
        "decision": decision,
        "rule": null,
        "dynamic": false,
        "rcode": rcode,
        "answers": [],
        "upstream_ms": null,
    });
    v["future_field"] = serde_json::json!({"unknown": true});
    format!("{v}\n")
}

#[test]
fn names_refused_by_the_exfiltration_fences_are_not_suggested() {
    let mut log = lookups(&["api.example.com"]);
    let mut refused: serde_json::Value =
        serde_json::from_str(&line(9, "agent", "x1y2.t.cdn.test", "deny", "REFUSED")).unwrap();
    refused["exfil"] = "budget".into();
    log.push_str(&format!("{refused}\n"));
    assert_eq!(destinations(&log), vec!["api.example.com"]);
}

/// Audit lines a second apart, each (agent, qname, decision, rcode).
fn records(rows: &[(&str, &str, &str, &str)]) -> String {
    rows.iter()
        .enumerate()
        .map(|(i, &(agent, qname, decision, rcode))| line(i as u64, agent, qname, decision, rcode))
        .collect()
}

fn lookups(names: &[&str]) -> String {
    let rows: Vec<_> = names
        .iter()
        .map(|&n| ("agent", n, "would_deny", "NOERROR"))
        .collect();
    records(&rows)
}

fn run_on(log: &str, agent: Option<&str>) -> Result<Suggestion, Diagnostics> {
    run_with(log, |o| o.agent = agent)
}

/// `suggest` on `log` with the default options as `set` changes them.
fn run_with<'a>(log: &str, set: impl FnOnce(&mut Options<'a>)) -> Result<Suggestion, Diagnostics> {
    let mut options = Options::default();
    set(&mut options);
    suggest(Path::new("a.jsonl"), log.as_bytes(), &options)
}

fn messages(d: &Diagnostics) -> Vec<String> {
    d.items.iter().map(|d| d.to_string()).collect()
}

#[track_caller]
fn assert_has(text: &str, part: &str) {
    assert!(text.contains(part), "{part:?} not in:\n{text}");
}

/// Message `i` of `all` starts with `prefix`.
#[track_caller]
fn assert_starts(all: &[String], i: usize, prefix: &str) {
    assert!(all[i].starts_with(prefix), "{i}: {prefix:?} in {all:?}");
}

#[track_caller]
fn assert_any_starts(all: &[String], prefix: &str) {
    assert!(
        all.iter().any(|m| m.starts_with(prefix)),
        "{prefix:?} in {all:?}"
    );
}

#[track_caller]
fn assert_any_has(all: &[String], part: &str) {
    assert!(all.iter().any(|m| m.contains(part)), "{part:?} in {all:?}");
}

/// The suggestion's destinations, in order.
fn destinations(log: &str) -> Vec<String> {
    let text = run_on(log, None).expect("suggests").policy;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- destination: \""))
        .map(|l| l[..l.find('"').unwrap()].to_string())
        .collect()
}

/// Active destinations of a suggestion's text.
fn active(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("  - destination: \""))
        .map(|l| &l[..l.find('"').unwrap()])
        .collect()
}

fn compiled(text: &str) -> policy::Policy {
    let mut d = Diagnostics::default();
    let p = policy::compile_source(Path::new("s.yaml"), text, &mut d).expect("compiles");
    assert!(d.items.is_empty(), "{:?}", messages(&d));
    p
}

#[test]
fn siblings_group_into_a_wildcard_from_the_threshold_on() {
    let log = lookups(&[
        "cdn-1.images.example.net",
        "cdn-2.images.example.net",
        "cdn-3.images.example.net",
        "cdn-4.images.example.net",
        "cdn-4.images.example.net",
        "a.three.example.org",
        "b.three.example.org",
        "c.three.example.org",
    ]);
    assert_eq!(
        destinations(&log),
        [
            "*.images.example.net",
            "a.three.example.org",
            "b.three.example.org",
            "c.three.example.org",
        ]
    );
    let text = run_on(&log, None).unwrap().policy;
    assert_has(&text, "  # cdn-1, cdn-2, cdn-3, cdn-4\n");
    assert_has(
        &text,
        "\"*.images.example.net\"   # 4 names, 5 lookups, first 2026-",
    );
}

#[test]
fn never_a_wildcard_over_a_tld_or_public_suffix() {
    let mut names = Vec::new();
    for parent in ["com", "co.uk", "github.io", "com.ar", "herokuapp.com"] {
        for child in ["a", "b", "c", "d", "e"] {
            names.push(format!("{child}.{parent}"));
        }
    }
    assert_eq!(names.len(), 25);
    assert_never_grouped(&names);
    // One level down is somebody's own domain, which may be grouped.
    assert_grouped("me.github.io");
}

/// Every name stays an entry of its own: none falls under a wildcard.
fn assert_never_grouped(names: &[String]) {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let got = destinations(&lookups(&names));
    assert_eq!(got.len(), names.len(), "{got:?}");
    assert!(got.iter().all(|d| !d.contains('*')), "{got:?}");
}

/// Four names under `parent` fall under `*.parent`.
fn assert_grouped(parent: &str) {
    let names = ["a", "b", "c", "d"].map(|child| format!("{child}.{parent}"));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(destinations(&lookups(&names)), [format!("*.{parent}")]);
}

#[test]
fn a_parent_looked_up_itself_keeps_its_own_entry() {
    let log = lookups(&[
        "w.x.example",
        "x.example",
        "a.x.example",
        "b.x.example",
        "c.x.example",
    ]);
    assert_eq!(destinations(&log), ["x.example", "*.x.example"]);
    let p = compiled(&run_on(&log, None).unwrap().policy);
    assert!(p.rule_for("x.example").is_some());
    assert!(p.rule_for("new.x.example").is_some());
    assert!(p.rule_for("example").is_none());
}

#[test]
fn the_widest_parent_wins_and_covers_deeper_names() {
    let log = lookups(&[
        "www.example.com",
        "mail.example.com",
        "cdn.example.com",
        "a.api.example.com",
        "b.api.example.com",
        "c.api.example.com",
        "d.api.example.com",
    ]);
    assert_eq!(destinations(&log), ["*.example.com"]);
    let text = run_on(&log, None).unwrap().policy;
    assert_has(&text, "# 7 names, 7 lookups");
}

#[test]
fn names_are_normalized_to_lower_case_a_labels() {
    let log = lookups(&[
        "Bücher.Example",
        "xn--bcher-kva.example",
        "WWW.Example.NET.",
    ]);
    assert_eq!(
        destinations(&log),
        ["xn--bcher-kva.example", "www.example.net"]
    );
    let text = run_on(&log, None).unwrap().policy;
    assert_has(&text, "\"xn--bcher-kva.example\"   # 2 lookups");
}

#[test]
fn names_and_agents_are_quoted_safely() {
    for odd in ["plain", "a\"b: #c\nd", "*.x", "&anchor", "é 🦀 \\", "- [x]"] {
        let yaml = format!("v: {}\n", quote(odd));
        let back: HashMap<String, String> = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back["v"], odd, "{yaml}");
        assert!(!quote(odd).contains('\n'));
    }
    let agent = "travel \"v1\"\n# injected";
    let log: String = (0..4)
        .map(|i| line(i, agent, &format!("n{i}.x.example"), "allow", "NOERROR"))
        .collect();
    let text = run_on(&log, None).unwrap().policy;
    assert_has(&text, "  - destination: \"*.x.example\"");
    assert!(!text.contains("\n# injected"), "{text}");
    assert_eq!(&*compiled(&text).agent, agent.trim());
}

#[test]
fn output_is_sorted_and_deterministic() {
    let names = [
        "b.example.org",
        "a.example.com",
        "z.example.com",
        "a.example.org",
        "x.test",
    ];
    let forward = lookups(&names);
    let backward: String = forward.lines().rev().map(|l| format!("{l}\n")).collect();
    let a = run_on(&forward, None).unwrap().policy;
    assert_eq!(a, run_on(&backward, None).unwrap().policy);
    assert_eq!(
        destinations(&forward),
        [
            "a.example.com",
            "z.example.com",
            "a.example.org",
            "b.example.org",
            "x.test"
        ]
    );
}

#[test]
fn malformed_lines_are_all_reported_with_their_line() {
    let log = format!(
        "{}not json\n{}[1]\n{}{}",
        line(0, "a", "ok.example", "allow", "NOERROR"),
        line(1, "a", "ok.example", "maybe", "NOERROR"),
        line(2, "a", "ok.example", "allow", "NOERROR").replace("\"10.200.1.2:5353\"", "7"),
        line(3, "a", "ok.example", "allow", "NOERROR").replace("2026-", "yesterday-"),
    );
    let errors = messages(&run_on(&log, None).unwrap_err());
    assert_eq!(errors.len(), 5, "{errors:?}");
    assert_starts(&errors, 0, "error: a.jsonl:2: not a JSON audit record");
    assert_starts(
        &errors,
        1,
        "error: a.jsonl:3: decision: unknown decision 'maybe'",
    );
    assert_eq!(errors[2], "error: a.jsonl:4: not a JSON object");
    assert_eq!(
        errors[3],
        "error: a.jsonl:5: client: expected a string, found a number"
    );
    assert_starts(&errors, 4, "error: a.jsonl:6: ts: 'yesterday-");
}

/// Records are read into the audit schema's types: a mistake deep in a
/// record names its path, and a missing field is named.
#[test]
fn wrong_fields_are_named_by_their_path() {
    let log = format!(
        "{}{}{}",
        line(0, "a", "ok.example", "allow", "NOERROR").replace(
            "\"answers\":[]",
            r#""answers":[{"name":"ok.example","type":"A","ttl":"60","data":"192.0.2.1"}]"#
        ),
        line(1, "a", "ok.example", "allow", "NOERROR").replace("\"ts\":", "\"when\":"),
        line(2, "a", "ok.example", "allow", "NOERROR")
            .replace("\"qname\":\"ok.example\"", "\"qname\":[]"),
    );
    let errors = messages(&run_on(&log, None).unwrap_err());
    assert_eq!(
        errors,
        [
            "error: a.jsonl:1: answers[0].ttl: expected u32, found a string",
            "error: a.jsonl:2: ts: missing",
            "error: a.jsonl:3: qname: expected a string, found an array",
        ]
    );
}

#[test]
fn an_incomplete_last_line_is_only_a_warning() {
    let mut log = lookups(&["a.example"]);
    log.push_str(&line(1, "agent", "b.example", "allow", "NOERROR")[..40]);
    let s = run_on(&log, None).unwrap();
    assert_eq!(
        messages(&s.warnings),
        ["warning: a.jsonl:2: incomplete last line skipped (is the log still being written?)"]
    );
}

#[test]
fn several_agents_need_a_choice() {
    let log = records(&[
        ("alpha", "a.example", "allow", "NOERROR"),
        ("beta", "b.example", "allow", "NOERROR"),
        ("beta", "c.example", "deny", "NXDOMAIN"),
    ]);
    let e = messages(&run_on(&log, None).unwrap_err());
    assert_eq!(
        e,
        [
            "error: a.jsonl: the log holds lookups by 2 agents: 'alpha' (1 lookups), 'beta' (2 lookups); choose one with --agent"
        ]
    );
    let text = run_on(&log, Some("beta")).unwrap().policy;
    assert!(
        text.contains("agent_name: \"beta\"") && !text.contains("a.example"),
        "{text}"
    );
    let e = messages(&run_on(&log, Some("gamma")).unwrap_err());
    assert!(
        e[0].contains("no lookups by agent 'gamma'; agents in the log: 'alpha'"),
        "{e:?}"
    );
    let e = messages(&run_on("", None).unwrap_err());
    assert!(e[0].contains("no lookups to suggest from"), "{e:?}");
}

#[test]
fn refused_and_event_lines_are_skipped_and_loss_is_noted() {
    let refused = line(1, "a", "x", "refused", "FORMERR")
        .replace("\"agent\":\"a\"", "\"agent\":null")
        .replace("\"qname\":\"x\"", "\"qname\":null");
    let log = format!(
        "{}{refused}{}\n",
        line(0, "a", "ok.example", "allow", "NOERROR"),
        r#"{"ts":"2026-11-22T01:02:03.000000Z","event":"audit_records_lost","count":7}"#,
    );
    let text = run_on(&log, None).unwrap().policy;
    assert_has(&text, "(2 records)");
    assert_has(&text, "Agent \"a\": 1 lookup,");
    assert_has(&text, "# The log reports 7 records lost");
}

#[test]
fn a_connection_without_a_lookup_is_offered_commented_out() {
    let egress = |addr: &str, port: u16, resolved: &str| {
        format!(
            r#"{{"ts":"2026-11-22T01:02:03.000000Z","event":"egress_denied","agent":"a","action":"blocked","client":"10.0.0.2:4000","addr":"{addr}","port":{port},"proto":"tcp","resolved":{resolved},"rule":null}}"#
        ) + "\n"
    };
    let log = format!(
        "{}{}{}{}",
        line(0, "a", "ok.example", "allow", "NOERROR"),
        egress("104.28.14.6", 443, "null"),
        egress("104.28.14.6", 443, "null"),
        egress("192.0.2.1", 22, "\"ok.example\""),
    );
    let text = run_on(&log, None).unwrap().policy;
    assert_has(
        &text,
        "  # this agent connected to 104.28.14.6:443 without a lookup (2 times)\n  # - destination: \"104.28.14.6\"\n  #   port: 443\n  #   protocol: TCP\n",
    );
    // Resolved addresses are the lookups' business.
    assert!(!text.contains("192.0.2.1"), "{text}");
    let mut d = crate::diagnostics::Diagnostics::default();
    assert!(
        crate::policy::compile_source(std::path::Path::new("s.yaml"), &text, &mut d).is_some(),
        "{text}"
    );
}

#[test]
fn unusable_names_are_left_out_with_a_warning() {
    let log = lookups(&[
        "ok.example",
        "localhost",
        "co.uk",
        "*.evil.example",
        "a\\046b.example",
        ".",
    ]);
    let s = run_on(&log, None).unwrap();
    assert_eq!(destinations(&log), ["ok.example"]);
    let w = messages(&s.warnings);
    assert_eq!(w.len(), 5, "{w:?}");
    assert_any_starts(
        &w,
        "warning: a.jsonl:4: qname: left out \"*.evil.example\": a wildcard",
    );
    assert_has(
        &s.policy,
        "  # \"localhost\": a TLD or public suffix, not a host; 1 lookup",
    );
    let e = messages(&run_on(&lookups(&["localhost"]), None).unwrap_err());
    assert_any_has(&e, "none of the 1 lookups by agent 'agent' can be allowed");
}

#[test]
fn denials_are_counted_apart_from_failed_lookups() {
    let log = records(&[
        ("a", "gone.example", "deny", "NXDOMAIN"),
        ("a", "gone.example", "allow", "NXDOMAIN"),
        ("a", "gone.example", "allow", "SERVFAIL"),
    ]);
    let text = run_on(&log, None).unwrap().policy;
    assert_has(
        &text,
        "# 3 lookups, first 2026-11-18T11:06:40Z, last 2026-11-18T11:06:42Z; denied 1; NXDOMAIN 1; SERVFAIL 1",
    );
}

/// `n` names `<random 30 base32 chars>.<parent>`, the same for every run.
fn random_names(n: usize, parent: &str) -> Vec<String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            let label: String = (0..30)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b"abcdefghijklmnopqrstuvwxyz234567"[(x % 32) as usize] as char
                })
                .collect();
            format!("{label}.{parent}")
        })
        .collect()
}

#[test]
fn addresses_and_numeric_names_are_left_out() {
    let names = [
        "9.9.9.9",
        "9.9.9.9.",
        "1.2.3.4",
        "a.2.3.4",
        "b.2.3.4",
        "c.2.3.4",
        "d.2.3.4",
        "10.1",
        "0x7f.1",
        "::1",
        "1.2.3.4.example",
        "ok.example",
    ];
    let log = lookups(&names);
    let s = run_on(&log, None).unwrap();
    assert_eq!(destinations(&log), ["1.2.3.4.example", "ok.example"]);
    assert!(!s.policy.contains("\"*.2.3.4\""), "{}", s.policy);
    let w = messages(&s.warnings);
    assert_eq!(w.len(), 10, "{w:?}");
    assert!(
        w.contains(
            &"warning: a.jsonl:1: qname: left out \"9.9.9.9\": an IP address, not a name"
                .to_string()
        ),
        "{w:?}"
    );
    assert_any_starts(
        &w,
        "warning: a.jsonl:4: qname: left out \"a.2.3.4\": a numeric last label",
    );
    assert_has(
        &s.policy,
        "  # \"0x7f.1\": a numeric last label, which reads as an IP address;",
    );
    assert!(!may_wildcard("2.3.4") && !may_wildcard("1.0x7f"));
}

#[test]
fn self_check_rejects_address_rules() {
    let entry = Entry {
        destination: "9.9.9.9".into(),
        names: vec!["9.9.9.9".into()],
        seen: Seen::new(SystemTime::UNIX_EPOCH),
        tunnel: None,
    };
    let text = "version: 1\nagent_name: a\nexpected_outbound:\n  - destination: \"9.9.9.9\"\n";
    let mut d = Diagnostics::default();
    self_check(Path::new("a.jsonl"), text, &[&entry], &mut d);
    let e = messages(&d);
    assert_any_has(&e, "1 entries became address rules");
    // A commented-out entry that loads anyway is caught too.
    let text = "version: 1\nagent_name: a\nexpected_outbound:\n  - destination: ok.example\n  - destination: evil.example\n";
    let ok = Entry {
        destination: "ok.example".into(),
        ..entry
    };
    let mut d = Diagnostics::default();
    self_check(Path::new("a.jsonl"), text, &[&ok], &mut d);
    assert!(
        messages(&d)
            .iter()
            .any(|e| e.contains("name rules differ from the suggested entries")),
        "{:?}",
        messages(&d)
    );
}

#[test]
fn a_wildcard_never_spans_registrable_domains() {
    assert_eq!(
        policy::registrable_domain("x.acct.blob.core.windows.net"),
        Some("acct.blob.core.windows.net")
    );
    assert_eq!(
        policy::registrable_domain("management.core.windows.net"),
        Some("windows.net")
    );
    assert_eq!(policy::registrable_domain("a.b.example"), Some("b.example"));
    assert_eq!(policy::registrable_domain("a.b.co.uk"), Some("b.co.uk"));
    assert_eq!(policy::registrable_domain("co.uk"), None);
    assert_eq!(policy::registrable_domain("r2.dev"), None);

    let mut names = vec!["management.core.windows.net".to_string()];
    for service in ["blob", "file", "queue", "table", "web"] {
        names.push(format!("acct.{service}.core.windows.net"));
    }
    for i in 0..5 {
        names.push(format!("pub-{i}.r2.dev"));
    }
    assert_eq!(names.len(), 11);
    assert_never_grouped(&names);
    // Within one storage account is one owner's, and may be grouped.
    assert_grouped("acct.blob.core.windows.net");
}

#[test]
fn only_denied_names_are_commented_out_and_never_group() {
    let log = records(&[
        ("a", "a.x.example", "allow", "NOERROR"),
        ("a", "b.x.example", "would_deny", "NOERROR"),
        ("a", "c.x.example", "allow", "NOERROR"),
        ("a", "c.x.example", "deny", "NXDOMAIN"),
        ("a", "d.x.example", "deny", "NXDOMAIN"),
        ("a", "d.x.example", "deny", "NXDOMAIN"),
    ]);
    let s = run_on(&log, None).unwrap();
    assert_eq!(
        active(&s.policy),
        ["a.x.example", "b.x.example", "c.x.example"]
    );
    assert_has(
        &s.policy,
        "  # - destination: \"d.x.example\"   # denied 2 times, never allowed: review before enabling; 2 lookups, first 2026-11-18T11:06:44Z, last 2026-11-18T11:06:45Z\n",
    );
    assert_has(&s.policy, "; denied 1\n");
    assert!(compiled(&s.policy).rule_for("d.x.example").is_none());
    assert_eq!(
        messages(&s.warnings),
        [
            "warning: a.jsonl: 1 name was only denied, never allowed: commented out; review them, or pass --include-denied"
        ]
    );

    let s = run_with(&log, |o| o.include_denied = true).unwrap();
    assert_eq!(active(&s.policy), ["*.x.example"]);
    assert!(s.warnings.items.is_empty());

    // Denied names under an allowed wildcard say so.
    let mut log = lookups(&["a.y.example", "b.y.example", "c.y.example", "d.y.example"]);
    log += &line(9, "agent", "evil.y.example", "deny", "NXDOMAIN");
    let text = run_on(&log, None).unwrap().policy;
    assert_has(
        &text,
        "never allowed: review before enabling; already allowed by \"*.y.example\"; 1 lookup",
    );

    let e = messages(&run_on(&line(0, "a", "d.x.example", "deny", "NXDOMAIN"), None).unwrap_err());
    assert_eq!(
        e,
        [
            "warning: a.jsonl: 1 name was only denied, never allowed: commented out; review them, or pass --include-denied",
            "error: a.jsonl: none of the 1 lookups by agent 'a' can be allowed by a policy; 1 name was only denied (see --include-denied)"
        ]
    );
}

#[test]
fn a_denied_tunnel_stays_commented_out_even_when_denied_names_are_included() {
    let tunnel = random_names(150, "t.evil.example");
    let mut log: String = tunnel
        .iter()
        .enumerate()
        .map(|(i, n)| line(i as u64, "agent", n, "deny", "NXDOMAIN"))
        .collect();
    log += &lookups(&["ok.example"]);
    for include_denied in [false, true] {
        let s = run_with(&log, |o| o.include_denied = include_denied).unwrap();
        assert_eq!(active(&s.policy), ["ok.example"], "{}", s.policy);
        assert_has(
            &s.policy,
            "  # - destination: \"*.t.evil.example\"   # looks like a DNS tunnel (150 distinct names): review; ",
        );
        assert_has(&s.policy, " and 142 more\n");
        let w = messages(&s.warnings);
        assert_any_starts(
            &w,
            "warning: a.jsonl: qname: \"*.t.evil.example\" looks like a DNS tunnel (150 distinct names",
        );
        assert!(compiled(&s.policy).rule_for(&tunnel[0]).is_none());
    }
}

#[test]
fn random_labels_or_many_siblings_look_like_a_tunnel() {
    assert!(looks_random("27w2wav5bollfqcefb4arprhlwsekk"));
    assert!(looks_random("011796b2f4b2b0a004ab6fc21d63bf5e"));
    assert!(!looks_random("my-company-production-api"));
    assert!(!looks_random("authentication-service"));
    assert!(!looks_random("b2f4b2b0a004ab6fc21"));

    let mut names = random_names(4, "x.cdn.example");
    names.extend((0..4).map(|i| format!("cdn-{i}.images.example")));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let s = run_on(&lookups(&names), None).unwrap();
    assert_eq!(active(&s.policy), ["*.images.example"], "{}", s.policy);
    assert_has(
        &s.policy,
        "# - destination: \"*.x.cdn.example\"   # looks like a DNS tunnel (4 distinct names): review; 4 names, ",
    );
    assert!(messages(&s.warnings)[0].contains("(4 distinct names, 4 with random-looking labels)"));

    let many: Vec<String> = (0..=MAX_GROUP)
        .map(|i| format!("n{i}.big.example"))
        .collect();
    let mut names: Vec<&str> = many.iter().map(String::as_str).collect();
    names.push("ok.example");
    let s = run_on(&lookups(&names), None).unwrap();
    assert_eq!(active(&s.policy), ["ok.example"]);
    assert_has(
        &s.policy,
        "# looks like a DNS tunnel (101 distinct names): review; 101 names,",
    );
}

#[test]
fn skip_malformed_turns_bad_lines_into_warnings() {
    let log = format!(
        "{}not json\n{}[1]\n",
        line(0, "a", "ok.example", "allow", "NOERROR"),
        line(1, "a", "b.example", "maybe", "NOERROR"),
    ) + &line(2, "a", "c.example", "allow", "NOERROR");
    assert_eq!(run_on(&log, None).unwrap_err().errors().count(), 3);
    let s = run_with(&log, |o| o.skip_malformed = true).unwrap();
    assert_eq!(active(&s.policy), ["c.example", "ok.example"]);
    let w = messages(&s.warnings);
    assert_eq!(w.len(), 4, "{w:?}");
    assert_starts(
        &w,
        0,
        "warning: a.jsonl:2: skipped: not a JSON audit record",
    );
    assert_starts(
        &w,
        1,
        "warning: a.jsonl:3: decision: skipped: unknown decision",
    );
    assert_eq!(
        w[3],
        "warning: a.jsonl: 3 malformed lines skipped (--skip-malformed); lookups may be missing here"
    );

    // Past the first few, skipped lines are only counted.
    let log =
        "x\n".repeat(MAX_SKIPPED_REPORTED + 3) + &line(0, "a", "ok.example", "allow", "NOERROR");
    let s = run_with(&log, |o| o.skip_malformed = true).unwrap();
    let w = messages(&s.warnings);
    assert_eq!(w.len(), MAX_SKIPPED_REPORTED + 1, "{w:?}");
    assert!(
        w[MAX_SKIPPED_REPORTED].contains(": 8 malformed lines skipped"),
        "{w:?}"
    );
}

#[test]
fn overlong_lines_are_malformed() {
    let ok = line(0, "a", "ok.example", "allow", "NOERROR");
    // Exactly at the limit is fine.
    let padded = format!("{}{}\n", " ".repeat(MAX_LINE - ok.len() + 1), ok.trim_end());
    assert_eq!(padded.len(), MAX_LINE + 1);
    let log = format!(
        "{padded}{}\n{}",
        "x".repeat(3 * MAX_LINE),
        line(1, "a", "b.example", "allow", "NOERROR")
    );
    let e = messages(&run_on(&log, None).unwrap_err());
    assert_eq!(e, ["error: a.jsonl:2: line longer than 65536 bytes"]);
    let s = run_with(&log, |o| o.skip_malformed = true).unwrap();
    assert_eq!(active(&s.policy), ["b.example", "ok.example"]);
    // Also at the end without a newline.
    let e = messages(&run_on(&format!("{ok}{}", "y".repeat(MAX_LINE + 1)), None).unwrap_err());
    assert_eq!(e, ["error: a.jsonl:2: line longer than 65536 bytes"]);
}

#[test]
fn left_out_names_are_capped_in_the_policy() {
    let bad: Vec<String> = (0..MAX_LEFT_OUT_SHOWN + 7)
        .map(|i| format!("{i}.{i}"))
        .collect();
    let mut names: Vec<&str> = bad.iter().map(String::as_str).collect();
    names.push("ok.example");
    let s = run_on(&lookups(&names), None).unwrap();
    assert_eq!(
        s.policy.matches(": a numeric last label").count(),
        MAX_LEFT_OUT_SHOWN
    );
    assert!(s.policy.ends_with("  # ... and 7 more\n"), "{}", s.policy);
}

#[test]
fn only_the_chosen_agents_names_are_kept() {
    let log = records(&[
        ("alpha", "a.example", "allow", "NOERROR"),
        ("beta", "b.example", "allow", "NOERROR"),
        ("alpha", "c.example", "allow", "NOERROR"),
    ]);
    let options = Options {
        agent: Some("beta"),
        ..Options::default()
    };
    let mut d = Diagnostics::default();
    let read = read_log(Path::new("a.jsonl"), log.as_bytes(), &options, &mut d);
    let names: Vec<&String> = read.observed.as_ref().unwrap().names.keys().collect();
    assert_eq!(names, ["b.example"]);
    assert_eq!(read.agents.values().sum::<u64>(), 3);
    // Without --agent, a second agent ends keeping names at all.
    let read = read_log(
        Path::new("a.jsonl"),
        log.as_bytes(),
        &Options::default(),
        &mut d,
    );
    assert!(read.observed.is_none());
    assert_eq!(read.agents.len(), 2);
}
