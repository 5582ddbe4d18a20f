//! allowdns's own TCP server (RFC 7766) and the wire layer both transports
//! share, against the real binary, a real upstream and raw sockets.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Message, MessageType, ResponseCode};

/// A query in wire format: `id`, one question, class and type as numbers.
fn raw_query(id: u16, name: &str, qtype: u16, class: u16) -> Vec<u8> {
    let mut raw = id.to_be_bytes().to_vec();
    raw.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        raw.push(label.len() as u8);
        raw.extend_from_slice(label.as_bytes());
    }
    raw.push(0);
    raw.extend_from_slice(&qtype.to_be_bytes());
    raw.extend_from_slice(&class.to_be_bytes());
    raw
}

fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = (message.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(message);
    out
}

fn connect(server: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&server, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One length-prefixed reply; `None` on EOF or reset.
fn read_reply(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).ok()?;
    Some(buf)
}

fn tcp_ask(s: &mut TcpStream, message: &[u8]) -> Option<Message> {
    s.write_all(&framed(message)).ok()?;
    read_reply(s).map(|r| Message::from_vec(&r).expect("reply parses"))
}

fn udp_ask(server: SocketAddr, message: &[u8]) -> Message {
    Message::from_vec(&exchange_udp(server, message, None)).expect("reply parses")
}

fn metric(text: &str, series: &str) -> u64 {
    series_value(text, series)
}

/// The usual upstream and policy, with an audit log and metrics, plus a
/// config file (for `tcp:` limits).
fn serve(up: &Upstream, dir: &TempDir, config: &str) -> Allowdns {
    let config = dir.write("allowdns.yaml", config);
    let log = dir.0.join("audit.jsonl");
    let upstream = up.addr.to_string();
    let policy = data("policy.yaml");
    Allowdns::upstream_audit(
        &upstream,
        &policy,
        &log,
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ],
    )
}

fn test_upstream(ip: &str) -> Upstream {
    Upstream::start(
        ip,
        0,
        &[
            data("upstream/allowed.test.zone"),
            data("upstream/other.test.zone"),
            data("upstream/third.test.zone"),
        ],
    )
}

#[test]
fn pipelined_queries_are_answered_concurrently_and_in_completion_order() {
    // Timed: no lab is built, run or torn down meanwhile.
    let _alone = common::alone();
    let dir = TempDir::new("tcp-pipeline");
    let mut zone = String::from(
        "$ORIGIN pipe.test.\n$TTL 300\n@ IN SOA ns.pipe.test. h.pipe.test. 1 3600 600 86400 30\n@ IN NS ns.pipe.test.\nns IN A 127.0.0.9\n",
    );
    for i in 0..100 {
        zone.push_str(&format!("h{i} IN A 192.0.2.{i}\n"));
    }
    let zone = dir.write("pipe.test.zone", &zone);
    let up = Upstream::start("127.0.0.17", 0, &[zone]);
    // The first half of the questions are answered late by the upstream.
    for i in 0..50 {
        up.delays
            .lock()
            .unwrap()
            .insert(format!("h{i}.pipe.test"), Duration::from_millis(700));
    }
    let policy = dir.write(
        "policy.yaml",
        "agent_name: pipe_agent\nclients: [\"127.0.0.1/32\"]\nallowed_dynamic_resolution: [\"*.pipe.test\"]\n",
    );
    let log = dir.0.join("audit.jsonl");
    let upstream = up.addr.to_string();
    let dns = Allowdns::upstream_audit(&upstream, &policy, &log, &[]);

    // All 100 questions in one write, on one connection.
    let mut s = connect(dns.tcp);
    let mut burst = Vec::new();
    for i in 0..100u16 {
        burst.extend(framed(&raw_query(
            1000 + i,
            &format!("h{i}.pipe.test"),
            1,
            1,
        )));
    }
    s.write_all(&burst).unwrap();
    let mut order = Vec::new();
    for _ in 0..100 {
        let reply = read_reply(&mut s).expect("100 replies on the connection");
        let m = Message::from_vec(&reply).unwrap();
        let i = m.metadata.id - 1000;
        assert!(i < 100, "unexpected ID {}", m.metadata.id);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "h{i}");
        // Each reply answers the question its ID was sent with.
        assert_eq!(
            answers(&m),
            vec![(
                format!("h{i}.pipe.test"),
                "A".to_string(),
                format!("192.0.2.{i}")
            )]
        );
        order.push(i);
    }
    let mut seen = order.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 100, "every ID answered once: {order:?}");
    // Forced out of order: every undelayed answer (sent later) overtook
    // every delayed one, which a one-at-a-time server cannot do.
    let position = |i: u16| order.iter().position(|&x| x == i).unwrap();
    let last_fast = (50..100).map(position).max().unwrap();
    let first_slow = (0..50).map(position).min().unwrap();
    assert!(
        last_fast < first_slow,
        "replies were not in completion order: {order:?}"
    );
    assert!(order[0] >= 50, "{order:?}");

    let records = audit_at_least(&log, 100);
    assert_eq!(records.len(), 100);
    assert!(records.iter().all(|r| r["transport"] == "tcp"));
    assert!(records.iter().all(|r| r["rcode"] == "NOERROR"));
}

