//! The binary's exit codes: 1 for bad input, 3 when the environment fails
//! (a listen port in use, an audit log that cannot be opened), with the
//! offending address or path in the message. Each case has its positive
//! control: the same command with the fault removed gets further.

use crate::common;

use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `allowdns ARGS` to its end, killed (by its PID) if still running
/// after `within`: then `None`, as it did not exit by itself.
fn run(args: &[&str], within: Duration) -> (Option<ExitStatus>, String) {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr)
}

fn policy(dir: &TempDir) -> String {
    dir.write(
        "p.yaml",
        "agent_name: a\nclients: [\"127.0.0.1/32\"]\nexpected_outbound:\n  - destination: x.test\n",
    )
    .to_str()
    .unwrap()
    .to_string()
}

#[test]
fn a_listen_port_in_use_exits_3_naming_the_address() {
    let dir = TempDir::new("exit-bind");
    let policy = policy(&dir);

    // Positive control: with a free port the same command starts serving.
    let server = Allowdns::serve(&["--policy", &policy, "--upstream", "none"]);
    let (status, _) = server.terminate();
    assert!(status.success(), "{status:?}");

    // The port held by this test: allowdns must not start, and says where.
    let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let (status, stderr) = run(
        &[
            "serve",
            "--listen",
            &addr,
            "--policy",
            &policy,
            "--upstream",
            "none",
        ],
        Duration::from_secs(20),
    );
    let status =
        status.unwrap_or_else(|| panic!("allowdns kept running on a port in use: {stderr}"));
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert_has(&stderr, &format!("cannot listen on {addr}"));
    assert_lacks(&stderr, "listening on");
    drop(held);
}

#[test]
fn bad_input_exits_1_and_an_unopenable_audit_log_exits_3() {
    let dir = TempDir::new("exit-input");
    let good = policy(&dir);
    let bad = dir.write("bad.yaml", "agent_name: b\nexpected_outbund: []\n");
    let (status, stderr) = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--policy",
            bad.to_str().unwrap(),
            "--upstream",
            "none",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
    assert_has(&stderr, "bad.yaml");

    // A directory where the audit log should be: the inputs are fine, the place is not.
    let log = dir.0.join("audit-is-a-directory");
    std::fs::create_dir(&log).unwrap();
    let (status, stderr) = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--policy",
            &good,
            "--upstream",
            "none",
            "--audit-log",
            log.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(status.and_then(|s| s.code()), Some(3), "{stderr}");
    assert_has(&stderr, &format!("cannot open audit log {}", log.display()));
}

/// `allowdns nft-ruleset … | head -1`: a reader that stops reading is a
/// normal end (exit 0, nothing on stderr), as in ripgrep, not a panic.
#[test]
fn a_closed_stdout_ends_quietly_with_0() {
    let dir = TempDir::new("exit-pipe");
    let policy = policy(&dir);
    let args = ["nft-ruleset", "--policy", &policy, "--dns", "127.0.0.1"];

    // Positive control: read to its end, the same command prints the ruleset.
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("table"));

    // The reading end closed before the ruleset is written: every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}
