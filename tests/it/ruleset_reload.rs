//! Surviving a ruleset reload: `nft -f` of the printed ruleset
//! recreates allowdns's sets empty; allowdns notices (nftables netlink
//! events) and re-feeds the live elements, so connections to names whose
//! answers are still cached work again within a bounded time.
//!
//! The agent lab ([`netns::Agent`]): A, the agent, fenced by the printed
//! ruleset; I, "the internet", with echo services on 192.0.2.0/24. allowdns
//! runs in the test's own namespace (not R) and feeds A's sets; queries go
//! to it over loopback.

use crate::common;

use std::time::{Duration, Instant};

use common::netns::Agent as Lab;
use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

fn lab() -> Lab {
    Lab::new("adns-rl", |ns| ns.ip("i", "addr add 192.0.2.0/24 dev lo"))
}

/// `nft -f` inside A, as an operator reloads the fence.
fn load(lab: &Lab, file: &std::path::Path) {
    netns::nft_file(&lab.a, file);
}

/// Polls `f` every 10 ms for up to `within`; returns how long it took.
fn within(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(pid: u32, sig: &str) {
    sh(&["kill", &format!("-{sig}"), &pid.to_string()]);
}

#[test]
fn a_ruleset_reload_is_noticed_and_the_live_elements_are_fed_again() {
    if !netns::agent_prerequisites(&[]) {
        return;
    }
    // The re-feed is timed: no lab is built or torn down meanwhile.
    let _alone = alone();
    let lab = lab();
    lab.echo_server(&lab.i, "0.0.0.0:443");
    lab.echo_server(&lab.i, "0.0.0.0:8443");
    // Lab wiring, before any fence.
    assert!(lab.connects("192.0.2.10:443"), "lab wiring: I is reachable");

    let zones = lab.dir.zones(&[("fw.test.zone", "$ORIGIN fw.test.\n$TTL 300\n@ IN SOA ns. h. 1 3600 600 86400 5\nweb IN A 192.0.2.10\nports IN A 192.0.2.30\n")]);
    let policy = lab.dir.write(
        "policy.yaml",
        &format!(
            "agent_name: fenced\nexpected_outbound:\n  - destination: web.fw.test\n  - destination: ports.fw.test\n    port: 8443\n    protocol: TCP\n  - destination: 192.0.2.77\n    port: 443\n    protocol: TCP\nfirewall:\n  netns: {}\n",
            lab.netns(&lab.a).display()
        ),
    );
    let ruleset = nft_ruleset(&policy, "127.0.0.1");
    let ruleset = lab.dir.write("agent.nft", &ruleset);
    load(&lab, &ruleset);
    assert!(
        !lab.connects("192.0.2.10:443"),
        "the fence holds before any lookup"
    );

    let dns = Allowdns::offline(&policy, &zones, &[]);
    // Positive control: resolve, then connect.
    for name in ["web.fw.test", "ports.fw.test"] {
        assert_eq!(rcode(dns.udp, name, RecordType::A), ResponseCode::NoError);
    }
    assert!(
        lab.connects("192.0.2.10:443"),
        "allowed name after its lookup"
    );
    assert!(
        lab.connects("192.0.2.30:8443"),
        "allowed name and port after its lookup"
    );
    assert!(lab.connects("192.0.2.77:443"), "a policy address");

    // Without allowdns watching (stopped), the reload empties the sets and
    // the cached names stop working: what the re-feed is for.
    signal(dns.pid(), "STOP");
    load(&lab, &ruleset);
    let emptied = !lab.set("allowed_v4").contains("192.0.2.10");
    let cut = !lab.connects("192.0.2.10:443");
    signal(dns.pid(), "CONT");
    assert!(emptied, "the reload empties the set");
    assert!(cut, "after the reload, a fed address is cut off");
    // Once allowdns runs, it has seen the reload and re-feeds.
    let took = within(Duration::from_secs(1), || {
        lab.set("allowed_v4").contains("192.0.2.10")
            && lab.set("allowed_v4_ports").contains("192.0.2.30")
    });
    assert!(took.is_some(), "not re-fed within 1 s:\n{}", dns.stderr());
    assert!(
        lab.connects("192.0.2.10:443"),
        "the cached name works again"
    );
    assert!(
        lab.connects("192.0.2.30:8443"),
        "so does the port-restricted one"
    );
    assert!(lab.connects("192.0.2.77:443"), "and the policy address");

    // A reload while it runs: back within the bound, without any new lookup.
    let before = dns.stderr().matches("re-fed").count();
    load(&lab, &ruleset);
    let took = within(Duration::from_secs(1), || {
        lab.set("allowed_v4").contains("192.0.2.10")
    })
    .unwrap_or_else(|| panic!("not re-fed within 1 s:\n{}", dns.stderr()));
    eprintln!("re-fed {took:?} after `nft -f` returned");
    assert!(lab.connects("192.0.2.10:443"));
    assert!(lab.connects("192.0.2.30:8443"));
    assert!(
        within(Duration::from_secs(1), || dns
            .stderr()
            .matches("re-fed")
            .count()
            > before)
        .is_some(),
        "the re-feed is logged: {}",
        dns.stderr()
    );
    // A name never looked up is not fed by the re-feed.
    assert!(!lab.set("allowed_v4").contains("192.0.2.11"));
}
