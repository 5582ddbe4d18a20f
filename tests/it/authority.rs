//! Addresses in an upstream's AUTHORITY section never reach a client: only
//! SOA and NS records are kept there, and what was removed is audited.

use crate::common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

/// A raw upstream on `ip`: every question is answered with `192.0.2.1` (for
/// A) and, in the authority section, an A 169.254.169.254 or AAAA fe80::1
/// for the question's name plus an NS. Runs until `stop`.
fn evil_upstream(ip: &str, stop: Instant) -> SocketAddr {
    let sock = UdpSocket::bind(format!("{ip}:0")).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while Instant::now() < stop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let q = &buf[..n];
            let mut i = 12;
            while q[i] != 0 {
                i += 1 + q[i] as usize;
            }
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            let qend = i + 5;
            let rr = |t: u16, rdata: &[u8]| {
                let mut r = vec![0xc0, 0x0c];
                r.extend_from_slice(&t.to_be_bytes());
                r.extend_from_slice(&[0, 1, 0, 0, 1, 44]);
                r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                r.extend_from_slice(rdata);
                r
            };
            let (an, ns): (Vec<Vec<u8>>, Vec<Vec<u8>>) = match qtype {
                1 => (
                    vec![rr(1, &[192, 0, 2, 1])],
                    vec![rr(1, &[169, 254, 169, 254])],
                ),
                28 => {
                    let fe80: std::net::Ipv6Addr = "fe80::1".parse().unwrap();
                    (vec![], vec![rr(28, &fe80.octets())])
                }
                _ => (vec![], vec![]),
            };
            let mut ns = ns;
            // An NS for the question's name: kept.
            ns.push(rr(2, &[2, b'n', b's', 0xc0, 0x0c]));
            let mut reply = q[..2].to_vec();
            reply.extend_from_slice(&[0x81, 0x80, 0, 1]);
            reply.extend_from_slice(&(an.len() as u16).to_be_bytes());
            reply.extend_from_slice(&(ns.len() as u16).to_be_bytes());
            reply.extend_from_slice(&[0, 0]);
            reply.extend_from_slice(&q[12..qend]);
            for r in an.iter().chain(&ns) {
                reply.extend_from_slice(r);
            }
            let _ = sock.send_to(&reply, from);
        }
    });
    addr
}

fn authority_addresses(m: &Message) -> Vec<IpAddr> {
    m.authorities
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

#[test]
fn addresses_in_the_upstreams_authority_section_are_removed_and_audited() {
    let up = evil_upstream("127.0.0.25", Instant::now() + Duration::from_secs(60));
    // Positive control: the upstream does put them there.
    let direct = query(up, "auth.cdn.test", RecordType::A);
    assert_eq!(
        authority_addresses(&direct),
        vec!["169.254.169.254".parse::<IpAddr>().unwrap()]
    );
    let direct6 = query(up, "auth.cdn.test", RecordType::AAAA);
    assert_eq!(
        authority_addresses(&direct6),
        vec!["fe80::1".parse::<IpAddr>().unwrap()]
    );

    let dir = TempDir::new("authority");
    let policy = dir.write(
        "policy.yaml",
        "agent_name: auth_agent\nclients: [\"127.0.0.1/32\"]\nallowed_dynamic_resolution: [\"*.cdn.test\"]\n",
    );
    let log = dir.0.join("audit.jsonl");
    let upstream = up.to_string();
    let config = dir.write(
        "allowdns.yaml",
        "upstream:\n  allow_private_servers: true\n",
    );
    let dns = Allowdns::upstream_audit(
        &upstream,
        &policy,
        &log,
        &["--config", config.to_str().unwrap()],
    );
    // Twice each: from the upstream, then from the cache.
    for _ in 0..2 {
        let a = query(dns.udp, "auth.cdn.test", RecordType::A);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(answers(&a).len(), 1, "the answer itself is kept");
        assert!(authority_addresses(&a).is_empty(), "{:?}", a.authorities);
        let aaaa = query(dns.udp, "auth.cdn.test", RecordType::AAAA);
        assert!(
            authority_addresses(&aaaa).is_empty(),
            "{:?}",
            aaaa.authorities
        );
        // The NS stays.
        assert!(
            aaaa.authorities
                .iter()
                .any(|r| r.record_type() == RecordType::NS),
            "{:?}",
            aaaa.authorities
        );
    }
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    let records = read_audit(&log);
    let stripped: Vec<_> = records
        .iter()
        .filter(|r| r["qname"] == "auth.cdn.test")
        .map(|r| r["stripped"].clone())
        .collect();
    assert_eq!(stripped.len(), 4, "{records:?}");
    for (i, s) in stripped.iter().enumerate() {
        let want = if i % 2 == 0 {
            "169.254.169.254"
        } else {
            "fe80::1"
        };
        assert_eq!(*s, serde_json::json!([want]), "record {i}");
    }
}
