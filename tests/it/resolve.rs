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

/// An upstream that records each question's source port and ID and races
/// forged answers against its own (tests/data/spoof_upstream.py), killed on drop.
struct SpoofingUpstream {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    log: std::path::PathBuf,
}

impl SpoofingUpstream {
    fn start(dir: &TempDir) -> Option<SpoofingUpstream> {
        use std::io::BufRead;
        let log = dir.0.join("questions.log");
        let child = std::process::Command::new("python3")
            .arg(repo("tests/data/spoof_upstream.py"))
            .arg("127.0.0.11")
            .arg(&log)
            .stdout(std::process::Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                require_or_skip(&format!("python3 is not installed ({e})"));
                return None;
            }
        };
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .strip_prefix("port ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("spoof_upstream.py said {line:?}"));
        Some(SpoofingUpstream {
            child,
            addr: std::net::SocketAddr::from(([127, 0, 0, 11], port)),
            log,
        })
    }

    /// Every question over UDP for a name starting with `prefix`, as it was
    /// asked (the letters' case kept).
    fn asked(&self, prefix: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() == 4 && w[2].starts_with(prefix)).then(|| w[3].to_string())
            })
            .collect()
    }

    /// (source port, ID) of every question for a name starting with `prefix`.
    fn questions(&self, prefix: &str) -> Vec<(u16, u16)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let (port, id, name) = (w.next()?, w.next()?, w.next()?);
                name.starts_with(prefix)
                    .then(|| Some((port.parse().ok()?, id.parse().ok()?)))?
            })
            .collect()
    }
}

