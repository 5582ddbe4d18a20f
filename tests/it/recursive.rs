//! Recursive mode against a private root → TLD → zone hierarchy on loopback.
//! The recursor talks to port 53, so this needs root (it runs as root in CI).

use crate::common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

#[test]
fn recursion_from_private_root_hints() {
    if !is_root() {
        require_or_skip("recursive test binds 127.0.0.20-22:53 and needs root");
        return;
    }
    let root = Upstream::start("127.0.0.20", 53, &[data("recursive/root.zone")]);
    let tld = Upstream::start("127.0.0.21", 53, &[data("recursive/test.zone")]);
    let corp = Upstream::start("127.0.0.22", 53, &[data("recursive/corp.test.zone")]);
    let config = data("recursive/config.yaml");
    let dns = Allowdns::serve(&["--config", config.to_str().unwrap()]);

    let m = query(dns.udp, "www.corp.test", RecordType::A);
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NoError,
        "{m:?}\n{}",
        dns.stderr()
    );
    assert_eq!(
        answers(&m),
        vec![("www.corp.test".into(), "A".into(), "192.0.2.80".into())]
    );
    assert!(
        !root.names_but_probe().is_empty(),
        "the walk started at the private root"
    );
    assert!(!tld.names().is_empty(), "and went through the TLD");

    let m = query(dns.udp, "alias.corp.test", RecordType::A);
    assert_eq!(answers(&m).last().unwrap().2, "192.0.2.80");

    let m = query(dns.udp, "missing.corp.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        m.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA)
    );

    let m = query(dns.udp, "secret.corp.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    for server in [&root, &tld, &corp] {
        assert!(
            !server.names().iter().any(|n| n.starts_with("secret")),
            "denied name went upstream"
        );
    }
}
