//! One agent flooding names its upstream never answers must not starve the
//! other agents' lookups: each agent has its own share of the upstream slots
//! (`upstream.max_pending_per_agent`), under the global ceiling.

use crate::common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

/// Agent A on 127.0.0.1 asks `www.allowed.test`; agent B on 127.0.0.2 floods
/// `slow.allowed.test`, which the upstream answers only after 3 s.
fn serve(up: &Upstream, dir: &TempDir, upstream_limits: &str) -> Allowdns {
    let policies = dir.0.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("a.yaml"),
        "agent_name: agent_a\nclients: [\"127.0.0.1/32\"]\nexpected_outbound:\n  - destination: www.allowed.test\n  - destination: slow.allowed.test\n",
    )
    .unwrap();
    std::fs::write(
        policies.join("b.yaml"),
        "agent_name: agent_b\nclients: [\"127.0.0.2/32\"]\nexpected_outbound:\n  - destination: slow.allowed.test\n",
    )
    .unwrap();
    let config = dir.write("allowdns.yaml", &format!("upstream:\n{upstream_limits}"));
    let upstream = up.addr.to_string();
    Allowdns::forward(
        &upstream,
        &policies,
        &["--config", config.to_str().unwrap()],
    )
}

/// Agent B sends `n` questions for its slow name and does not wait; returns
/// the socket (its replies arrive later).
fn flood(dns: &Allowdns, n: u16) -> UdpSocket {
    flood_from(dns, n, "127.0.0.2")
}

fn flood_from(dns: &Allowdns, n: u16, from: &str) -> UdpSocket {
    let sock = UdpSocket::bind(format!("{from}:0")).unwrap();
    for id in 0..n {
        let mut msg = Message::query();
        msg.metadata.id = id;
        msg.metadata.recursion_desired = true;
        msg.add_query(hickory_proto::op::Query::query(
            "slow.allowed.test.".parse().unwrap(),
            RecordType::A,
        ));
        sock.send_to(&msg.to_vec().unwrap(), dns.udp).unwrap();
    }
    // Let them all reach the upstream.
    std::thread::sleep(Duration::from_millis(300));
    sock
}

#[test]
fn one_agents_flood_does_not_starve_another_agents_lookups() {
    let up = Upstream::start("127.0.0.24", 0, &[data("upstream/allowed.test.zone")]);
    up.delays
        .lock()
        .unwrap()
        .insert("slow.allowed.test".into(), Duration::from_secs(3));

    // Positive control: one shared bound of 8 and no smaller share: B's 20
    // slow questions take every slot and A's own allowed name fails.
    let dir = TempDir::new("share-control");
    let dns = serve(&up, &dir, "  max_pending: 8\n  max_pending_per_agent: 8\n");
    let _b = flood(&dns, 20);
    let a = query(dns.udp, "www.allowed.test", RecordType::A);
    assert_eq!(
        a.metadata.response_code,
        ResponseCode::ServFail,
        "starved under one shared bound"
    );
    drop(dns);

    // With per-agent shares (4 of the 8), B is held to its share and A is
    // still answered.
    let dir = TempDir::new("share-fenced");
    let dns = serve(&up, &dir, "  max_pending: 8\n  max_pending_per_agent: 4\n");
    let b = flood(&dns, 20);
    let a = query(dns.udp, "www.allowed.test", RecordType::A);
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        answers(&a),
        vec![(
            "www.allowed.test".to_string(),
            "A".to_string(),
            "192.0.2.1".to_string()
        )]
    );
    // B's questions beyond its share were answered SERVFAIL at once.
    b.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 512];
    let mut servfail = 0;
    while let Ok(n) = b.recv(&mut buf) {
        let m = Message::from_vec(&buf[..n]).unwrap();
        if m.metadata.response_code == ResponseCode::ServFail {
            servfail += 1;
        }
    }
    assert!(servfail >= 16, "B over its share: {servfail} SERVFAIL");
}

#[test]
fn identical_questions_in_flight_are_merged_per_agent() {
    let up = Upstream::start("127.0.0.26", 0, &[data("upstream/allowed.test.zone")]);
    up.delays
        .lock()
        .unwrap()
        .insert("slow.allowed.test".into(), Duration::from_secs(1));
    let dir = TempDir::new("share-merge");
    let dns = serve(
        &up,
        &dir,
        "  max_pending: 64\n  max_pending_per_agent: 32\n",
    );
    // Baseline: what one question costs the upstream (a retry may send
    // more than one datagram per exchange), from agent A. Then five
    // identical questions at once from agent B (whose cache is its own).
    let mut per_agent = Vec::new();
    for (from, n) in [("127.0.0.1", 1), ("127.0.0.2", 5)] {
        let before = up.count("slow.allowed.test");
        let sock = flood_from(&dns, n, from);
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        for _ in 0..n {
            let got = sock.recv(&mut buf).expect("every question answered");
            let m = Message::from_vec(&buf[..got]).unwrap();
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        }
        per_agent.push(up.count("slow.allowed.test") - before);
    }
    // Five merged questions cost what one does.
    assert!(per_agent[0] >= 1, "{per_agent:?}");
    assert_eq!(per_agent[1], per_agent[0], "{:?}", up.names());
}

/// Agents past the 254 the metrics table names get a share each: each
/// policy has an id of its own (not the table's last slot, which would
/// share one upstream share, cache partition and merging), so agent #300's
/// flood cannot starve agent #299.
#[test]
fn agents_past_the_metrics_table_have_shares_of_their_own() {
    let up = Upstream::start("127.0.0.27", 0, &[data("upstream/allowed.test.zone")]);
    up.delays
        .lock()
        .unwrap()
        .insert("slow.allowed.test".into(), Duration::from_secs(3));
    let dir = TempDir::new("share-300");
    let policies = dir.0.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    // Agent i (0-based, loaded in file order) asks from 127.1.(i / 200).(i % 200 + 1).
    let client = |i: usize| format!("127.1.{}.{}", i / 200, i % 200 + 1);
    for i in 0..300 {
        std::fs::write(
            policies.join(format!("a{i:03}.yaml")),
            format!(
                "agent_name: agent_{i:03}\nclients: [\"{}/32\"]\nexpected_outbound:\n  - destination: www.allowed.test\n  - destination: slow.allowed.test\n",
                client(i)
            ),
        )
        .unwrap();
    }
    let config = dir.write(
        "allowdns.yaml",
        "upstream:\n  max_pending: 64\n  max_pending_per_agent: 4\n",
    );
    let upstream = up.addr.to_string();
    let dns = Allowdns::forward(
        &upstream,
        &policies,
        &["--config", config.to_str().unwrap()],
    );
    let (a299, a300) = (client(298), client(299));
    // Agent #300 floods its slow name: 20 questions, 4 may wait upstream.
    let _flood = flood_from(&dns, 20, &a300);
    // Positive control: the flood holds #300's whole share.
    let own = query_from(dns.udp, "www.allowed.test", RecordType::A, &a300);
    assert_eq!(
        own.metadata.response_code,
        ResponseCode::ServFail,
        "the flooding agent is held to its share"
    );
    // Agent #299 is answered from a share of its own.
    let other = query_from(dns.udp, "www.allowed.test", RecordType::A, &a299);
    assert_eq!(other.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        answers(&other),
        vec![(
            "www.allowed.test".to_string(),
            "A".to_string(),
            "192.0.2.1".to_string()
        )]
    );
}
