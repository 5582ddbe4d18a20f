//! Audit records and alerts, read from the real binary's outputs.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

#[test]
fn one_audit_record_per_query_and_the_alert_users_expect() {
    let up = Upstream::start(
        "127.0.0.13",
        0,
        &[
            data("upstream/allowed.test.zone"),
            data("upstream/other.test.zone"),
            data("upstream/third.test.zone"),
        ],
    );
    let dir = TempDir::new("audit");
    let log = dir.0.join("audit.jsonl");
    let upstream = up.addr.to_string();
    let policy = data("policy.yaml");
    let dns = Allowdns::serve(&[
        "--upstream",
        &upstream,
        "--policy",
        policy.to_str().unwrap(),
        "--audit-log",
        log.to_str().unwrap(),
    ]);

    assert_eq!(
        rcode(dns.udp, "www.allowed.test", RecordType::A),
        ResponseCode::NoError
    );
    assert_eq!(
        rcode(dns.udp, "hop.other.test", RecordType::A),
        ResponseCode::NoError
    );
    assert_eq!(
        rcode(dns.udp, "sketchy-mirror.example.com", RecordType::A),
        ResponseCode::NXDomain
    );
    let refused = query_from(dns.udp, "www.allowed.test", RecordType::A, "127.0.0.2");
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    // A flood of unique denied names: every one audited, a few alerts.
    for i in 0..300 {
        query(
            dns.udp,
            &format!("chunk{i}.tunnel.example"),
            RecordType::TXT,
        );
    }
    let (status, stderr) = dns.terminate();
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status:?}\n{stderr}"
    );

    let records = read_audit(&log);
    assert_eq!(
        records.len(),
        4 + 300,
        "one record per query, flushed on SIGTERM"
    );

    let www = &records[0];
    assert_eq!(www["decision"], "allow");
    assert_eq!(www["agent"], "test_agent");
    assert_eq!(www["qname"], "www.allowed.test");
    assert_eq!(www["qtype"], "A");
    assert_eq!(www["rule"], "www.allowed.test");
    assert_eq!(www["dynamic"], false);
    assert_eq!(www["rcode"], "NOERROR");
    assert_eq!(www["answers"][0]["name"], "www.allowed.test");
    assert_eq!(www["answers"][0]["type"], "A");
    assert_eq!(www["answers"][0]["ttl"], 300);
    assert_eq!(www["answers"][0]["data"], "192.0.2.1");
    assert!(www["upstream_ms"].as_f64().unwrap() > 0.0);
    assert!(www["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    let ts = www["ts"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.contains('T'), "RFC 3339 UTC: {ts}");

    let hop = &records[1];
    assert_eq!(hop["decision"], "allow");
    assert_eq!(hop["dynamic"], true);
    assert_eq!(hop["rule"], "*.other.test");
    assert_eq!(
        hop["answers"].as_array().unwrap().len(),
        2,
        "CNAME and the A behind it"
    );

    let denied = &records[2];
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["rule"], serde_json::Value::Null);
    assert_eq!(denied["rcode"], "NXDOMAIN");
    assert_eq!(denied["upstream_ms"], serde_json::Value::Null);
    assert_eq!(denied["answers"].as_array().unwrap().len(), 0);

    let refused = &records[3];
    assert_eq!(refused["decision"], "refused");
    assert_eq!(refused["agent"], serde_json::Value::Null);
    assert_eq!(refused["rcode"], "REFUSED");
    assert!(
        refused["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.2:")
    );

    assert!(records[4..].iter().all(|r| r["decision"] == "deny"));

    // The alert, in the shape users expect.
    let alert_at = stderr
        .find("[!] UNEXPECTED DNS LOOKUP")
        .expect("alert printed");
    let alert: Vec<&str> = stderr[alert_at..].lines().take(7).collect();
    assert!(
        alert[1].starts_with("Timestamp: ") && alert[1].ends_with('Z'),
        "{alert:?}"
    );
    assert_eq!(alert[2], "Agent: test_agent");
    assert!(alert[3].starts_with("Client: 127.0.0.1:"), "{alert:?}");
    assert_eq!(alert[4], "Query: sketchy-mirror.example.com A");
    assert_eq!(alert[5], "Action: NXDOMAIN");
    assert_eq!(alert[6], "Rule Matched: NONE - name not in allow-list");
    // Five names in full (the first four of the flood), the rest summed up.
    assert_eq!(
        stderr.matches("UNEXPECTED DNS LOOKUP").count(),
        5,
        "the flood was aggregated:\n{stderr}"
    );
    assert!(
        stderr.contains("[!] ... and 296 more denied lookups from 127.0.0.1 (agent test_agent)"),
        "{stderr}"
    );
    assert_eq!(
        up.names().iter().filter(|n| n.contains("tunnel")).count(),
        0
    );
}