#[test]
fn a_malformed_tcp_message_gets_formerr_an_audit_record_and_a_count() {
    let up = test_upstream("127.0.0.18");
    let dir = TempDir::new("tcp-formerr");
    let dns = serve(&up, &dir, "{}\n");
    let log = dir.0.join("audit.jsonl");
    let mut s = connect(dns.tcp);
    // Positive control: a well-formed question on the connection is answered.
    let ok = tcp_ask(&mut s, &raw_query(7, "www.allowed.test", 1, 1)).unwrap();
    assert_eq!(ok.metadata.response_code, ResponseCode::NoError);

    // The header claims one question; the body is garbage.
    let mut bad = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    bad.extend_from_slice(&[0xff, 0xff, 0xff]);
    s.write_all(&framed(&bad)).unwrap();
    let reply = read_reply(&mut s).expect("a FORMERR reply");
    assert_eq!(&reply[..2], &[0x12, 0x34]);
    assert_eq!(reply[2] & 0x80, 0x80, "QR");
    assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
    // The connection still serves.
    let again = tcp_ask(&mut s, &raw_query(8, "www.allowed.test", 1, 1)).unwrap();
    assert_eq!(again.metadata.response_code, ResponseCode::NoError);

    let records = audit_at_least(&log, 3);
    let formerr: Vec<_> = records.iter().filter(|r| r["rcode"] == "FORMERR").collect();
    assert_eq!(formerr.len(), 1, "{records:?}");
    assert_eq!(formerr[0]["transport"], "tcp");
    assert_eq!(formerr[0]["agent"], "test_agent");
    assert!(formerr[0]["qname"].is_null());
    let text = dns.scrape("/metrics");
    assert_eq!(
        metric(&text, "allowdns_responses_total{rcode=\"FORMERR\"}"),
        1
    );
}

#[test]
fn chaos_class_and_zone_transfers_are_refused_and_audited_on_both_transports() {
    let up = test_upstream("127.0.0.19");
    let dir = TempDir::new("tcp-refused");
    let dns = serve(&up, &dir, "{}\n");
    let log = dir.0.join("audit.jsonl");
    // Positive control: a denied name is NXDOMAIN with an alert; an allowed
    // one resolves upstream.
    let denied = udp_ask(dns.udp, &raw_query(1, "denied.example", 1, 1));
    assert_eq!(denied.metadata.response_code, ResponseCode::NXDomain);
    dns.wait_for("UNEXPECTED DNS LOOKUP", 1);
    let allowed = udp_ask(dns.udp, &raw_query(2, "www.allowed.test", 1, 1));
    assert_eq!(allowed.metadata.response_code, ResponseCode::NoError);
    assert_eq!(up.count("www.allowed.test"), 1);

    // version.bind CH TXT, AXFR and IXFR of an allowed and of a denied name.
    let cases = [
        ("version.bind", 16, 3),
        ("www.allowed.test", 252, 1),
        ("www.allowed.test", 251, 1),
        ("secret.denied.example", 252, 1),
        ("secret.denied.example", 251, 1),
        ("secret.denied.example", 1, 3),
    ];
    let mut s = connect(dns.tcp);
    for (n, (name, qtype, class)) in cases.iter().enumerate() {
        let query = raw_query(100 + n as u16, name, *qtype, *class);
        let over_udp = udp_ask(dns.udp, &query);
        let over_tcp = tcp_ask(&mut s, &query).expect("a TCP reply");
        for m in [over_udp, over_tcp] {
            assert_eq!(m.metadata.id, 100 + n as u16);
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::Refused,
                "{name} type {qtype} class {class}"
            );
        }
    }
    let records = audit_at_least(&log, 2 + 2 * cases.len());
    assert_eq!(records.len(), 2 + 2 * cases.len(), "{records:?}");
    let refused: Vec<_> = records.iter().filter(|r| r["rcode"] == "REFUSED").collect();
    assert_eq!(refused.len(), 2 * cases.len());
    assert!(refused.iter().all(|r| r["decision"] == "refused"));
    for transport in ["udp", "tcp"] {
        assert_eq!(
            refused
                .iter()
                .filter(|r| r["transport"] == transport)
                .count(),
            cases.len()
        );
    }
    // No alert beyond the positive control's, and nothing went upstream.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(dns.stderr().matches("UNEXPECTED DNS LOOKUP").count(), 1);
    assert_eq!(up.names_but_probe(), vec!["www.allowed.test".to_string()]);
}

