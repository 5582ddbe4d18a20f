//! Type=notify: READY=1 once serving, WATCHDOG=1 pings, STOPPING=1 on SIGTERM,
//! read from a real notify socket as systemd would.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn tells_systemd_when_it_is_ready_alive_and_stopping() {
    let dir = TempDir::new("notify");
    let path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let policy = repo("policies/travel_agent_v1.yaml");
    let dns = Allowdns::serve_env(
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
        &["--policy", policy.to_str().unwrap(), "--upstream", "none"],
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(seen.iter().any(|s| s == "READY=1")
        && seen.iter().filter(|s| *s == "WATCHDOG=1").count() >= 2)
    {
        assert!(Instant::now() < deadline, "saw only {seen:?}");
        let n = socket.recv(&mut buf).expect("a notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(
        seen[0], "READY=1",
        "READY comes first, once listening: {seen:?}"
    );
    let (status, _) = dns.terminate();
    assert!(status.success());
    let mut rest = Vec::new();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Ok(n) = socket.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(rest.iter().any(|s| s == "STOPPING=1"), "{rest:?}");
}
