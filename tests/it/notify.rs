//! Type=notify: READY=1 once serving, WATCHDOG=1 pings, STOPPING=1 on SIGTERM,
//! read from a real notify socket as systemd would.

use crate::common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::rr::RecordType;

/// The next datagram's assignments (one datagram may carry several lines).
fn recv(socket: &UnixDatagram) -> Option<Vec<String>> {
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).ok()?;
    Some(
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

fn notify_socket(dir: &TempDir) -> (UnixDatagram, String) {
    let path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (socket, path.to_str().unwrap().to_string())
}

#[test]
fn tells_systemd_when_it_is_ready_alive_and_stopping() {
    let dir = TempDir::new("notify");
    let (socket, path) = notify_socket(&dir);
    let policy = repo("policies/travel_agent_v1.yaml");
    let dns = Allowdns::serve_env(
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "200000")],
        &["--policy", policy.to_str().unwrap(), "--upstream", "none"],
    );
    let mut seen: Vec<Vec<String>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let pings = |seen: &[Vec<String>]| seen.iter().filter(|d| *d == &["WATCHDOG=1"]).count();
    while pings(&seen) < 3 {
        assert!(Instant::now() < deadline, "saw only {seen:?}");
        seen.push(recv(&socket).expect("a notification"));
    }
    assert_eq!(
        seen[0],
        ["READY=1", "STATUS=serving 1 policies"],
        "READY comes first, once listening, with a status: {seen:?}"
    );
    let (status, _) = dns.terminate();
    assert!(status.success());
    let mut rest = Vec::new();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Some(d) = recv(&socket) {
        rest.extend(d);
    }
    assert!(rest.iter().any(|s| s == "STOPPING=1"), "{rest:?}");
}

/// STOPPING=1 goes out when SIGTERM arrives, while in-flight questions
/// still drain, not once they have.
#[test]
fn stopping_is_sent_before_draining() {
    let dir = TempDir::new("notify-stop");
    let (socket, path) = notify_socket(&dir);
    // An upstream that never answers keeps a question in flight.
    let silent = std::net::UdpSocket::bind("127.0.0.18:0").unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let up = silent.local_addr().unwrap().to_string();
    let policy = repo("policies/travel_agent_v1.yaml");
    let dns = Allowdns::serve_env(
        &[("NOTIFY_SOCKET", &path)],
        &["--policy", policy.to_str().unwrap(), "--upstream", &up],
    );
    assert_eq!(recv(&socket).unwrap()[0], "READY=1");
    let server = dns.udp;
    std::thread::spawn(move || {
        let _ = std::panic::catch_unwind(|| query(server, "weather.service.com", RecordType::A));
    });
    let mut buf = [0u8; 512];
    silent
        .recv(&mut buf)
        .expect("the question reaches the upstream");

    let pid = dns.pid();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let term = Instant::now();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let stopping = loop {
        let d = recv(&socket).expect("STOPPING=1 within 5 s");
        if d.iter().any(|s| s == "STOPPING=1") {
            break d;
        }
    };
    let took = term.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "STOPPING=1 only after {took:?}"
    );
    // Still draining: running, not exited (a zombie until reaped).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
    assert!(
        matches!(state, Some("R" | "S" | "D")),
        "allowdns had already exited: {stat}"
    );
    assert!(
        stopping.iter().any(|s| s.starts_with("STATUS=stopping")),
        "{stopping:?}"
    );
    let (status, _) = dns.terminate();
    assert!(status.success());
}