#[test]
fn short_messages_and_responses_are_dropped_and_counted() {
    let up = test_upstream("127.0.0.20");
    let dir = TempDir::new("tcp-dropped");
    let dns = serve(&up, &dir, "{}\n");
    let text = dns.scrape("/metrics");
    let short = "allowdns_dropped_messages_total{reason=\"short\"}";
    let response = "allowdns_dropped_messages_total{reason=\"response\"}";
    assert_eq!(metric(&text, short), 0);
    assert_eq!(metric(&text, response), 0);

    let mut as_response = raw_query(9, "www.allowed.test", 1, 1);
    as_response[2] |= 0x80;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(&[1, 2, 3, 4, 5], dns.udp).unwrap();
    sock.send_to(&as_response, dns.udp).unwrap();
    let mut s = connect(dns.tcp);
    s.write_all(&framed(&[1, 2, 3])).unwrap();
    s.write_all(&framed(&as_response)).unwrap();
    // Neither is answered: the next reply on the connection is this one's.
    let m = tcp_ask(&mut s, &raw_query(10, "www.allowed.test", 1, 1)).unwrap();
    assert_eq!(m.metadata.id, 10);
    let m = udp_ask(dns.udp, &raw_query(11, "www.allowed.test", 1, 1));
    assert_eq!(m.metadata.id, 11);
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(sock.recv_from(&mut buf).is_err(), "no reply to either");

    let text = dns.scrape("/metrics");
    assert_eq!(metric(&text, short), 2);
    assert_eq!(metric(&text, response), 2);
}

#[test]
fn an_idle_tcp_connection_is_closed_after_the_idle_timeout() {
    let up = test_upstream("127.0.0.21");
    let dir = TempDir::new("tcp-idle");
    let dns = serve(&up, &dir, "tcp:\n  idle_timeout_ms: 500\n");
    let mut s = connect(dns.tcp);
    // Positive control: a connection in use stays open past the timeout.
    let opened = Instant::now();
    for id in 0..5 {
        if id > 0 {
            std::thread::sleep(Duration::from_millis(250));
        }
        let m = tcp_ask(&mut s, &raw_query(id, "www.allowed.test", 1, 1));
        assert_eq!(m.expect("still open").metadata.id, id);
    }
    assert!(opened.elapsed() > Duration::from_millis(1000));
    // Then idle: closed by the server.
    let idle = Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "EOF");
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

