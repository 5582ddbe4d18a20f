//! The resolver against a real hickory upstream on loopback, queried by real clients.

use crate::common;

use std::time::Duration;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

fn upstream() -> Upstream {
    Upstream::start(
        "127.0.0.10",
        0,
        &[
            data("upstream/allowed.test.zone"),
            data("upstream/other.test.zone"),
            data("upstream/third.test.zone"),
        ],
    )
}

fn serve(up: &Upstream, extra: &[&str]) -> Allowdns {
    let upstream = up.addr.to_string();
    let policy = data("policy.yaml");
    let mut args = vec![
        "--upstream",
        &upstream,
        "--policy",
        policy.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Allowdns::serve(&args)
}

#[test]
fn allowed_names_resolve_and_denied_names_never_leave_the_host() {
    let up = upstream();
    let dns = serve(&up, &[]);

    let m = query(dns.udp, "www.allowed.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        answers(&m),
        vec![("www.allowed.test".into(), "A".into(), "192.0.2.1".into())]
    );
    assert!(m.metadata.recursion_available);

    // Case and a trailing dot do not matter.
    let m = query(dns.udp, "WwW.AlLoWeD.TeSt.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);

    // Deep wildcard: any depth below, flagged dynamic (checked in the audit test).
    let m = query(dns.udp, "a.b.c.deep.allowed.test", RecordType::A);
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NXDomain,
        "allowed, and the upstream says NXDOMAIN"
    );
    assert!(up.count("a.b.c.deep.allowed.test") == 1);

    let denied = [
        "sub.www.allowed.test",  // subdomain of an exact name (exists upstream!)
        "deep.allowed.test",     // the apex of *.deep.allowed.test
        "evildeep.allowed.test", // lookalike of the wildcard suffix
        "www.allowed.test.attacker.example", // allowed name as a prefix
        "wwwallowed.test",
        "allowed.test",
        "sketchy-mirror.example.com",
    ];
    for name in denied {
        let m = query(dns.udp, name, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(m.answers.is_empty(), "{name}");
        let soa = m
            .authorities
            .iter()
            .find(|r| r.record_type() == RecordType::SOA);
        assert!(soa.is_some(), "{name}: NXDOMAIN carries an SOA");
        assert_eq!(soa.unwrap().ttl, 5, "default negative TTL");
    }
    let asked = up.names_but_probe();
    for name in denied {
        assert!(
            !asked.iter().any(|n| n == name),
            "{name} was sent upstream: {asked:?}"
        );
    }
    assert_eq!(
        asked
            .iter()
            .filter(|n| !n.ends_with("allowed.test") && !n.ends_with("other.test"))
            .count(),
        0,
        "{asked:?}"
    );
    assert_eq!(up.count("sub.www.allowed.test"), 0);
}

#[test]
fn cname_chains_are_chased_through_an_authoritative_only_upstream() {
    let up = upstream();
    let dns = serve(&up, &[]);
    let m = query(dns.udp, "chain.allowed.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        answers(&m),
        vec![
            (
                "chain.allowed.test".into(),
                "CNAME".into(),
                "hop.other.test.".into()
            ),
            (
                "hop.other.test".into(),
                "CNAME".into(),
                "final.third.test.".into()
            ),
            ("final.third.test".into(), "A".into(), "192.0.2.50".into()),
        ]
    );
    // Each hop was asked separately: the upstream only knows its own zones.
    assert_eq!(up.count("chain.allowed.test"), 1);
    assert_eq!(up.count("hop.other.test"), 1);
    assert_eq!(up.count("final.third.test"), 1);

    let m = query(dns.udp, "chain.allowed.test", RecordType::AAAA);
    assert_eq!(answers(&m).last().unwrap().2, "2001:db8::50");
}

#[test]
fn every_record_type_is_relayed() {
    let up = upstream();
    let dns = serve(&up, &[]);
    let cases = [
        ("www.allowed.test", RecordType::AAAA, "2001:db8::1"),
        ("www.allowed.test", RecordType::MX, "10 mail.allowed.test."),
        ("www.allowed.test", RecordType::TXT, "hello"),
        (
            "_sip._tcp.allowed.test",
            RecordType::SRV,
            "10 5 5060 sip.allowed.test.",
        ),
        ("svc.allowed.test", RecordType::HTTPS, "alpn=h2"),
    ];
    for (name, rtype, want) in cases {
        let m = query(dns.udp, name, rtype);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{name} {rtype}"
        );
        let got = answers(&m);
        assert!(
            got.iter()
                .any(|(_, t, d)| *t == rtype.to_string() && d.contains(want)),
            "{name} {rtype}: {got:?}"
        );
    }
}

#[test]
fn nxdomain_and_nodata_are_relayed_with_their_soa() {
    let up = upstream();
    let dns = serve(&up, &[]);
    let m = query(dns.udp, "missing.allowed.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let soa = m
        .authorities
        .iter()
        .find(|r| r.record_type() == RecordType::SOA)
        .expect("SOA");
    assert_eq!(soa.name.to_ascii(), "allowed.test.");

    let m = query(dns.udp, "exact.allowed.test", RecordType::AAAA);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert!(
        m.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA),
        "NODATA carries the SOA"
    );
}

#[test]
fn tcp_truncation_and_edns() {
    let up = upstream();
    let dns = serve(&up, &[]);
    // Over TCP the whole RRset arrives.
    let m = query_with(
        dns.tcp,
        "big.allowed.test",
        RecordType::TXT,
        Ask {
            tcp: true,
            ..Ask::default()
        },
    );
    assert_eq!(m.answers.len(), 30);
    // Plain UDP without EDNS is limited to 512 bytes: truncated.
    let m = query_with(
        dns.udp,
        "big.allowed.test",
        RecordType::TXT,
        Ask {
            edns: None,
            ..Ask::default()
        },
    );
    assert!(m.metadata.truncation, "TC set on a 512-byte UDP answer");
    assert!(
        m.edns.is_none(),
        "no EDNS in the answer to a query without it"
    );
    // EDNS 1232 is still too small for ~2.5 KB.
    let m = query_with(dns.udp, "big.allowed.test", RecordType::TXT, Ask::default());
    assert!(m.metadata.truncation);
    assert!(m.edns.is_some(), "EDNS answered with EDNS");
    // A small answer with EDNS fits.
    let m = query_with(dns.udp, "www.allowed.test", RecordType::A, Ask::default());
    assert!(!m.metadata.truncation);
    assert_eq!(m.edns.as_ref().unwrap().max_payload(), 1232);

    // dig sees TC and retries over TCP by itself.
    if let Some(out) = dig(dns.udp, &["+noedns", "big.allowed.test", "TXT"]) {
        assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
        let records = out
            .lines()
            .filter(|l| l.starts_with("big.allowed.test.") && l.contains("TXT"));
        assert_eq!(records.count(), 30, "{out}");
    }
}

#[test]
fn ipv6_listener_answers() {
    let up = upstream();
    let upstream = up.addr.to_string();
    let policy = data("policy.yaml");
    let dns = Allowdns::forward(&upstream, &policy, &["--listen", "[::1]:0"]);
    assert!(dns.udp.is_ipv6());
    let m = query(dns.udp, "www.allowed.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let m = query_with(
        dns.tcp,
        "www.allowed.test",
        RecordType::AAAA,
        Ask {
            tcp: true,
            ..Ask::default()
        },
    );
    assert_eq!(answers(&m)[0].2, "2001:db8::1");
}

#[test]
fn unknown_clients_are_refused() {
    let up = upstream();
    let dns = serve(&up, &[]);
    let m = query_from(dns.udp, "www.allowed.test", RecordType::A, "127.0.0.2");
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(m.answers.is_empty());
    assert_eq!(
        up.count("www.allowed.test"),
        0,
        "a refused client's question never goes upstream"
    );
}

#[test]
fn upstream_down_gives_servfail() {
    // A port nobody listens on: the kernel answers ICMP unreachable at once.
    let closed = std::net::UdpSocket::bind("127.0.0.11:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let policy = data("policy.yaml");
    let dns = Allowdns::serve(&["--upstream", &addr, "--policy", policy.to_str().unwrap()]);
    let m = query(dns.udp, "www.allowed.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(m.answers.is_empty());
    // Denied names are still denied, without asking anyone.
    let m = query(dns.udp, "evil.example", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn silent_upstream_times_out_to_servfail() {
    // Bound but never answering: exercises the timeout path.
    let silent = std::net::UdpSocket::bind("127.0.0.12:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let cfg = TempDir::new("silent");
    let config = cfg.write("allowdns.yaml", "upstream:\n  timeout_ms: 300\n");
    let policy = data("policy.yaml");
    let dns = Allowdns::forward(&addr, &policy, &["--config", config.to_str().unwrap()]);
    let m = query(dns.udp, "www.allowed.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    drop(silent);
}

#[test]
fn cached_answers_count_their_ttl_down() {
    let up = upstream();
    let dns = serve(&up, &[]);
    let first = query(dns.udp, "short.allowed.test", RecordType::A);
    assert_eq!(first.answers[0].ttl, 30);
    std::thread::sleep(Duration::from_millis(2100));
    let second = query(dns.udp, "short.allowed.test", RecordType::A);
    let ttl = second.answers[0].ttl;
    assert!(
        (26..=28).contains(&ttl),
        "TTL counted down from 30 to {ttl}"
    );
    assert_eq!(
        up.count("short.allowed.test"),
        1,
        "the second answer came from cache"
    );
}

#[test]
fn malformed_queries_get_formerr_and_unknown_opcodes_notimp() {
    let up = upstream();
    let dns = serve(&up, &[]);
    // Header claims one question, body is garbage.
    let mut bad = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    bad.extend_from_slice(&[0xff, 0xff, 0xff]);
    let reply = exchange_udp(dns.udp, &bad, None);
    assert_eq!(&reply[..2], &[0x12, 0x34]);
    assert_eq!(reply[3] & 0x0f, 1, "FORMERR");

    // Two questions in one message.
    let mut two = vec![0x22, 0x22, 0x01, 0x00, 0x00, 0x02, 0, 0, 0, 0, 0, 0];
    for _ in 0..2 {
        two.extend_from_slice(b"\x03www\x07allowed\x04test\x00\x00\x01\x00\x01");
    }
    let reply = exchange_udp(dns.udp, &two, None);
    assert_eq!(reply[3] & 0x0f, 1, "FORMERR for two questions");

    // Opcode 2 (STATUS).
    let mut status = vec![0x33, 0x33, 0x10, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    status.extend_from_slice(b"\x03www\x07allowed\x04test\x00\x00\x01\x00\x01");
    let reply = exchange_udp(dns.udp, &status, None);
    assert_eq!(reply[3] & 0x0f, 4, "NOTIMP");

    // Still serving after all that.
    let m = query(dns.udp, "www.allowed.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(up.count("www.allowed.test"), 1);
}

#[test]
fn a_silent_upstream_is_named_at_start_and_a_live_one_is_not_warned_about() {
    // Positive control: a live upstream answers the start-up probe, and no warning follows.
    let up = upstream();
    let dns = serve(&up, &[]);
    dns.wait_for("answered the start-up probe", 1);
    let live = up.addr.to_string();
    let err = dns.stderr();
    assert!(
        err.contains(&format!("upstream: forwarding to {live}")),
        "{err}"
    );
    assert!(!err.contains("did not answer"), "{err}");
    drop(dns);
    // Bound and never read: packets to it are lost, no ICMP says so.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap().to_string();
    let policy = data("policy.yaml");
    let dns = Allowdns::serve(&["--upstream", &dead, "--policy", policy.to_str().unwrap()]);
    let started = std::time::Instant::now();
    dns.wait_for("did not answer the start-up probe", 1);
    assert!(started.elapsed() < Duration::from_secs(6));
    let err = dns.stderr();
    let warning = err
        .lines()
        .find(|l| l.contains("did not answer the start-up probe"))
        .unwrap();
    assert!(warning.contains(&format!("forwarder {dead}")), "{err}");
    // Each later upstream warning names the server too.
    let r = query(dns.udp, "www.allowed.test", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    dns.wait_for("answering SERVFAIL", 1);
    let err = dns.stderr();
    let servfail = err
        .lines()
        .find(|l| l.contains("answering SERVFAIL"))
        .unwrap();
    assert!(servfail.contains(&dead), "{servfail}");
}