impl Drop for SpoofingUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A/IN question for `name` with `id`, recursion desired.
fn a_question(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend([1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

/// The policy the spoofing upstream's tests serve: any name under f.test.
fn spoof_policy(dir: &TempDir) -> std::path::PathBuf {
    dir.write(
        "f.yaml",
        // Many fresh names under one domain: the exfiltration budget would
        // refuse them (tests/exfil.rs tests it).
        "agent_name: f\nexpected_outbound:\n  - destination: \"*.f.test\"\nexfil:\n  budget: off\n",
    )
}

/// allowdns forwarding to `servers` in order, with `policy` and `config`.
fn forwarding_to(servers: &[&str], policy: &std::path::Path, config: &std::path::Path) -> Allowdns {
    let mut args = Vec::new();
    for server in servers {
        args.extend(["--upstream", server]);
    }
    args.extend(["--policy", policy.to_str().unwrap()]);
    args.extend(["--config", config.to_str().unwrap()]);
    Allowdns::serve(&args)
}

/// The addresses allowdns answers for `name` (A).
fn addresses(dns: &Allowdns, name: &str) -> Vec<String> {
    answers(&query(dns.udp, name, RecordType::A))
        .into_iter()
        .map(|(_, _, data)| data)
        .collect()
}

/// Forgery resistance of the forwarder, seen from outside: over 10,000
/// forwarded questions the source ports, IDs and the names' letter case are
/// spread, and an answer with the wrong ID, from the wrong port or address,
/// or in the wrong case, never reaches the client, however it races the
/// true one. Positive control first: an
/// attacker who guesses both port and ID wins the race, so the forged
/// packets do arrive and would be taken if they matched.
#[test]
fn forwarded_questions_spread_ports_and_ids_and_forged_answers_lose() {
    let dir = TempDir::new("forgery");
    let Some(up) = SpoofingUpstream::start(&dir) else {
        return;
    };
    let policy = spoof_policy(&dir);
    let upstream = up.addr.to_string();
    let dns = Allowdns::serve(&[
        "--upstream",
        &upstream,
        "--policy",
        policy.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
    ]);
    let addresses = |name: &str| addresses(&dns, name);
    let dropped = || {
        let text = dns.scrape("/metrics");
        series_value::<f64>(&text, "allowdns_upstream_dropped_total")
    };

    let case_changed = || {
        let text = dns.scrape("/metrics");
        series_value::<f64>(&text, "allowdns_upstream_case_changed_total")
    };

    assert_eq!(addresses("guessed-1.f.test"), ["198.51.100.66"], "control");
    assert_eq!(dropped(), 0.0);
    // DNS 0x20: the name goes up in random case. An answer that guessed ID
    // and port but not the case is not taken: the name is asked again in
    // lower case, and the true answer to that is.
    let name = "caseforged-abcdefghijklmnopqrstuvwxyz.f.test";
    assert_eq!(addresses(name), ["192.0.2.1"], "a forged case was accepted");
    let asked = up.asked("caseforged-");
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_ne!(asked[0], name, "mixed case first");
    assert_eq!(asked[1], name, "then lower case");
    assert_eq!(case_changed(), 1.0);
    // A server that does not keep the case still answers: the name is
    // asked again, and the answer in another case is taken. The case the
    // client spelled never goes up, though such a server forces the retry.
    let spelled = "case-ABCdefGHIjklMNOpqrSTUvwxYZ.f.test";
    assert_eq!(addresses(spelled), ["192.0.2.1"]);
    let asked = up.asked("case-");
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[1], spelled.to_ascii_lowercase());
    assert_eq!(case_changed(), 2.0);
    // The client sees the name as it asked it, and names compressed
    // against it (a CNAME's target) spelled so too.
    let m = query(dns.udp, "case-Mixed.f.test", RecordType::A);
    let owners: Vec<String> = m.answers.iter().map(|r| r.name.to_string()).collect();
    assert_eq!(owners, ["case-Mixed.f.test."]);
    let m = query(dns.udp, "cname-abcdefgh.f.test", RecordType::A);
    let records: Vec<String> = m
        .answers
        .iter()
        .map(|r| format!("{} {}", r.name, r.data))
        .collect();
    assert_eq!(
        records,
        [
            "cname-abcdefgh.f.test. www.f.test.",
            "www.f.test. 192.0.2.1"
        ],
        "asked as {:?}",
        up.asked("cname-")
    );
    for i in 0..20 {
        for kind in ["wrongid", "wrongport", "wrongq"] {
            assert_eq!(
                addresses(&format!("{kind}-{i}.f.test")),
                ["192.0.2.1"],
                "a forged answer ({kind}) was accepted"
            );
        }
    }
    assert!(up.questions("wrongid-").len() >= 20);
    // The forged answers did reach allowdns's sockets: each was dropped.
    // (The copies from 127.0.0.99 may be filtered before; 64 wrong IDs, one
    // wrong port and one wrong question per name are not.)
    assert!(dropped() >= 20.0 * 66.0, "dropped {}", dropped());

    // 10,000 fresh names, 20 in flight at a time.
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut answered = 0;
    let mut rcodes = std::collections::BTreeMap::<u8, usize>::new();
    for batch in 0..500u16 {
        let mut waiting = std::collections::HashSet::new();
        for i in 0..20u16 {
            let id = batch * 20 + i;
            client
                .send_to(&a_question(id, &format!("q{id}.f.test")), dns.udp)
                .unwrap();
            waiting.insert(id);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 512];
        while !waiting.is_empty() && std::time::Instant::now() < deadline {
            if let Ok(n) = client.recv(&mut buf)
                && n >= 12
                && waiting.remove(&u16::from_be_bytes([buf[0], buf[1]]))
            {
                *rcodes.entry(buf[3] & 15).or_default() += 1;
                answered += usize::from(buf[3] & 15 == 0);
            }
        }
    }
    assert!(
        answered >= 9_900,
        "only {answered} of 10,000 answered (rcodes {rcodes:?})"
    );
    let seen = up.questions("q");
    assert!(seen.len() >= 9_900, "{} questions upstream", seen.len());
    let n = seen.len() as f64;

    // IDs: chi-square over 256 buckets (the high byte); 255 degrees of
    // freedom, mean 255, sd 22.6: 400 is over six sd out.
    let mut buckets = [0f64; 256];
    for (_, id) in &seen {
        buckets[usize::from(id >> 8)] += 1.0;
    }
    let expected = n / 256.0;
    let chi2: f64 = buckets
        .iter()
        .map(|o| (o - expected).powi(2) / expected)
        .sum();
    // No counter: consecutive questions rarely carry neighbouring IDs.
    let neighbours = seen
        .windows(2)
        .filter(|w| w[0].1.abs_diff(w[1].1) <= 16)
        .count();
    // Ports: at least 8 bits' worth in use, none carrying over 2% of the
    // questions, spread over a wide range.
    let mut ports = std::collections::HashMap::<u16, usize>::new();
    for (port, _) in &seen {
        *ports.entry(*port).or_default() += 1;
    }
    let busiest = ports.values().max().copied().unwrap_or(0);
    let span = ports.keys().max().unwrap() - ports.keys().min().unwrap();
    eprintln!(
        "{} questions: ID chi2 {chi2:.0} (256 buckets), {neighbours} neighbouring IDs; {} distinct ports, busiest {busiest}, span {span}",
        seen.len(),
        ports.len()
    );
    assert!(chi2 < 400.0, "IDs not spread: chi2 {chi2}");
    assert!(
        neighbours < seen.len() / 100,
        "IDs follow each other: {neighbours}"
    );
    assert!(ports.len() >= 256, "{} distinct source ports", ports.len());
    assert!(busiest * 50 <= seen.len(), "one port carried {busiest}");
    assert!(span >= 10_000, "source ports span only {span}");
    // Case: each letter of `qN.f.test` upper in about half the questions,
    // and nearly every one of the 64 patterns of its 6 letters in use.
    let asked = up.asked("q");
    let letters = |name: &str| -> Vec<bool> {
        name.bytes()
            .filter(u8::is_ascii_alphabetic)
            .map(|b| b.is_ascii_uppercase())
            .collect()
    };
    let patterns: std::collections::HashSet<Vec<bool>> = asked.iter().map(|n| letters(n)).collect();
    for at in 0..6 {
        let upper = asked.iter().filter(|n| letters(n)[at]).count();
        assert!(
            (0.45..0.55).contains(&(upper as f64 / asked.len() as f64)),
            "letter {at} upper in {upper} of {}",
            asked.len()
        );
    }
    assert!(patterns.len() >= 60, "{} case patterns", patterns.len());
}

/// TC over UDP: the same server is asked again over TCP, and its answer
/// there is the one relayed.
#[test]
fn a_truncated_upstream_answer_is_asked_again_over_tcp() {
    let dir = TempDir::new("tc");
    let Some(up) = SpoofingUpstream::start(&dir) else {
        return;
    };
    let policy = spoof_policy(&dir);
    let upstream = up.addr.to_string();
    let dns = Allowdns::forward(&upstream, &policy, &[]);
    assert_eq!(addresses(&dns, "tc-1.f.test"), ["192.0.2.1"]);
    let log = std::fs::read_to_string(&up.log).unwrap();
    let asked: Vec<&str> = log.lines().filter(|l| l.contains(" tc-1.f.test")).collect();
    assert_eq!(asked.len(), 2, "{log}");
    assert!(!asked[0].ends_with(" tcp"), "UDP first: {log}");
    assert!(asked[1].ends_with(" tcp"), "then TCP: {log}");
}

/// A UDP socket bound and never read: a forwarder that is down without
/// saying so (no ICMP). Counts the questions (not the root probe) sent to it.
struct Silent(std::net::UdpSocket);

impl Silent {
    fn bind(ip: &str) -> Silent {
        let s = std::net::UdpSocket::bind(format!("{ip}:0")).unwrap();
        s.set_nonblocking(true).unwrap();
        Silent(s)
    }

    fn addr(&self) -> String {
        self.0.local_addr().unwrap().to_string()
    }

    /// Questions received since the last call, the start-up probe's excluded.
    fn questions(&self) -> usize {
        let mut buf = [0u8; 512];
        let mut n = 0;
        while let Ok(len) = self.0.recv(&mut buf) {
            // A root question has an empty name: byte 12 is 0.
            n += usize::from(len > 12 && buf[12] != 0);
        }
        n
    }
}

#[test]
fn a_dead_first_forwarder_falls_over_to_the_second() {
    let dir = TempDir::new("failover");
    let Some(up) = SpoofingUpstream::start(&dir) else {
        return;
    };
    let dead = Silent::bind("127.0.0.12");
    let policy = spoof_policy(&dir);
    let config = dir.write("allowdns.yaml", "upstream:\n  timeout_ms: 400\n");
    let live = up.addr.to_string();
    let dns = forwarding_to(&[&dead.addr(), &live], &policy, &config);
    assert_eq!(addresses(&dns, "one.f.test"), ["192.0.2.1"]);
    assert_eq!(dead.questions(), 1, "the first server was asked first");
    // The one that answered is asked first from now on.
    for i in 0..5 {
        assert_eq!(addresses(&dns, &format!("next-{i}.f.test")), ["192.0.2.1"]);
    }
    assert_eq!(dead.questions(), 0);
    assert_eq!(up.questions("next-").len(), 5);
}

/// Every forwarder silent, each with more time than the deadline leaves:
/// the second is still asked, and the client gets SERVFAIL at the deadline
/// (`ANSWER_DEADLINE`, 6 s), not after both timeouts (10 s).
#[test]
fn silent_forwarders_give_servfail_at_the_answer_deadline() {
    let dir = TempDir::new("deadline");
    let (first, second) = (Silent::bind("127.0.0.12"), Silent::bind("127.0.0.13"));
    let policy = spoof_policy(&dir);
    let config = dir.write("allowdns.yaml", "upstream:\n  timeout_ms: 5000\n");
    let dns = forwarding_to(&[&first.addr(), &second.addr()], &policy, &config);
    let started = std::time::Instant::now();
    let m = query(dns.udp, "www.f.test", RecordType::A);
    let took = started.elapsed();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(m.answers.is_empty());
    assert_eq!((first.questions(), second.questions()), (1, 1));
    assert!(
        took >= Duration::from_millis(5900) && took < Duration::from_secs(9),
        "SERVFAIL after {took:?}"
    );
}

/// A forwarder that answers every question REFUSED with no question
/// section, as some servers and middleboxes do; stops on drop.
struct Refuser {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Refuser {
    fn start() -> Refuser {
        use std::sync::atomic::Ordering::Relaxed;
        let socket = std::net::UdpSocket::bind("127.0.0.14:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut buf, mut refused) = ([0u8; 512], 0);
            while !stopped.load(Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf)
                    && n >= 12
                {
                    // QR, opcode QUERY, RCODE 5 (REFUSED); every count 0.
                    let reply = [buf[0], buf[1], 0x80, 0x05, 0, 0, 0, 0, 0, 0, 0, 0];
                    socket.send_to(&reply, from).unwrap();
                    // The start-up probe asks for the root (an empty name).
                    refused += usize::from(n > 12 && buf[12] != 0);
                }
            }
            refused
        });
        Refuser {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Questions refused, the start-up probe's excluded; stops it.
    fn finish(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Refuser {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A refusal without a question section fails that server at once: the
/// next one is asked without waiting out the timeout (5 s here), and the
/// refusal never reaches the client as an answer.
#[test]
fn a_forwarder_refusing_without_a_question_is_passed_over_at_once() {
    let dir = TempDir::new("refused");
    let Some(up) = SpoofingUpstream::start(&dir) else {
        return;
    };
    let refuser = Refuser::start();
    // Control: the refuser does answer, REFUSED and with no question.
    let direct = exchange_udp(refuser.addr, &a_question(7, "x.f.test"), None);
    assert_eq!((direct[3] & 0x0f, direct[5]), (5, 0), "{direct:02x?}");
    let policy = spoof_policy(&dir);
    let config = dir.write("allowdns.yaml", "upstream:\n  timeout_ms: 5000\n");
    let (first, live) = (refuser.addr.to_string(), up.addr.to_string());
    let dns = forwarding_to(&[&first, &live], &policy, &config);
    let started = std::time::Instant::now();
    assert_eq!(addresses(&dns, "one.f.test"), ["192.0.2.1"]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    // The control's question and this one: the refuser was asked first.
    assert_eq!(refuser.finish(), 2);
    assert_eq!(up.questions("one.").len(), 1);
}
