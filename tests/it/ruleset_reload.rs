//! Surviving a ruleset reload: `nft -f` of the printed ruleset
//! recreates allowdns's sets empty; allowdns notices (nftables netlink
//! events) and re-feeds the live elements, so connections to names whose
//! answers are still cached work again within a bounded time.
//!
//! Namespaces (created here, removed on drop): A, the agent, fenced by the
//! printed ruleset; I, "the internet", with echo services on 192.0.2.0/24.
//! allowdns runs in the test's own namespace and feeds A's sets; queries go
//! to it over loopback.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

struct Lab {
    a: String,
    i: String,
    dir: TempDir,
    _ns: netns::Lab,
}

impl Lab {
    fn create() -> Lab {
        let ns = netns::Lab::new("adns-rl", &["a", "i"])
            .veth(
                ("a", "a-i", "198.51.100.2/24"),
                ("i", "i-a", "198.51.100.1/24"),
            )
            .ip("a", "route add default via 198.51.100.1")
            .ip("i", "addr add 192.0.2.0/24 dev lo");
        Lab {
            a: ns.name("a").to_string(),
            i: ns.name("i").to_string(),
            dir: TempDir::new("ruleset-reload"),
            _ns: ns,
        }
    }

    fn netns(&self, ns: &str) -> PathBuf {
        netns::path(ns)
    }

    /// `nft -f` inside A, as an operator reloads the fence.
    fn load(&self, file: &std::path::Path) {
        netns::nft_file(&self.a, file);
    }

    fn set_holds(&self, set: &str, needle: &str) -> bool {
        let (ok, out) = sh_out(&[
            "ip", "netns", "exec", &self.a, "nft", "list", "set", "inet", "allowdns", set,
        ]);
        assert!(ok, "{out}");
        out.contains(needle)
    }

    fn connects(&self, addr: &str) -> bool {
        let addr: SocketAddr = addr.parse().unwrap();
        in_ns(self.netns(&self.a), move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                .is_ok_and(|mut s| echo(&mut s))
        })
    }
}

fn echo(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 4];
    stream.write_all(b"ping").is_ok() && stream.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

fn start_echo(lab: &Lab, port: u16) {
    let listener = in_ns(lab.netns(&lab.i), move || {
        TcpListener::bind(("0.0.0.0", port)).unwrap()
    });
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
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
    if !require_root_and(&["ip", "nft"]) {
        return;
    }
    // The re-feed is timed: no lab is built or torn down meanwhile.
    let _alone = alone();
    let lab = Lab::create();
    start_echo(&lab, 443);
    start_echo(&lab, 8443);
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
    lab.load(&ruleset);
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
    lab.load(&ruleset);
    let emptied = !lab.set_holds("allowed_v4", "192.0.2.10");
    let cut = !lab.connects("192.0.2.10:443");
    signal(dns.pid(), "CONT");
    assert!(emptied, "the reload empties the set");
    assert!(cut, "after the reload, a fed address is cut off");
    // Once allowdns runs, it has seen the reload and re-feeds.
    let took = within(Duration::from_secs(1), || {
        lab.set_holds("allowed_v4", "192.0.2.10") && lab.set_holds("allowed_v4_ports", "192.0.2.30")
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
    lab.load(&ruleset);
    let took = within(Duration::from_secs(1), || {
        lab.set_holds("allowed_v4", "192.0.2.10")
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
    assert!(!lab.set_holds("allowed_v4", "192.0.2.11"));
}
