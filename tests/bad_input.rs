//! Bad input from a red-team run, through the real binary: files that are
//! not regular files, unbounded files, deep nesting, a byte order mark and
//! huge values are each answered promptly with a clear error, and a bad
//! reload never wedges later ones.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

const GOOD: &str = "agent_name: b\nexpected_outbound:\n  - destination: a.b.test\n";

/// `allowdns check` with a deadline: (exit code, stderr, elapsed); a hang is
/// killed and fails the test.
fn check(args: &[&str]) -> (i32, String, Duration) {
    let start = Instant::now();
    let mut child = Command::new(bin())
        .arg("check")
        .args(args)
        .args(["--upstream", "none"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("allowdns check {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        start.elapsed(),
    )
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

fn deep(levels: usize) -> String {
    format!(
        "agent_name: d\nexpected_outbound: {}{}\n",
        "[".repeat(levels),
        "]".repeat(levels)
    )
}

/// Positive control: a plain open of a FIFO with no writer blocks, which is
/// what wedged the reload thread.
fn plain_open_blocks(fifo: &Path) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(&path).is_ok());
    });
    let blocked = rx.recv_timeout(Duration::from_millis(300)).is_err();
    if blocked {
        // Unblock the reader thread: open the FIFO for writing and close it.
        let _ = std::fs::OpenOptions::new().write(true).open(fifo);
    }
    blocked
}

