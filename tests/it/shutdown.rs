//! SIGTERM ends `serve` even when nobody reads its stderr any more (a
//! parent that went away, a journal that closed the pipe).

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::rr::RecordType;

#[test]
fn sigterm_ends_serve_after_its_stderr_closed() {
    let dir = TempDir::new("shutdown");
    let log = dir.0.join("audit.jsonl");
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream", "none"])
        .args(["--policy", repo("policies").to_str().unwrap()])
        .args(["--zones", repo("zones").to_str().unwrap()])
        .args(["--audit-log", log.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn allowdns");
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut udp = None;
    for _ in 0..200 {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some(addr) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("udp://"))
        {
            udp = Some(addr.parse().unwrap());
            break;
        }
    }
    let udp = udp.unwrap_or_else(|| panic!("no listening line; last: {line}"));
    // Positive control: it answers, and a denial writes an alert to stderr.
    assert_eq!(
        rcode(udp, "weather.service.com", RecordType::A),
        hickory_proto::op::ResponseCode::NoError
    );
    drop(reader); // the read end closes: every later stderr write fails (EPIPE)
    assert_eq!(
        rcode(udp, "sketchy-mirror.example.com", RecordType::A),
        hickory_proto::op::ResponseCode::NXDomain,
        "still answering with its stderr closed"
    );
    sh(&["kill", "-TERM", &child.id().to_string()]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("serve did not exit within 15 s of SIGTERM with its stderr closed");
    };
    assert!(status.success(), "clean exit: {status:?}");
    assert_eq!(
        read_audit(&log).len(),
        2,
        "both queries audited and flushed"
    );
}
