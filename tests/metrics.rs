//! The Prometheus endpoint: scraped over real HTTP after real queries.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

fn metrics_addr(dns: &Allowdns) -> String {
    let stderr = dns.stderr();
    let url = stderr
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no metrics address in:\n{stderr}"));
    url.split('/').next().unwrap().to_string()
}

fn scrape(dns: &Allowdns, path: &str) -> String {
    let addr = metrics_addr(dns);
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
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
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
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
    let dns = Allowdns::serve(&[
        "--policy",
        policy.to_str().unwrap(),
        "--upstream",
        &up,
        "--metrics",
        "127.0.0.1:0",
    ]);
    for _ in 0..3 {
        assert_eq!(
            rcode(dns.udp, "weather.service.com", RecordType::A),
            ResponseCode::NoError
        );
    }
    assert_eq!(
        rcode(dns.udp, "sketchy-mirror.example.com", RecordType::A),
        ResponseCode::NXDomain
    );
    assert_eq!(
        rcode(dns.udp, "weather.service.com", RecordType::AAAA),
        ResponseCode::NoError
    );
    // Audit and counting happen after the reply is sent; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let reply = scrape(&dns, "/metrics");
        if reply.contains("qtype=\"AAAA\"") || Instant::now() > deadline {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
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

    assert!(scrape(&dns, "/").starts_with("HTTP/1.1 404"));
    assert_no_duplicate_series(&text);
}

#[test]
fn extended_rcodes_get_their_own_series() {
    let policy = repo("policies/travel_agent_v1.yaml");
    let dns = Allowdns::serve(&[
        "--policy",
        policy.to_str().unwrap(),
        "--upstream",
        "none",
        "--metrics",
        "127.0.0.1:0",
    ]);
    assert_eq!(
        rcode(dns.udp, "sketchy-mirror.example.com", RecordType::A),
        ResponseCode::NXDomain
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

    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let reply = scrape(&dns, "/metrics");
        if reply.contains("rcode=\"BADVERS\"") || Instant::now() > deadline {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
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
    let dns = Allowdns::serve(&[
        "--policy",
        policy.to_str().unwrap(),
        "--upstream",
        "none",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let addr = metrics_addr(&dns);
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
    let reply = scrape(&dns, "/metrics");
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply:?}");
    assert!(scraped.elapsed() < Duration::from_secs(1));
    // DNS is unaffected.
    assert_eq!(
        rcode(dns.udp, "sketchy-mirror.example.com", RecordType::A),
        ResponseCode::NXDomain
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
        let reply = scrape(&dns, "/metrics");
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
