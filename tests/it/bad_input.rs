//! Hostile input, through the real binary: files that are
//! not regular files, unbounded files, deep nesting, a byte order mark and
//! huge values are each answered promptly with a clear error, and a bad
//! reload never wedges later ones.

use crate::common;

use std::io::Read;
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
    assert_has(
        &out,
        &format!(
            "{}: cannot read policy: a FIFO, not a regular file",
            fifo.display()
        ),
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    std::fs::remove_file(&fifo).unwrap();

    let zero = dir.0.join("zero.yaml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let (code, out, took) = check(&["--policy", dir.0.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert_has(
        &out,
        &format!(
            "{}: cannot read policy: a character device, not a regular file",
            zero.display()
        ),
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
    assert_has(&out, "larger than the 16777216-byte limit");

    // 100k levels: refused with file:line, fast.
    let nested = dir.write("deep.yaml", &deep(100_000));
    let (code, out, took) = check(&["--policy", nested.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert_has(
        &out,
        &format!("{}:2: nested deeper than 64 levels", nested.display()),
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
    assert_has(&out, "a FIFO, not a regular file");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let dir = TempDir::new("bad-bom");
    let text = format!("\u{feff}{GOOD}");
    // Positive control: the YAML parser alone trips over the mark.
    assert!(
        serde_yaml::from_str::<serde_yaml::Value>(&text).is_err() || {
            let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            v.get("agent_name").is_none()
        }
    );
    let policy = dir.write("bom.yaml", &text);
    let (code, out, _) = check(&["--policy", policy.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert_has(&out, "agent 'b', 1 name rule(s)");
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
    assert_has(&out, "long.yaml:3: expected_outbound[0].destination");
    assert_has(&out, &format!("… ({} bytes)", label.len() + 2));
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
    assert_has(
        &out,
        "broad.yaml:3: expected_outbound[0].destination: over-broad: 0.0.0.0/0 is every IPv4 address",
    );
    assert_has(
        &out,
        "broad.yaml:6: expected_outbound[1].destination: over-broad: ::/0 is every IPv6 address",
    );
}

#[test]
fn bad_reloads_fail_promptly_and_never_wedge_later_ones() {
    let dir = TempDir::new("bad-reload");
    let policies = dir.0.join("policies");
    std::fs::create_dir(&policies).unwrap();
    let zones = dir.zones(&[("b.test.zone", "$ORIGIN b.test.\n$TTL 60\n@ IN SOA ns. h. 1 3600 600 86400 5\na IN A 192.0.2.1\nc IN A 192.0.2.3\n")]);
    std::fs::write(policies.join("good.yaml"), GOOD).unwrap();
    // SIGHUP only: the directory's watch would reload on each change too.
    let dns = Allowdns::offline(&policies, &zones, &["--watch=false"]);
    assert_rcode(dns.udp, "a.b.test A", ResponseCode::NoError);

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
        assert_rcode(dns.udp, "a.b.test A", ResponseCode::NoError);
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
    assert_rcode(dns.udp, "c.b.test A", ResponseCode::NoError);
    assert_rcode(dns.udp, "a.b.test A", ResponseCode::NXDomain);
    // And SIGTERM exits cleanly.
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{status:?}\n{stderr}");
}

/// Writes `path` until the file system says it is full; returns the error.
fn fill(path: &Path) -> std::io::Error {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![b'#'; 4096];
    for _ in 0..100_000 {
        if let Err(e) = f.write_all(&block).and_then(|()| f.sync_all()) {
            return e;
        }
    }
    panic!("{} never filled up", path.display());
}

#[test]
fn a_full_disk_loses_whole_records_counted_and_reports_once() {
    if !is_root() {
        require_or_skip("mounting a tmpfs in a mount namespace needs root");
        return;
    }
    let dir = TempDir::new("bad-full");
    let zones = dir.zones(&[(
        "b.test.zone",
        "$ORIGIN b.test.\n$TTL 60\n@ IN SOA ns. h. 1 3600 600 86400 5\na IN A 192.0.2.1\n",
    )]);
    let policy = dir.write("p.yaml", GOOD);
    // The tmpfs exists only in allowdns's own mount namespace; the test
    // reaches it through /proc/PID/root.
    let mnt = dir.0.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let log = mnt.join("audit.jsonl");
    let dns = Allowdns::serve_via(
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs -o size=256k allowdns-full \"$0\" && exec \"$@\"",
            mnt.to_str().unwrap(),
        ],
        &offline_args(&policy, &zones, &["--audit-log", log.to_str().unwrap()]),
    );
    let inside = |p: &Path| {
        Path::new(&format!("/proc/{}/root", dns.pid())).join(p.strip_prefix("/").unwrap())
    };
    let (log_inside, filler) = (inside(&log), inside(&mnt.join("filler")));
    let names = ["a.b.test", "denied.b.test"];
    let mut sent = 0;
    for i in 0..20 {
        rcode(dns.udp, names[i % 2], RecordType::A);
        sent += 1;
    }
    // Positive control: the disk really is full.
    let full = fill(&filler);
    assert_eq!(full.raw_os_error(), Some(28), "{full}");
    for i in 0..3000 {
        rcode(dns.udp, names[i % 2], RecordType::A);
        sent += 1;
    }
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_file(&filler).unwrap();
    // The loss event is written as soon as writing works, without waiting for a query.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log_inside)
        .unwrap_or_default()
        .contains("audit_records_lost")
    {
        assert!(Instant::now() < deadline, "no audit_records_lost event");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..10 {
        rcode(dns.udp, names[i % 2], RecordType::A);
        sent += 1;
    }
    std::thread::sleep(Duration::from_millis(300));
    let lines = read_audit(&log_inside); // panics on any line that is not JSON
    let records = lines.iter().filter(|v| v.get("decision").is_some()).count() as u64;
    let lost: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["event"] == "audit_records_lost")
        .collect();
    let lost_count: u64 = lost.iter().map(|v| v["count"].as_u64().unwrap()).sum();
    assert!(lost_count > 1000, "{lost:?}");
    assert_eq!(
        records + lost_count,
        sent,
        "every query is a record or counted lost"
    );
    assert!(
        lost[0]["cause"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{lost:?}"
    );
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    let audit_lines: Vec<&str> = stderr.lines().filter(|l| l.contains("audit")).collect();
    assert!(audit_lines.len() <= 3, "{audit_lines:#?}");
    assert!(
        audit_lines[0].contains("audit log write failed: No space left on device"),
        "{audit_lines:#?}"
    );
    assert_has(&stderr, "audit log writable again");
}

#[test]
fn upstream_failures_are_logged_at_most_once_per_interval() {
    let dir = TempDir::new("bad-upstream");
    let policy = dir.write(
        "p.yaml",
        "agent_name: u\nexpected_outbound:\n  - destination: \"*.u.test\"\n",
    );
    // A forwarder on loopback that never answers: every allowed query fails.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = dir.write(
        "config.yaml",
        &format!(
            "upstream:\n  servers: [\"{}\"]\n  timeout_ms: 50\n",
            silent.local_addr().unwrap()
        ),
    );
    let dns = Allowdns::serve(&[
        "--config",
        config.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    for i in 0..40 {
        assert_eq!(
            rcode(dns.udp, &format!("n{i}.u.test"), RecordType::A),
            ResponseCode::ServFail
        );
    }
    let (_, stderr) = dns.terminate();
    let warns = stderr.matches("failed; answering SERVFAIL").count();
    assert_eq!(warns, 1, "{stderr}");
}

#[test]
fn idle_control_clients_do_not_lock_out_status() {
    use std::os::unix::net::UnixStream;
    let dir = TempDir::new("bad-idle");
    let policy = dir.write("p.yaml", GOOD);
    let socket = dir.0.join("control.sock");
    let sock = socket.to_str().unwrap();
    let _dns = Allowdns::forward("none", &policy, &["--control", sock]);
    // 100 clients that connect and say nothing: more than the 16 request
    // slots, and more than the 64 that may wait.
    let idle: Vec<UnixStream> = (0..100)
        .map(|_| {
            let s = UnixStream::connect(&socket).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // Positive control: at least 16 (every request slot) are still open.
    let mut byte = [0u8; 1];
    let still_open = idle
        .iter()
        .filter(|s| {
            matches!((&mut &**s).read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    assert!(
        still_open >= 16,
        "{still_open} idle clients still connected"
    );
    for _ in 0..3 {
        let start = Instant::now();
        let out = Command::new(bin())
            .args(["status", "--control", sock])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_has(&stdout, "p.yaml");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
    drop(idle);
}

#[test]
fn after_the_first_shape_error_every_other_error_is_reported_with_its_line() {
    let dir = TempDir::new("bad-many");
    let policy = dir.write(
        "many.yaml",
        "agent_name: a\nexpected_outbound:\n  - destination: a.example.com\n    prot: 1\n  - destination: \"bad..name\"\n  - destination: b.example.com\n    port: x\n    protocol: TCP\nbogus: 1\n",
    );
    let other = dir.write(
        "other.yaml",
        "agent_name: a\nclients: [10.1.0.0/16]\nexpected_outbound:\n  - destination: c.example.com\n",
    );
    let (code, out, _) = check(&[
        "--policy",
        policy.to_str().unwrap(),
        "--policy",
        other.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error:")).collect();
    let want = [
        "many.yaml:4: expected_outbound[0]: unknown field `prot`",
        "many.yaml:5: expected_outbound[1].destination: empty label in 'bad..name'",
        // The field inside the entry, on its own line.
        "many.yaml:7: expected_outbound[2].port: invalid type: string \"x\", expected u16",
        "many.yaml:9: unknown field `bogus`",
    ];
    assert_eq!(errors.len(), want.len(), "{out}");
    for (line, want) in errors.iter().zip(want) {
        assert!(line.contains(want), "{line:?} lacks {want:?}\n{out}");
    }
    // A syntax error ends its file: it is the one error reported for it.
    let broken = dir.write(
        "broken.yaml",
        "agent_name: a\nexpected_outbound:\n  - destination: \"unterminated\n  - destination: \"bad..name\"\n",
    );
    let (code, out, _) = check(&["--policy", broken.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out.matches("error:").count(), 1, "{out}");
    assert_has(&out, "broken.yaml:");
    // Errors across files carry lines too.
    let twin = dir.write(
        "twin.yaml",
        "# the same agent again\nagent_name: a\nclients: [10.2.0.0/16]\nexpected_outbound:\n  - destination: d.example.com\n",
    );
    let (code, out, _) = check(&[
        "--policy",
        other.to_str().unwrap(),
        "--policy",
        twin.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert_has(
        &out,
        "twin.yaml:2: agent_name: agent 'a' is also defined in",
    );
}
