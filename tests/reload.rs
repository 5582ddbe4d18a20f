//! SIGHUP reloads policies and zones atomically; a bad file keeps the old set.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

fn hup(dns: &Allowdns) {
    assert!(
        Command::new("kill")
            .args(["-HUP", &dns.pid().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

fn wait_for(dns: &Allowdns, text: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while dns.stderr().matches(text).count() < count {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in:\n{}",
            dns.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_swaps_policies_and_keeps_the_old_set_on_errors() {
    let dir = TempDir::new("reload");
    let zones = dir.0.join("zones");
    std::fs::create_dir(&zones).unwrap();
    std::fs::write(
        zones.join("r.test.zone"),
        "$ORIGIN r.test.\n$TTL 60\n@ IN SOA ns. h. 1 3600 600 86400 5\na IN A 192.0.2.1\nb IN A 192.0.2.2\nkeep IN A 192.0.2.3\n",
    )
    .unwrap();
    let policy = dir.write("p.yaml", "agent_name: r\nexpected_outbound:\n  - destination: a.r.test\n  - destination: keep.r.test\n");
    let dns = Allowdns::serve_offline(&policy, &zones);
    assert_eq!(
        rcode(dns.udp, "a.r.test", RecordType::A),
        ResponseCode::NoError
    );
    assert_eq!(
        rcode(dns.udp, "b.r.test", RecordType::A),
        ResponseCode::NXDomain
    );

    // Queries never stop while the policy is reloaded, and none goes unanswered.
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, wrong) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, answered, wrong, server) =
            (stop.clone(), answered.clone(), wrong.clone(), dns.udp);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let m = query(server, "keep.r.test", RecordType::A);
                answered.fetch_add(1, Ordering::Relaxed);
                if m.metadata.response_code != ResponseCode::NoError {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    std::fs::write(&policy, "agent_name: r\nexpected_outbound:\n  - destination: b.r.test\n  - destination: keep.r.test\n").unwrap();
    for round in 1..=5 {
        hup(&dns);
        wait_for(&dns, "reloaded", round);
    }
    assert_eq!(
        rcode(dns.udp, "b.r.test", RecordType::A),
        ResponseCode::NoError
    );
    assert_eq!(
        rcode(dns.udp, "a.r.test", RecordType::A),
        ResponseCode::NXDomain
    );
    let stderr = dns.stderr();
    assert!(
        stderr.contains("reload: agent r: added b.r.test"),
        "{stderr}"
    );
    assert!(
        stderr.contains("reload: agent r: removed a.r.test"),
        "{stderr}"
    );

    // A broken file: the old set stays, and the alert names file:line.
    std::fs::write(
        &policy,
        "agent_name: r\nexpected_outbound:\n  - destination: \"bad..name\"\n",
    )
    .unwrap();
    hup(&dns);
    wait_for(&dns, "RELOAD FAILED", 1);
    assert!(
        dns.stderr().contains(&format!(
            "{}:3: expected_outbound[0].destination",
            policy.display()
        )),
        "{}",
        dns.stderr()
    );
    assert_eq!(
        rcode(dns.udp, "b.r.test", RecordType::A),
        ResponseCode::NoError
    );

    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(answered.load(Ordering::Relaxed) > 50, "the load loop ran");
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "a query failed during reloads"
    );
}
