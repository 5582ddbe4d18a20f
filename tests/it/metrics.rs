//! The Prometheus endpoint: scraped over real HTTP after real queries.

use crate::common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

/// A scrape of `/metrics` once it holds `needle`, or after 5 s (counting
/// happens after the reply is sent).
fn scrape_until(dns: &Allowdns, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = dns.scrape("/metrics");
        if reply.contains(needle) || Instant::now() > deadline {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fails if one series (name and labels) appears twice in a scrape.
fn assert_no_duplicate_series(text: &str) {
    let body = text.split_once("\r\n\r\n").map_or(text, |(_, b)| b);
    let mut seen = std::collections::HashSet::new();
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, _) = line.rsplit_once(' ').unwrap_or((line, ""));
        assert!(
            seen.insert(series),
            "series {series} appears twice in:\n{body}"
        );
    }
}

/// The value of one series, by its exact name and labels.
fn value(text: &str, series: &str) -> f64 {
    series_value(text, series)
}

#[test]
fn metrics_count_queries_by_agent_decision_qtype_and_more() {
    let upstream = Upstream::start(
        "127.0.0.16",
        0,
        &[
            repo("zones/example.com.zone"),
            repo("zones/service.com.zone"),
        ],
    );
    let up = upstream.addr.to_string();
    let policy = repo("policies/travel_agent_v1.yaml");
    let dns = Allowdns::forward(&up, &policy, &["--metrics", "127.0.0.1:0"]);
    for _ in 0..3 {
        assert_rcode(dns.udp, "weather.service.com A", ResponseCode::NoError);
    }
    assert_rcode(
        dns.udp,
        "sketchy-mirror.example.com A",
        ResponseCode::NXDomain,
    );
    assert_rcode(dns.udp, "weather.service.com AAAA", ResponseCode::NoError);
    // Audit and counting happen after the reply is sent; give them a moment.
    let text = scrape_until(&dns, "qtype=\"AAAA\"");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Content-Type: text/plain; version=0.0.4"));
    let agent = "agent=\"travel_agent_v1\"";
    assert_eq!(
        value(
            &text,
            &format!("allowdns_queries_total{{{agent},decision=\"allow\",qtype=\"A\"}}")
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            &format!("allowdns_queries_total{{{agent},decision=\"deny\",qtype=\"A\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(&text, "allowdns_responses_total{rcode=\"NXDOMAIN\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "allowdns_responses_total{rcode=\"NOERROR\"}"),
        4.0
    );
    assert_eq!(value(&text, "allowdns_query_duration_seconds_count"), 5.0);
    assert_eq!(
        value(&text, "allowdns_query_duration_seconds_bucket{le=\"+Inf\"}"),
        5.0
    );
    assert_eq!(value(&text, "allowdns_upstream_queries_total"), 2.0);
    assert_eq!(value(&text, "allowdns_cache_hits_total"), 2.0);
    assert_eq!(value(&text, "allowdns_upstream_errors_total"), 0.0);
    assert_eq!(value(&text, "allowdns_audit_records_lost_total"), 0.0);
    assert_eq!(value(&text, "allowdns_nft_failures_total"), 0.0);
    assert!(value(&text, "allowdns_upstream_duration_seconds_sum") > 0.0);
    assert!(text.contains("# TYPE allowdns_query_duration_seconds histogram"));
    assert_eq!(
        value(&text, "allowdns_alerts_total{kind=\"notification\"}"),
        0.0
    );

    assert!(dns.scrape("/").starts_with("HTTP/1.1 404"));
    assert_no_duplicate_series(&text);
}

#[test]
fn extended_rcodes_get_their_own_series() {
    let policy = repo("policies/travel_agent_v1.yaml");
    let dns = Allowdns::forward("none", &policy, &["--metrics", "127.0.0.1:0"]);
    assert_rcode(
        dns.udp,
        "sketchy-mirror.example.com A",
        ResponseCode::NXDomain,
    );
    // EDNS version 1: the reply is BADVERS (16), whose header nibble is 0.
    let mut msg = Message::query();
    msg.metadata.id = 4242;
    msg.add_query(Query::query(
        Name::from_ascii("weather.service.com.").unwrap(),
        RecordType::A,
    ));
    let mut edns = Edns::new();
    edns.set_version(1);
    msg.set_edns(edns);
    let reply = Message::from_vec(&exchange_udp(dns.udp, &msg.to_vec().unwrap(), None)).unwrap();
    assert_eq!(u16::from(reply.metadata.response_code), 16, "{reply:?}");

    let text = scrape_until(&dns, "rcode=\"BADVERS\"");
    assert_eq!(
        value(&text, "allowdns_responses_total{rcode=\"BADVERS\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "allowdns_responses_total{rcode=\"NXDOMAIN\"}"),
        1.0
    );
    assert!(
        !text.contains("allowdns_responses_total{rcode=\"NOERROR\"}"),
        "BADVERS counted as NOERROR:\n{text}"
    );
    assert_no_duplicate_series(&text);
}

#[test]
fn idle_scrapers_cannot_exhaust_the_endpoint() {
    let policy = repo("policies/travel_agent_v1.yaml");
    let dns = Allowdns::forward("none", &policy, &["--metrics", "127.0.0.1:0"]);
    let addr = dns.metrics_addr();
    // Connections that never send a byte: more than may wait at once (64).
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| {
            let s = TcpStream::connect(&addr).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let mut open = vec![true; idle.len()];
    // Beyond the waiting limit, the longest-waiting connections are closed at once.
    let start = Instant::now();
    wait_closed(&idle, &mut open, start + Duration::from_secs(2), 36);
    let closed_early = open.iter().filter(|o| !**o).count();
    assert_eq!(
        closed_early, 36,
        "{closed_early} of 100 idle connections closed at once"
    );
    assert!(open[36..].iter().all(|o| *o), "the newest ones wait");
    // Positive control: 64 idle connections are open, more than the 8
    // scrape slots; a real scrape still gets its answer at once.
    let scraped = Instant::now();
    let reply = dns.scrape("/metrics");
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply:?}");
    assert!(scraped.elapsed() < Duration::from_secs(1));
    // DNS is unaffected.
    assert_rcode(
        dns.udp,
        "sketchy-mirror.example.com A",
        ResponseCode::NXDomain,
    );
    // The rest are closed by the exchange deadline (5 s), not held forever.
    wait_closed(&idle, &mut open, start + Duration::from_secs(9), idle.len());
    assert!(
        open.iter().all(|o| !o),
        "idle connections outlived the deadline"
    );
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let reply = dns.scrape("/metrics");
        if reply.starts_with("HTTP/1.1 200 OK") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scrape after idle clients left: {reply:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls until at least `want` of `conns` are closed by the server (EOF or
/// reset), or `by`; marks them in `open`.
fn wait_closed(conns: &[TcpStream], open: &mut [bool], by: Instant, want: usize) {
    let mut byte = [0u8; 1];
    loop {
        for (mut s, o) in conns.iter().zip(open.iter_mut()).filter(|(_, o)| **o) {
            match s.read(&mut byte) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => *o = false,
            }
        }
        if open.iter().filter(|o| !**o).count() >= want || Instant::now() > by {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// --- docs/grafana/allowdns.json against what /metrics really exports.

/// Labels Prometheus adds on scrape, and the histogram bucket label.
const SCRAPE_LABELS: &[&str] = &["instance", "job", "le"];
/// PromQL words that are neither series nor labels.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "topk",
    "bottomk",
    "rate",
    "irate",
    "increase",
    "delta",
    "histogram_quantile",
    "clamp_min",
    "label_values",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
];

/// Series name → label names, from a scrape: histograms also by their
/// `_bucket`, `_sum` and `_count` series.
fn exported(scrape: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let body = scrape.split_once("\r\n\r\n").map_or(scrape, |(_, b)| b);
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let names = if kind == "histogram" {
                vec![
                    format!("{name}_bucket"),
                    format!("{name}_sum"),
                    format!("{name}_count"),
                ]
            } else {
                vec![name.to_string()]
            };
            for n in names {
                out.entry(n).or_default();
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let known = out.entry(name.to_string()).or_default();
            for pair in labels.trim_end_matches('}').split(',') {
                if let Some((label, _)) = pair.split_once('=')
                    && !known.iter().any(|k| k == label)
                {
                    known.push(label.to_string());
                }
            }
        }
    }
    out
}

/// Every PromQL expression in a dashboard: panel targets and variable queries.
fn expressions(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    ("query", serde_json::Value::Object(q)) => {
                        if let Some(serde_json::Value::String(e)) = q.get("query") {
                            out.push(e.clone());
                        }
                    }
                    _ => expressions(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

/// What one expression refers to that the scrape lacks: unknown series,
/// unknown identifiers, labels a matcher or a grouping names that its
/// series do not carry. Strings, `[ranges]` and `$variables` are skipped.
fn promql_problems(
    expr: &str,
    series: &std::collections::BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut problems = Vec::new();
    let mut used: Vec<&str> = Vec::new();
    let mut matched: Vec<(String, String)> = Vec::new();
    let mut grouped: Vec<String> = Vec::new();
    let mut i = 0;
    let mut last_word = String::new();
    let mut last_series = String::new();
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            i += 1;
            while i < chars.len() && (word(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c == '{' {
            // Label matchers of the series just named.
            i += 1;
            while i < chars.len() && chars[i] != '}' {
                let start = i;
                while i < chars.len() && word(chars[i]) {
                    i += 1;
                }
                let label: String = chars[start..i].iter().collect();
                if !label.is_empty() {
                    matched.push((last_series.clone(), label));
                }
                while i < chars.len() && !matches!(chars[i], '"' | '}') {
                    i += 1;
                }
                if i < chars.len() && chars[i] == '"' {
                    i += 1;
                    while i < chars.len() && chars[i] != '"' {
                        i += if chars[i] == '\\' { 2 } else { 1 };
                    }
                    i += 1;
                }
                while i < chars.len() && matches!(chars[i], ',' | ' ') {
                    i += 1;
                }
            }
            i += 1;
        } else if c == '(' && matches!(last_word.as_str(), "by" | "without") {
            let end = i + chars[i..].iter().position(|&c| c == ')').unwrap_or(0);
            let list: String = chars[i + 1..end].iter().collect();
            grouped.extend(list.split(',').map(|l| l.trim().to_string()));
            last_word.clear();
            i = end + 1;
        } else if word(c) {
            let start = i;
            while i < chars.len() && word(chars[i]) {
                i += 1;
            }
            let w: String = chars[start..i].iter().collect();
            if let Some((name, _)) = series.get_key_value(&w) {
                used.push(name);
                last_series = w.clone();
            } else if w.starts_with("allowdns_") {
                problems.push(format!("series {w} is not exported"));
            } else if !PROMQL_WORDS.contains(&w.as_str())
                && !SCRAPE_LABELS.contains(&w.as_str())
                && !series.values().flatten().any(|l| *l == w)
            {
                problems.push(format!("unknown word {w}"));
            }
            last_word = w;
        } else {
            i += 1;
        }
    }
    if used.is_empty() {
        problems.push("names no allowdns series".to_string());
    }
    let has = |name: &str, label: &str| {
        SCRAPE_LABELS.contains(&label)
            || series
                .get(name)
                .is_some_and(|l| l.iter().any(|x| x == label))
    };
    for (name, label) in matched {
        if !has(&name, &label) {
            problems.push(format!("{name} has no label {label}"));
        }
    }
    for label in grouped {
        if !used.iter().any(|name| has(name, &label)) {
            problems.push(format!("grouping by {label}, which none of {used:?} has"));
        }
    }
    problems
}

#[test]
fn every_grafana_expression_names_series_and_labels_that_metrics_exports() {
    let dir = TempDir::new("grafana");
    // Alert sinks configured, so their families are exported too; nothing
    // is denied often enough to notify.
    let config = dir.write(
        "allowdns.yaml",
        &format!(
            "policies: [{:?}]\nalerts:\n  notify:\n    webhook: {{ url: \"http://127.0.0.1:9/\" }}\n",
            repo("policies/travel_agent_v1.yaml").to_str().unwrap()
        ),
    );
    let dns = Allowdns::serve(&[
        "--config",
        config.to_str().unwrap(),
        "--upstream",
        "none",
        "--metrics",
        "127.0.0.1:0",
    ]);
    // One denial, so the per-decision series (written once non-zero) exist.
    assert_rcode(
        dns.udp,
        "sketchy-mirror.example.com A",
        ResponseCode::NXDomain,
    );
    let text = scrape_until(&dns, "allowdns_queries_total{");
    let series = exported(&text);
    for family in [
        "allowdns_queries_total",
        "allowdns_alert_deliveries_total",
        "allowdns_query_duration_seconds_bucket",
    ] {
        assert!(series.contains_key(family), "no {family} in:\n{text}");
    }

    // Positive control: the checker catches a misspelt series, a label the
    // series lacks, a grouping nobody carries and a stray word.
    let bad = promql_problems(
        "sum by (agnet) (rate(allowdns_querys_total[5m])) / sum(rate(allowdns_queries_total{agent=\"a\",qtyp=\"A\"}[5m])) + up",
        &series,
    );
    for expected in [
        "series allowdns_querys_total is not exported",
        "allowdns_queries_total has no label qtyp",
        "grouping by agnet",
        "unknown word up",
    ] {
        assert!(
            bad.iter().any(|p| p.contains(expected)),
            "checker missed {expected:?}: {bad:?}"
        );
    }

    let path = repo("docs/grafana/allowdns.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "only {} expressions", exprs.len());
    let problems: Vec<String> = exprs
        .iter()
        .flat_map(|e| {
            promql_problems(e, &series)
                .into_iter()
                .map(move |p| format!("{p}\n    in {e}"))
        })
        .collect();
    assert!(
        problems.is_empty(),
        "{}:\n{}",
        path.display(),
        problems.join("\n")
    );
    // The metrics an operator watches, each on a panel of its own.
    let all = exprs.join("\n");
    for needed in [
        "allowdns_queries_total",
        "allowdns_exfil_total",
        "allowdns_stripped_addresses_total",
        "allowdns_query_duration_seconds_bucket",
        "allowdns_upstream_errors_total",
        "allowdns_nft_updates_total",
        "allowdns_nft_failures_total",
        "allowdns_audit_records_lost_total",
    ] {
        assert!(all.contains(needed), "no panel uses {needed}");
    }
}

/// Questions the kernel drops at a UDP listener's socket, its receive queue
/// full, are counted, so none is lost unseen: every question sent is either
/// answered (in `allowdns_queries_total`) or dropped there
/// (`allowdns_udp_receive_drops_total`), but for any the kernel dropped
/// before the socket (its per-CPU backlog, `/proc/net/softnet_stat`).
/// Positive control: allowdns stopped (SIGSTOP) while 40,000 questions
/// arrive overflows the queue.
#[test]
fn questions_the_kernel_drops_on_a_full_receive_queue_are_counted() {
    const SENT: u64 = 40_000;
    let upstream = Upstream::start("127.0.0.17", 0, &[repo("zones/example.com.zone")]);
    let up = upstream.addr.to_string();
    let policy = repo("policies/travel_agent_v1.yaml");
    let dns = Allowdns::forward(&up, &policy, &["--metrics", "127.0.0.1:0"]);
    let answered = |text: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with("allowdns_queries_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum()
    };
    let drops = |text: &str| value(text, "allowdns_udp_receive_drops_total") as u64;
    assert_rcode(dns.udp, "denied.example.com A", ResponseCode::NXDomain);
    let before = scrape_until(&dns, "allowdns_queries_total{");
    assert_eq!((answered(&before), drops(&before)), (1, 0));

    let pid = nix::unistd::Pid::from_raw(dns.pid() as i32);
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let question = |id: u64| {
        let mut q = Message::query();
        q.metadata.id = id as u16;
        q.add_query(Query::query(
            Name::from_ascii("denied.example.com.").unwrap(),
            RecordType::A,
        ));
        q.to_vec().unwrap()
    };
    let backlog_before = backlog_drops();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    for id in 0..SENT {
        client.send_to(&question(id), dns.udp).unwrap();
        // Paced, so the per-CPU backlog before the socket rarely overflows.
        if id % 200 == 199 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut got, mut dropped) = (0, 0);
    while Instant::now() < deadline {
        let text = dns.scrape("/metrics");
        (got, dropped) = (answered(&text) - 1, drops(&text));
        if got + dropped >= SENT {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Machine-wide: other tests' packets may be among them.
    let backlog = backlog_drops() - backlog_before;
    eprintln!("{SENT} sent: {got} answered, {dropped} dropped at the socket, {backlog} before it");
    assert!(dropped > 0, "the queue never overflowed");
    assert!(got + dropped <= SENT, "{got} + {dropped}");
    assert!(
        got + dropped + backlog >= SENT,
        "questions lost unseen: {got} + {dropped} + {backlog}"
    );
}

/// Packets the kernel dropped before any socket, all CPUs (the second
/// column of `/proc/net/softnet_stat`, in hex).
fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum()
}
