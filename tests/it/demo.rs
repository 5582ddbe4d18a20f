//! The README's offline demo, run as written (on port 0), queried with dig;
//! and its marked blocks (`<!-- readme-test: … -->`) run and compared with
//! what allowdns prints. The `run` blocks need root: tests/it/kennel.rs.

use crate::common;

use std::process::Command;

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
        assert_has(&out, "status: NXDOMAIN");
        assert_has(&out, "SOA\tallowdns.invalid.");
    }
    if let Some(out) = dig(dns.udp, &["+short", "weather.service.com"]) {
        assert_eq!(out.trim(), "198.51.100.20");
    }
    let (status, stderr) = dns.terminate();
    assert!(status.success());
    // Each new denied name within the minute is itemized, none summarized.
    for name in ["x.weather.service.com", "weather.service.com.cdn.example"] {
        assert_has(&stderr, &format!("Query: {name} A"));
    }
    assert_lacks(&stderr, "more denied lookups");
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

#[test]
fn the_readme_blocks_show_what_allowdns_prints() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let serve = readme
        .lines()
        .find(|l| l.starts_with("allowdns serve "))
        .expect("the README starts the demo with allowdns serve");
    let mut args: Vec<&str> = serve.split_whitespace().skip(2).collect();
    if let Some(i) = args.iter().position(|a| *a == "--listen") {
        args.drain(i..i + 2);
    }
    let dir = TempDir::new("readme");
    let log = dir.0.join("audit.jsonl");
    // A generous attribution budget: the blocks show the process named, and
    // a debug build on a loaded machine may take past the default 5 ms.
    let config = dir.write("allowdns.yaml", "alerts:\n  attribution_budget_ms: 1000\n");
    args.extend(["--audit-log", log.to_str().unwrap()]);
    args.extend(["--config", config.to_str().unwrap()]);
    // The README's relative paths name files of this checkout.
    let args: Vec<String> = args
        .iter()
        .map(|a| match repo(a).exists() && !a.starts_with('-') {
            true => repo(a).to_str().unwrap().to_string(),
            false => a.to_string(),
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dns = Allowdns::serve(&args);
    let blocks = readme_blocks();
    let kinds: Vec<&str> = blocks.iter().map(|b| b.kind.as_str()).collect();
    // Positive control: the marked blocks are found.
    for kind in ["dig", "stderr", "audit", "run"] {
        assert!(kinds.contains(&kind), "no {kind} block in {kinds:?}");
    }
    let has_dig = Command::new("dig")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_dig {
        require_or_skip("dig is not installed (apt: dnsutils)");
        return;
    }
    for block in blocks.iter().filter(|b| b.kind == "dig") {
        for (cmd, shown) in console_commands(block) {
            assert!(cmd.starts_with("dig "), "{cmd}");
            let cmd = cmd.replace("-p 5353", &format!("-p {}", dns.udp.port()));
            let out = Command::new("sh").args(["-c", &cmd]).output().unwrap();
            let out = String::from_utf8_lossy(&out.stdout);
            let missing = missing_lines(&shown, &out);
            assert!(missing.is_empty(), "{cmd}: missing {missing:#?} in\n{out}");
        }
    }
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    // The chain of parent processes is the reader's machine's, not ours.
    for block in blocks.iter().filter(|b| b.kind == "stderr") {
        let shown: Vec<String> = block
            .lines
            .iter()
            .filter(|l| !l.starts_with("Parents: "))
            .cloned()
            .collect();
        let missing = missing_lines(&shown, &stderr);
        assert!(missing.is_empty(), "missing {missing:#?} in\n{stderr}");
    }
    let without_parents = |line: &str| match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(mut record)) => {
            record.remove("parents");
            serde_json::Value::Object(record).to_string()
        }
        _ => line.to_string(),
    };
    let audit = std::fs::read_to_string(&log).unwrap();
    let audit: String = audit.lines().map(|l| without_parents(l) + "\n").collect();
    for block in blocks.iter().filter(|b| b.kind == "audit") {
        let shown: Vec<String> = block.lines.iter().map(|l| without_parents(l)).collect();
        let missing = missing_lines(&shown, &audit);
        assert!(missing.is_empty(), "missing {missing:#?} in\n{audit}");
    }
}