#[test]
fn the_connection_bound_holds() {
    let up = test_upstream("127.0.0.22");
    for name in [
        "exact.allowed.test",
        "short.allowed.test",
        "missing.allowed.test",
    ] {
        up.delays
            .lock()
            .unwrap()
            .insert(name.to_string(), Duration::from_secs(3));
    }
    let dir = TempDir::new("tcp-bound");
    let dns = serve(&up, &dir, "tcp:\n  max_connections: 3\n");
    // Positive control: up to the bound, every connection is served.
    let mut open: Vec<TcpStream> = (0..3).map(|_| connect(dns.tcp)).collect();
    for (i, s) in open.iter_mut().enumerate() {
        let m = tcp_ask(s, &raw_query(i as u16, "www.allowed.test", 1, 1));
        assert_eq!(m.expect("served").metadata.id, i as u16);
    }
    // At the bound, the connection idle longest is closed for a newcomer.
    let mut extra = connect(dns.tcp);
    let m = tcp_ask(&mut extra, &raw_query(50, "www.allowed.test", 1, 1));
    assert_eq!(m.expect("newcomer served").metadata.id, 50);
    let mut buf = [0u8; 16];
    assert_eq!(open[0].read(&mut buf).unwrap_or(0), 0, "idlest closed");
    // With every connection busy (a question in flight), the newcomer is closed.
    let mut busy = vec![open.remove(2), open.remove(1), extra];
    let slow = [
        "exact.allowed.test",
        "short.allowed.test",
        "missing.allowed.test",
    ];
    for (i, (s, name)) in busy.iter_mut().zip(slow).enumerate() {
        s.write_all(&framed(&raw_query(60 + i as u16, name, 1, 1)))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut refused = connect(dns.tcp);
    assert!(tcp_ask(&mut refused, &raw_query(70, "www.allowed.test", 1, 1)).is_none());
    for s in &mut busy {
        assert!(read_reply(s).is_some(), "busy connections answered");
    }
    let text = dns.scrape("/metrics");
    assert!(
        metric(
            &text,
            "allowdns_tcp_connections_total{outcome=\"rejected\"}"
        ) >= 1
    );
    assert!(metric(&text, "allowdns_tcp_connections_open") <= 3);
}

/// A connection that sends a 65535-byte length prefix, then one byte at a time.
fn slow_sender(server: SocketAddr) -> TcpStream {
    let mut s = connect(server);
    s.write_all(&[0xff, 0xff]).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    s
}

/// Whether the server has closed `s` (EOF or reset).
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Dribbles a byte on every open `slow` connection every 100 ms for up to
/// `within`; returns how long each lasted (`None`: still open at the end).
fn dribble(slow: &mut [TcpStream], within: Duration) -> Vec<Option<Duration>> {
    let began = Instant::now();
    let mut lasted = vec![None; slow.len()];
    while began.elapsed() < within && lasted.iter().any(Option::is_none) {
        std::thread::sleep(Duration::from_millis(100));
        for (s, lasted) in slow.iter_mut().zip(lasted.iter_mut()) {
            if lasted.is_none() && (closed(s) || s.write_all(b"x").is_err()) {
                *lasted = Some(began.elapsed());
            }
        }
    }
    lasted
}

#[test]
fn a_slow_sender_is_closed_by_the_message_deadline_and_cannot_lock_others_out() {
    let up = test_upstream("127.0.0.23");
    let dir = TempDir::new("tcp-slowloris");
    let policy = dir.write(
        "policy.yaml",
        "agent_name: slow_agent\nclients: [\"127.0.0.0/24\"]\nexpected_outbound:\n  - destination: www.allowed.test\n",
    );
    let upstream = up.addr.to_string();
    let start = |config: &str| {
        let config = dir.write("allowdns.yaml", config);
        Allowdns::forward(
            &upstream,
            &policy,
            &[
                "--config",
                config.to_str().unwrap(),
                "--metrics",
                "127.0.0.1:0",
            ],
        )
    };
    // Positive control: with a long message deadline, one byte every 100 ms
    // keeps a connection open well past the 1 s idle timeout.
    let dns = start("tcp:\n  idle_timeout_ms: 1000\n  message_timeout_ms: 60000\n");
    let mut slow = vec![slow_sender(dns.tcp)];
    let lasted = dribble(&mut slow, Duration::from_secs(3));
    assert_eq!(
        lasted,
        vec![None],
        "a dribbling sender outlives the idle timeout"
    );
    drop(dns);

    // With the deadline: closed about 1.5 s after the message's first byte.
    let dns = start(
        "tcp:\n  idle_timeout_ms: 1000\n  message_timeout_ms: 1500\n  max_connections: 4\n  max_connections_per_ip: 3\n",
    );
    let opened = Instant::now();
    let mut slow: Vec<TcpStream> = (0..3).map(|_| slow_sender(dns.tcp)).collect();
    // (Slots are taken on the server's tasks: wait until the three hold theirs.)
    let settle = Instant::now() + Duration::from_secs(10);
    while metric(&dns.scrape("/metrics"), "allowdns_tcp_connections_open") < 3 {
        assert!(
            Instant::now() < settle,
            "three slow connections never opened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A fourth from the same address is over its per-address cap.
    let mut fourth = connect(dns.tcp);
    assert!(tcp_ask(&mut fourth, &raw_query(1, "www.allowed.test", 1, 1)).is_none());
    // Another address fills the last slot, slowly too.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other
        .bind(&"127.0.0.3:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    other.connect(&dns.tcp.into()).unwrap();
    let mut other: TcpStream = other.into();
    other.write_all(&[0xff, 0xff]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Every slot held by slow senders: a normal client is still answered
    // (the connection idle longest makes way).
    let out = dig(
        dns.tcp,
        &[
            "-b",
            "127.0.0.2",
            "+tcp",
            "+tries=1",
            "+time=3",
            "www.allowed.test",
            "A",
        ],
    )
    .unwrap_or_default();
    assert!(
        out.contains("status: NOERROR") && out.contains("192.0.2.1"),
        "normal client answered while slow senders hold every slot:\n{out}"
    );
    slow.push(other);
    let before = opened.elapsed();
    let lasted = dribble(&mut slow, Duration::from_secs(5));
    for (i, l) in lasted.iter().enumerate() {
        let l = before + l.unwrap_or_else(|| panic!("slow sender {i} still open after 5 s"));
        assert!(
            l < Duration::from_secs(4),
            "slow sender {i} closed after {l:?}"
        );
    }
}

/// Pipelines queries on `s` without reading a reply until a write blocks
/// for 200 ms (the server is busy or stuck). Bounded at 400k queries.
fn stop_reading(s: &mut TcpStream) {
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let batch: Vec<u8> = (0..200u16)
        .flat_map(|i| framed(&raw_query(i, "www.allowed.test", 1, 1)))
        .collect();
    for _ in 0..2000 {
        if s.write_all(&batch).is_err() {
            return;
        }
    }
    panic!("400k queries sent and the server never stopped reading");
}

/// All queries answered so far, over every agent, decision and type.
fn answered(dns: &Allowdns) -> u64 {
    dns.scrape("/metrics")
        .lines()
        .filter(|l| l.starts_with("allowdns_queries_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits (up to 90 s) until the server has stopped answering for 2 s: the
/// backlog is worked off and its writer is stuck on the unread replies.
fn wait_until_stuck(dns: &Allowdns) {
    let until = Instant::now() + Duration::from_secs(90);
    let mut last = answered(dns);
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_secs(2) {
        assert!(Instant::now() < until, "the server never stopped answering");
        std::thread::sleep(Duration::from_millis(250));
        let now = answered(dns);
        if now != last {
            (last, still_since) = (now, Instant::now());
        }
    }
}

/// Waits up to `within` for the open-connection gauge to reach `want`.
fn open_connections_reach(dns: &Allowdns, want: u64, within: Duration) -> bool {
    let until = Instant::now() + within;
    loop {
        if metric(&dns.scrape("/metrics"), "allowdns_tcp_connections_open") == want {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_peer_that_stops_reading_loses_its_connection() {
    let up = test_upstream("127.0.0.24");
    let dir = TempDir::new("tcp-noread");
    // Positive control: with a long deadline, a peer that stops reading
    // keeps its connection (and its slot) once the server is stuck on it.
    let dns = serve(&up, &dir, "tcp:\n  message_timeout_ms: 60000\n");
    let mut peer = connect(dns.tcp);
    stop_reading(&mut peer);
    wait_until_stuck(&dns);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        open_connections_reach(&dns, 1, Duration::from_secs(1)),
        "a peer that stops reading holds its connection"
    );
    drop(peer);
    drop(dns);

    // With a 1 s deadline, the stuck write ends the connection.
    let dns = serve(&up, &dir, "tcp:\n  message_timeout_ms: 1000\n");
    let mut peer = connect(dns.tcp);
    stop_reading(&mut peer);
    assert!(
        open_connections_reach(&dns, 0, Duration::from_secs(90)),
        "a peer that stops reading must not hold its slot:\n{}",
        dns.scrape("/metrics")
    );
    // And the server still answers everyone else.
    let mut fresh = connect(dns.tcp);
    let reply = tcp_ask(&mut fresh, &raw_query(7, "www.allowed.test", 1, 1)).expect("answered");
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
}
