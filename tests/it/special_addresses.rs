//! Special-purpose addresses without a namespace: the real binary answering
//! from local zones (which are not exempt), with dig as the client, and
//! `check` on opt-ins. The netns half is tests/it/fence_netns.rs.

use crate::common;

use std::process::Command;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

const ZONE: &str = "$ORIGIN corp.test.\n$TTL 300\n@ IN SOA ns.corp.test. h.corp.test. 1 3600 600 86400 5\n\
    meta IN A 169.254.169.254\napi IN A 10.20.1.5\nother IN A 10.20.1.6\nalias IN CNAME api.corp.test.\n\
    svc IN HTTPS 1 . alpn=h2 ipv4hint=10.9.9.9,203.0.113.12 ipv6hint=fe80::1,2001:db8::12\n\
    pub IN A 203.0.113.10\nnat64 IN AAAA 64:ff9b::a9fe:a9fe\nnat64ok IN AAAA 64:ff9b::cb00:710a\n";

fn serve(policy: &str) -> (Allowdns, TempDir) {
    let dir = TempDir::new("special");
    let policy = dir.write("p.yaml", policy);
    let zones = dir.zones(&[("corp.test.zone", ZONE)]);
    let audit = dir.0.join("audit.jsonl");
    let dns = Allowdns::offline_audit(&policy, &zones, &audit, &[]);
    (dns, dir)
}