#[test]
fn check_refuses_a_fifo_a_device_symlink_and_deep_nesting_promptly() {
    let dir = TempDir::new("bad-check");
    dir.write("good.yaml", GOOD);
    let fifo = dir.0.join("wedge.yaml");
    mkfifo(&fifo);
    assert!(plain_open_blocks(&fifo), "positive control: open blocks");

    let (code, out, took) = check(&["--policy", dir.0.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}: cannot read policy: a FIFO, not a regular file",
            fifo.display()
        )),
        "{out}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    std::fs::remove_file(&fifo).unwrap();

    let zero = dir.0.join("zero.yaml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let (code, out, took) = check(&["--policy", dir.0.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}: cannot read policy: a character device, not a regular file",
            zero.display()
        )),
        "{out}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    std::fs::remove_file(&zero).unwrap();

    // Too big: refused by size, before it is read.
    let big = dir.0.join("big.yaml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(17 << 20)
        .unwrap();
    let (code, out, _) = check(&["--policy", big.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("larger than the 16777216-byte limit"), "{out}");

    // 100k levels: refused with file:line, fast.
    let nested = dir.write("deep.yaml", &deep(100_000));
    let (code, out, took) = check(&["--policy", nested.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}:2: nested deeper than 64 levels",
            nested.display()
        )),
        "{out}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The same in the config file.
    let config = dir.write("config.yaml", &format!("listen: {}\n", "[".repeat(1000)));
    let (code, out, _) = check(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("config.yaml:1: nested deeper"), "{out}");
    // A zone file that is a FIFO is refused too.
    let zones = dir.0.join("zones");
    std::fs::create_dir(&zones).unwrap();
    mkfifo(&zones.join("b.test.zone"));
    let (code, out, took) = check(&[
        "--policy",
        dir.0.join("good.yaml").to_str().unwrap(),
        "--zones",
        zones.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("a FIFO, not a regular file"), "{out}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let dir = TempDir::new("bad-bom");
    let text = format!("\u{feff}{GOOD}");
    // Positive control: the YAML parser alone trips over the mark.
    assert!(serde_yaml::from_str::<serde_yaml::Value>(&text).is_err() || {
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        v.get("agent_name").is_none()
    });
    let policy = dir.write("bom.yaml", &text);
    let (code, out, _) = check(&["--policy", policy.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("agent 'b', 1 name rule(s)"), "{out}");
}

#[test]
fn a_huge_value_is_clipped_in_error_messages() {
    let dir = TempDir::new("bad-long");
    let label = "x".repeat(10 << 20);
    let policy = dir.write(
        "long.yaml",
        &format!("agent_name: l\nexpected_outbound:\n  - destination: {label}.com\n"),
    );
    let (code, out, _) = check(&["--policy", policy.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.len() < 4096, "{} bytes of output", out.len());
    assert!(
        out.contains("long.yaml:3: expected_outbound[0].destination"),
        "{out}"
    );
    assert!(out.contains(&format!("… ({} bytes)", label.len() + 2)), "{out}");
}

#[test]
fn check_warns_about_destinations_that_open_everything() {
    let dir = TempDir::new("bad-broad");
    let policy = dir.write(
        "broad.yaml",
        "agent_name: w\nexpected_outbound:\n  - destination: 0.0.0.0/0\n    port: 443\n    protocol: TCP\n  - destination: \"::/0\"\n",
    );
    let (code, out, _) = check(&["--policy", policy.to_str().unwrap()]);
    assert_eq!(code, 0, "warnings do not fail check: {out}");
    assert!(
        out.contains("broad.yaml:3: expected_outbound[0].destination: over-broad: 0.0.0.0/0 is every IPv4 address"),
        "{out}"
    );
    assert!(
        out.contains("broad.yaml:6: expected_outbound[1].destination: over-broad: ::/0 is every IPv6 address"),
        "{out}"
    );
}

#[test]
fn bad_reloads_fail_promptly_and_never_wedge_later_ones() {
    let dir = TempDir::new("bad-reload");
    let policies = dir.0.join("policies");
    std::fs::create_dir(&policies).unwrap();
    let zones = dir.0.join("zones");
    std::fs::create_dir(&zones).unwrap();
    std::fs::write(
        zones.join("b.test.zone"),
        "$ORIGIN b.test.\n$TTL 60\n@ IN SOA ns. h. 1 3600 600 86400 5\na IN A 192.0.2.1\nc IN A 192.0.2.3\n",
    )
    .unwrap();
    std::fs::write(policies.join("good.yaml"), GOOD).unwrap();
    let dns = Allowdns::serve_offline(&policies, &zones);
    assert_eq!(
        rcode(dns.udp, "a.b.test", RecordType::A),
        ResponseCode::NoError
    );

    let fifo = policies.join("wedge.yaml");
    mkfifo(&fifo);
    let zero = policies.join("zero.yaml");
    let nested = policies.join("deep.yaml");
    let bad: [(&str, &dyn Fn()); 3] = [
        ("a FIFO, not a regular file", &|| {}),
        ("a character device, not a regular file", &|| {
            std::fs::remove_file(&fifo).unwrap();
            std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        }),
        ("nested deeper than 64 levels", &|| {
            std::fs::remove_file(&zero).unwrap();
            std::fs::write(&nested, deep(100_000)).unwrap();
        }),
    ];
    for (round, (message, make)) in bad.iter().enumerate() {
        make();
        let start = Instant::now();
        dns.hup();
        dns.wait_for("RELOAD FAILED", round + 1);
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(dns.stderr().contains(message), "{}", dns.stderr());
        // The old policy stays in force.
        assert_eq!(
            rcode(dns.udp, "a.b.test", RecordType::A),
            ResponseCode::NoError
        );
    }
    // A later good reload still works.
    std::fs::remove_file(&nested).unwrap();
    std::fs::write(
        policies.join("good.yaml"),
        "agent_name: b\nexpected_outbound:\n  - destination: c.b.test\n",
    )
    .unwrap();
    dns.hup();
    dns.wait_for("reloaded", 1);
    assert_eq!(
        rcode(dns.udp, "c.b.test", RecordType::A),
        ResponseCode::NoError
    );
    assert_eq!(
        rcode(dns.udp, "a.b.test", RecordType::A),
        ResponseCode::NXDomain
    );
    // And SIGTERM exits cleanly.
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{status:?}\n{stderr}");
}
