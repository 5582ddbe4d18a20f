//! The README's offline demo, run as written (on port 0), queried with dig.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

#[test]
fn the_readme_demo_answers_offline_from_zones() {
    let policy = repo("policies/travel_agent_v1.yaml");
    let zones = repo("zones");
    let dns = Allowdns::serve_offline(&policy, &zones);

    let m = query(dns.udp, "api.company-internal.com", RecordType::A);
    assert_eq!(
        answers(&m),
        vec![(
            "api.company-internal.com".into(),
            "A".into(),
            "192.0.2.10".into()
        )]
    );
    assert!(
        m.metadata.authoritative,
        "local zone answers are authoritative"
    );

    // The exact name's subdomain exists in the zone, and is still denied.
    let m = query(dns.udp, "x.weather.service.com", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // A CNAME from an allowed name to a name nobody listed (the CDN case).
    let m = query(dns.udp, "cdn.company-internal.com", RecordType::A);
    assert_eq!(answers(&m).last().unwrap().2, "198.51.100.30");

    // Allowed but in no local zone, with no upstream: SERVFAIL, never an answer from elsewhere.
    let m = query(dns.udp, "weather.service.com.cdn.example", RecordType::A);
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NXDomain,
        "not allowed at all"
    );

    if let Some(out) = dig(dns.udp, &["sketchy-mirror.example.com"]) {
        assert!(out.contains("status: NXDOMAIN"), "{out}");
        assert!(out.contains("SOA\tallowdns.invalid."), "{out}");
    }
    if let Some(out) = dig(dns.udp, &["+short", "weather.service.com"]) {
        assert_eq!(out.trim(), "198.51.100.20");
    }
    let (status, stderr) = dns.terminate();
    assert!(status.success());
    // The first denial is itemized; the later ones are summarized.
    assert!(
        stderr.contains("Query: x.weather.service.com A"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[!] ... and 2 more denied lookups from 127.0.0.1"),
        "{stderr}"
    );
}

#[test]
fn without_an_upstream_non_local_names_get_servfail() {
    let dir = TempDir::new("none");
    let policy = dir.write(
        "p.yaml",
        "agent_name: a\nexpected_outbound:\n  - destination: elsewhere.example\n",
    );
    let dns = Allowdns::serve(&["--policy", policy.to_str().unwrap(), "--upstream", "none"]);
    let m = query(dns.udp, "elsewhere.example", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}