#[test]
fn local_zones_are_not_exempt_and_the_opt_in_is_per_entry() {
    let (dns, dir) = serve(
        "agent_name: corp\nexpected_outbound:\n  - destination: \"*.corp.test\"\n  - destination: api.corp.test\n    private: [10.20.0.0/16]\n",
    );
    // Positive control: the opted-in name hands out its 10.x address.
    let m = query(dns.udp, "api.corp.test", RecordType::A);
    assert_eq!(answers(&m)[0].2, "10.20.1.5");
    // The same range under the wildcard, which did not opt in: NODATA.
    for name in ["other.corp.test", "meta.corp.test"] {
        let m = query(dns.udp, name, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(m.answers.is_empty(), "{name}: {:?}", answers(&m));
    }
    // The opt-in follows the rule the question matched, not the CNAME target.
    let m = query(dns.udp, "alias.corp.test", RecordType::A);
    assert!(m.answers.is_empty(), "{:?}", answers(&m));
    // NAT64 of the metadata address goes; NAT64 of a public one stays.
    assert!(
        query(dns.udp, "nat64.corp.test", RecordType::AAAA)
            .answers
            .is_empty()
    );
    assert_eq!(
        query(dns.udp, "nat64ok.corp.test", RecordType::AAAA)
            .answers
            .len(),
        1
    );
    // HTTPS hints, seen by a real client.
    let out = dig(dns.udp, &["svc.corp.test", "HTTPS", "+short"]).expect("dig");
    assert_has(&out, "203.0.113.12");
    assert_has(&out, "2001:db8::12");
    assert_lacks(&out, "10.9.9.9");
    assert_lacks(&out, "fe80::1");
    assert_eq!(
        query(dns.udp, "pub.corp.test", RecordType::A).answers.len(),
        1
    );
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    assert_has(&stderr, "SPECIAL-PURPOSE ADDRESS STRIPPED");
    let records = read_audit(&dir.0.join("audit.jsonl"));
    let svc = records
        .iter()
        .find(|r| r["qname"] == "svc.corp.test")
        .unwrap();
    assert_eq!(svc["stripped"], serde_json::json!(["10.9.9.9", "fe80::1"]));
    let api = records
        .iter()
        .find(|r| r["qname"] == "api.corp.test")
        .unwrap();
    assert!(api.get("stripped").is_none(), "{api}");
}

#[test]
fn check_warns_when_a_wildcard_opts_in_and_names_bad_ranges() {
    let dir = TempDir::new("special-check");
    let run = |text: &str| {
        let p = dir.write("p.yaml", text);
        let out = Command::new(bin())
            .args([
                "check",
                "--policy",
                p.to_str().unwrap(),
                "--upstream",
                "none",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text, p.display().to_string())
    };
    let (code, out, file) = run(
        "agent_name: w\nallowed_dynamic_resolution:\n  - pattern: \"*.cdn.test\"\n    private: [10.0.0.0/8]\n",
    );
    assert_eq!(code, Some(0), "{out}");
    assert_has(
        &out,
        &format!(
            "warning: {file}:3: allowed_dynamic_resolution[0].private: the wildcard '*.cdn.test' opts in"
        ),
    );
    let (code, out, file) = run(
        "agent_name: w\nexpected_outbound:\n  - destination: api.test\n    private: [10.0.0.0/33]\ninbound:\n  - port: 8080\n    protocol: icmp\n",
    );
    assert_eq!(code, Some(1), "{out}");
    assert_has(&out, &format!("{file}:4: expected_outbound[0].private[0]"));
    assert_has(&out, &format!("{file}:7: inbound[0].protocol"));
}

/// The Extended DNS Error (RFC 8914) of one dig answer: "15 (Blocked): (text)".
fn ede(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("; EDE: "))
        .map(str::to_string)
}

/// Denials say why on the wire, to a client that sent EDNS: Blocked for a
/// name outside the allowlist, Filtered for stripped special-purpose
/// addresses, Prohibited for exfiltration refusals. dig shows it.
#[test]
fn denials_say_why_with_an_extended_dns_error() {
    let dir = TempDir::new("ede");
    let up_zone = dir.write(
        "up.test.zone",
        "$ORIGIN up.test.\n$TTL 300\n@ IN SOA ns.up.test. h.up.test. 1 3600 600 86400 5\n* IN A 203.0.113.7\n",
    );
    let upstream = Upstream::start("127.0.0.1", 0, &[up_zone]);
    let policy = dir.write(
        "p.yaml",
        "agent_name: corp\nexpected_outbound:\n  - destination: \"*.corp.test\"\n  - destination: \"*.up.test\"\nexfil:\n  soft_bytes: 8\n  hard_bytes: 8\n",
    );
    let zones = dir.zones(&[("corp.test.zone", ZONE)]);
    let up = upstream.addr.to_string();
    let dns = Allowdns::forward(&up, &policy, &["--zones", zones.to_str().unwrap()]);
    let Some(allowed) = dig(dns.udp, &["pub.corp.test", "A"]) else {
        return;
    };
    assert_has(&allowed, "203.0.113.10");
    assert_eq!(ede(&allowed), None, "an allowed answer carries no EDE");
    let blocked = dig(dns.udp, &["evil.example", "A"]).unwrap();
    assert_has(&blocked, "NXDOMAIN");
    let why = ede(&blocked).unwrap_or_else(|| panic!("{blocked}"));
    assert!(
        why.starts_with("15 (Blocked)") && why.contains("allowdns") && why.contains("'corp'"),
        "{why}"
    );
    // Without EDNS, the answer is as before: no OPT record, no EDE.
    let plain = dig(dns.udp, &["+noedns", "evil.example", "A"]).unwrap();
    assert!(
        plain.contains("NXDOMAIN") && ede(&plain).is_none(),
        "{plain}"
    );
    let filtered = dig(dns.udp, &["meta.corp.test", "A"]).unwrap();
    assert_lacks(&filtered, "169.254.169.254\n");
    let why = ede(&filtered).unwrap_or_else(|| panic!("{filtered}"));
    assert!(
        why.starts_with("17 (Filtered)") && why.contains("allowdns"),
        "{why}"
    );
    let qtype = dig(dns.udp, &["pub.corp.test", "TXT"]).unwrap();
    let why = ede(&qtype).unwrap_or_else(|| panic!("{qtype}"));
    assert!(
        qtype.contains("REFUSED") && why.starts_with("18 (Prohibited)"),
        "{why}"
    );
    // New names under the wildcard until the 8-byte budget refuses one.
    let refused = (0..20)
        .map(|i| dig(dns.udp, &[&format!("n{i}-abcdefgh.up.test"), "A"]).unwrap())
        .find(|out| out.contains("REFUSED"))
        .expect("the budget refuses a new name");
    let why = ede(&refused).unwrap_or_else(|| panic!("{refused}"));
    assert!(
        why.starts_with("18 (Prohibited)") && why.contains("budget"),
        "{why}"
    );
}
