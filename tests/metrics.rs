//! The Prometheus endpoint: scraped over real HTTP after real queries.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

fn scrape(dns: &Allowdns, path: &str) -> String {
    let stderr = dns.stderr();
    let url = stderr
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no metrics address in:\n{stderr}"));
    let addr = url.split('/').next().unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
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
}
