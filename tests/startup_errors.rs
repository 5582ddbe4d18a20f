//! Environment failures at startup are runtime failures (exit 3), told
//! apart from bad input (exit 1): here, a listen port already in use. (A
//! missing capability for the fence: tests/firewall_netns.rs.)

mod common;

use std::net::UdpSocket;
use std::process::Command;

use common::*;

const POLICY: &str = "agent_name: p\nexpected_outbound:\n  - destination: a.p.test\n";

/// `allowdns serve` on `listen`, bounded: (exit code, stderr).
fn serve_on(listen: &str, policy: &str) -> (i32, String) {
    let out = Command::new("timeout")
        .args([
            "20",
            bin(),
            "serve",
            "--upstream",
            "none",
            "--listen",
            listen,
        ])
        .args(["--policy", policy])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_listen_port_in_use_is_a_runtime_failure() {
    let dir = TempDir::new("port-in-use");
    let policy = dir.write("p.yaml", POLICY);
    let policy = policy.to_str().unwrap();
    // Positive control: the same command line serves on a free port.
    let dns = Allowdns::serve(&["--upstream", "none", "--policy", policy]);
    assert!(dns.udp.port() != 0);
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");

    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let (code, stderr) = serve_on(&listen, policy);
    assert_eq!(code, 3, "a runtime failure, not invalid input: {stderr}");
    assert!(stderr.contains(&listen), "names the address: {stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    drop(taken);
}
