//! The shipped units and drop-ins pass `systemd-analyze verify`, and the
//! exposure ratings stay at 2.0 or lower, with and without the drop-ins.
//!
//! Needs `systemd-analyze` (Debian package `systemd`): fails under CI=true
//! without it, skips loudly elsewhere.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::*;

fn analyze(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The units as shipped, with ExecStart pointing at the binary under test,
/// template instances for one agent namespace, and the given drop-ins of
/// `systemd/allowdns.service.d/` installed next to the main unit (where
/// `systemd-analyze` looks for them, as it would in /etc/systemd/system).
fn units(dropins: &[&str]) -> Option<TempDir> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        require_or_skip("systemd-analyze is not installed (apt-get install systemd)");
        return None;
    }
    let dir = TempDir::new("systemd");
    for (unit, as_name) in [
        ("allowdns.service", "allowdns.service"),
        ("allowdns@.service", "allowdns@agent1.service"),
        ("allowdns-fence@.service", "allowdns-fence@agent1.service"),
        ("allowdns.socket", "allowdns.socket"),
        ("allowdns@.socket", "allowdns@agent1.socket"),
    ] {
        let text = std::fs::read_to_string(repo(&format!("systemd/{unit}"))).unwrap();
        assert!(unit.ends_with(".socket") || text.contains("/usr/local/bin/allowdns"));
        dir.write(as_name, &text.replace("/usr/local/bin/allowdns", bin()));
    }
    if !dropins.is_empty() {
        std::fs::create_dir(dir.0.join("allowdns.service.d")).unwrap();
    }
    for file in dropins {
        let text = std::fs::read_to_string(repo(&format!("systemd/allowdns.service.d/{file}")))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        // Shipped as an example so that copying the directory does not enable it.
        let name = file.strip_suffix(".example").unwrap_or(file);
        dir.write(&format!("allowdns.service.d/{name}"), &text);
    }
    Some(dir)
}

const FIREWALL: &str = "firewall.conf";
const NETNS: &str = "firewall-netns.conf.example";

fn verify(dir: &TempDir) {
    let (ok, out) = analyze(
        &dir.0,
        &[
            "verify",
            "./allowdns.service",
            "./allowdns@agent1.service",
            "./allowdns-fence@agent1.service",
            "./allowdns.socket",
            "./allowdns@agent1.socket",
        ],
    );
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
}

#[test]
fn units_verify_cleanly() {
    let Some(dir) = units(&[]) else { return };
    verify(&dir);
    for unit in ["allowdns.service", "allowdns@agent1.service"] {
        let text = std::fs::read_to_string(dir.0.join(unit)).unwrap();
        assert!(text.contains("\nLimitNOFILE=65536\n"), "{unit}");
    }
}

/// Each service pulls in its socket unit, and the main socket unit listens
/// where the shipped config's `listen:` says, over UDP and TCP (allowdns
/// refuses a passed socket `listen:` does not name).
#[test]
fn socket_units_hold_the_listen_addresses() {
    for (service, socket) in [
        ("allowdns.service", "allowdns.socket"),
        ("allowdns@.service", "allowdns@%i.socket"),
    ] {
        let text = std::fs::read_to_string(repo(&format!("systemd/{service}"))).unwrap();
        assert!(
            text.contains(&format!("\nWants={socket}\nAfter={socket}\n")),
            "{service}"
        );
    }
    let socket = std::fs::read_to_string(repo("systemd/allowdns.socket")).unwrap();
    let config = std::fs::read_to_string(repo("systemd/allowdns.yaml")).unwrap();
    let listen = config
        .lines()
        .find_map(|l| l.strip_prefix("listen: "))
        .expect("listen: in systemd/allowdns.yaml");
    let listen: Vec<String> = serde_yaml::from_str(listen).unwrap();
    let mut held: Vec<(String, String)> = socket
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("Listen"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    held.sort();
    let mut wanted: Vec<(String, String)> = listen
        .iter()
        .flat_map(|a| {
            [
                ("ListenDatagram".to_string(), a.clone()),
                ("ListenStream".to_string(), a.clone()),
            ]
        })
        .collect();
    wanted.sort();
    assert_eq!(held, wanted);
    let template = std::fs::read_to_string(repo("systemd/allowdns@.socket")).unwrap();
    assert!(template.contains("\nNetworkNamespacePath=/run/netns/%i\n"));
}

#[test]
fn units_verify_cleanly_with_the_firewall_dropins() {
    let Some(dir) = units(&[FIREWALL, NETNS]) else {
        return;
    };
    verify(&dir);
}

/// `systemd-analyze security`: the overall exposure level, and the report.
fn exposure(dir: &TempDir, unit: &str) -> (f64, String) {
    let (_, out) = analyze(
        &dir.0,
        &["security", "--offline=true", &format!("./{unit}")],
    );
    let level: f64 = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    (level, out)
}

/// Whether the report marks `check` as exposed (✗) or not (✓).
fn exposed(report: &str, check: &str) -> bool {
    let line = report
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(check))
        .unwrap_or_else(|| panic!("no {check} in:\n{report}"));
    line.starts_with('✗')
}

#[test]
fn main_unit_exposure_is_at_most_2() {
    let Some(dir) = units(&[]) else { return };
    let (level, out) = exposure(&dir, "allowdns.service");
    eprintln!("allowdns.service exposure: {level}");
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{out}");
    assert!(!exposed(&out, "CapabilityBoundingSet=~CAP_NET_ADMIN"));
    // Attribution reads other users' /proc/PID/fd (docs/attribution.md).
    assert!(
        exposed(&out, "CapabilityBoundingSet=~CAP_SYS_PTRACE"),
        "{out}"
    );
}

#[test]
fn firewall_dropin_adds_net_admin_and_keeps_exposure_at_most_2() {
    let Some(dir) = units(&[FIREWALL]) else {
        return;
    };
    let (level, out) = exposure(&dir, "allowdns.service");
    eprintln!("allowdns.service + {FIREWALL} exposure: {level}");
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{out}");
    // Added to the unit's capabilities, not replacing them.
    assert!(
        exposed(&out, "CapabilityBoundingSet=~CAP_NET_ADMIN"),
        "{out}"
    );
    assert!(
        exposed(
            &out,
            "CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)"
        ),
        "{out}"
    );
    assert!(!exposed(&out, "CapabilityBoundingSet=~CAP_SYS_ADMIN"));
    assert!(!exposed(&out, "RestrictNamespaces=~net"));
}

#[test]
fn netns_dropin_allows_only_network_namespaces() {
    let Some(dir) = units(&[FIREWALL, NETNS]) else {
        return;
    };
    let (level, out) = exposure(&dir, "allowdns.service");
    eprintln!("allowdns.service + {FIREWALL} + {NETNS} exposure: {level}");
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{out}");
    assert!(
        exposed(&out, "CapabilityBoundingSet=~CAP_SYS_ADMIN"),
        "{out}"
    );
    assert!(
        exposed(&out, "CapabilityBoundingSet=~CAP_NET_ADMIN"),
        "{out}"
    );
    assert!(exposed(&out, "RestrictNamespaces=~net"), "{out}");
    // Reset out of the lists, to stay at 2.0 next to CAP_SYS_ADMIN.
    assert!(
        !exposed(&out, "CapabilityBoundingSet=~CAP_SYS_PTRACE"),
        "{out}"
    );
    for other in ["user", "pid", "mnt", "uts", "ipc", "cgroup"] {
        assert!(
            !exposed(&out, &format!("RestrictNamespaces=~{other}")),
            "{other}:\n{out}"
        );
    }
}

#[test]
fn template_unit_exposure_is_at_most_2() {
    let Some(dir) = units(&[]) else { return };
    let (level, out) = exposure(&dir, "allowdns@agent1.service");
    eprintln!("allowdns@agent1.service exposure: {level}");
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{out}");
}

// Socket activation: the sockets held by the service manager while allowdns
// restarts. `systemd-socket-activate` plays systemd (no systemd as PID 1);
// tests/data/holder.py plays it across restarts, which that tool cannot.

/// A process the test started, killed on drop, with its stderr collected.
struct Spawned {
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Spawned {
    fn start(cmd: &mut Command) -> Spawned {
        use std::io::BufRead;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Spawned { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits up to 20 s until stderr holds `text` `count` times.
    fn wait_for(&self, text: &str, count: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.stderr().matches(text).count() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "no {count}x {text:?} in:\n{}",
                self.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // End of input stops the holder's child; then the process itself, by PID.
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free for both UDP and TCP just now.
fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768 up): a port from that range,
    // left free while allowdns restarts, can be taken by another test's
    // client socket, or by the stub's own TCP connect to itself.
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 4000) as u16;
    for _ in 0..4000 {
        let port = 24000 + seed.wrapping_add(NEXT.fetch_add(7, Ordering::Relaxed)) % 8000;
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port between 24000 and 32000");
}

/// An offline allowdns setup: one allowed name in a local zone.
fn offline_setup() -> (TempDir, Vec<String>) {
    let dir = TempDir::new("sockets");
    let zones = dir.0.join("zones");
    std::fs::create_dir(&zones).unwrap();
    std::fs::write(
        zones.join("r.test.zone"),
        "$ORIGIN r.test.\n$TTL 60\n@ IN SOA ns. h. 1 3600 600 86400 5\nkeep IN A 192.0.2.3\n",
    )
    .unwrap();
    let policy = dir.write(
        "p.yaml",
        "agent_name: r\nexpected_outbound:\n  - destination: keep.r.test\n",
    );
    let args = offline_args(&policy, &zones, &["--audit-log", "/dev/null"]);
    let args = std::iter::once("serve").chain(args);
    (dir, args.map(|s| s.to_string()).collect())
}

fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--help").output().is_ok();
    if !found {
        require_or_skip(&format!("{tool} is not installed"));
    }
    found
}

/// One A question over UDP from a fresh socket; the response code, if any.
fn ask_udp(server: std::net::SocketAddr, wait: std::time::Duration) -> Option<u8> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut q = vec![0x42, 0x42, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["keep", "r", "test"] {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    socket.send_to(&q, server).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    (n >= 12 && buf[..2] == [0x42, 0x42]).then_some(buf[3] & 15)
}

#[test]
fn passed_sockets_are_served_and_queries_wait_for_allowdns_to_start() {
    if !have("systemd-socket-activate") {
        return;
    }
    let (_dir, args) = offline_setup();
    let port = free_port();
    let at = format!("127.0.0.1:{port}");
    let server: std::net::SocketAddr = at.parse().unwrap();
    // The outer one holds UDP (fd 3) and passes it through the inner one,
    // which adds TCP (fd 4): each starts what follows on its first client.
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args([
        "--datagram",
        "-l",
        &at,
        "systemd-socket-activate",
        "-l",
        &at,
    ])
    .arg(bin())
    .args(&args)
    .args(["--listen", &at]);
    let run = Spawned::start(&mut cmd);
    run.wait_for(&format!("Listening on {at} as 3"), 1);
    // Asked before allowdns exists: the kernel queues it in the held socket.
    let early = std::thread::spawn(move || ask_udp(server, std::time::Duration::from_secs(20)));
    run.wait_for(&format!("Listening on {at} as 4"), 1);
    let tcp = std::thread::spawn(move || {
        common::query_with(
            server,
            "keep.r.test",
            hickory_proto::rr::RecordType::A,
            Ask {
                tcp: true,
                ..Ask::default()
            },
        )
    });
    assert_eq!(early.join().unwrap(), Some(0), "{}", run.stderr());
    let tcp = tcp.join().unwrap();
    assert_eq!(answers(&tcp).len(), 1, "{}", run.stderr());
    run.wait_for("listening on", 1);
    assert!(
        run.stderr().contains(&format!(
            "listening on udp://{at} tcp://{at} (passed by the service manager: udp://{at} tcp://{at}; bound here: none)"
        )),
        "{}",
        run.stderr()
    );
}

#[test]
fn a_passed_socket_that_listen_does_not_name_is_refused() {
    if !have("systemd-socket-activate") {
        return;
    }
    let (_dir, args) = offline_setup();
    let (port, other) = (free_port(), free_port());
    let at = format!("127.0.0.1:{port}");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["--datagram", "-l", &at])
        .arg(bin())
        .args(&args)
        .args(["--listen", &format!("127.0.0.1:{other}")]);
    let mut run = Spawned::start(&mut cmd);
    run.wait_for(&format!("Listening on {at} as 3"), 1);
    assert_eq!(
        ask_udp(at.parse().unwrap(), std::time::Duration::from_secs(1)),
        None
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{}", run.stderr());
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(!status.success());
    let err = run.stderr();
    assert!(
        err.contains(&format!(
            "the service manager passed a socket on udp://{at}, which is not a `listen:` address (127.0.0.1:{other})"
        )),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
}

/// Runs tests/data/stub_loop.py for `seconds` over `proto`: (asked, lost).
fn stub_loop(proto: &str, port: u16, seconds: f64) -> std::thread::JoinHandle<(u64, u64)> {
    let (proto, script) = (proto.to_string(), repo("tests/data/stub_loop.py"));
    std::thread::spawn(move || {
        let out = Command::new("python3")
            .arg(script)
            .args([&proto, "127.0.0.1", &port.to_string(), "keep.r.test"])
            .arg(seconds.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let words: Vec<&str> = text.split_whitespace().collect();
        let field = |name: &str| -> u64 {
            let at = words.iter().position(|w| *w == name);
            at.and_then(|i| words.get(i + 1))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| {
                    panic!("{proto}: {text} {}", String::from_utf8_lossy(&out.stderr))
                })
        };
        (field("asked"), field("lost"))
    })
}

/// The house's restart claim: with the sockets held, a restart under a
/// query loop (a stub resolver's timeouts and retries) loses no query, over
/// UDP or TCP. Positive control first: the same restart without held
/// sockets loses queries.
#[test]
fn a_restart_with_held_sockets_loses_no_query() {
    if !have("python3") {
        return;
    }
    let (_dir, args) = offline_setup();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    const LOOP: f64 = 5.0;
    // Between one allowdns and the next (a slow restart: a large policy, a
    // loaded machine), on top of ExecStartPre's check and the start itself;
    // shorter than the stub's 3 s timeout.
    const GAP: f64 = 1.0;

    // Positive control: allowdns binds its own sockets; stop, then start as
    // the unit does (ExecStartPre's check, then serve).
    let port = free_port();
    let at = format!("127.0.0.1:{port}");
    let mut plain: Vec<&str> = args[1..].to_vec();
    plain.extend(["--listen", &at]);
    let first = Allowdns::serve(&plain);
    let loops = [stub_loop("udp", port, LOOP), stub_loop("tcp", port, LOOP)];
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (status, _) = first.terminate();
    assert!(status.success());
    let mut check = vec!["check"];
    check.extend(&plain);
    std::thread::sleep(std::time::Duration::from_secs_f64(GAP));
    let (ok, out) = sh_out(&[&[bin()], &check[..]].concat());
    assert!(ok, "{out}");
    let second = Allowdns::serve(&plain);
    let [(udp_asked, udp_lost), (tcp_asked, tcp_lost)] = loops.map(|l| l.join().unwrap());
    drop(second);
    eprintln!(
        "without held sockets: udp {udp_lost} of {udp_asked} lost, tcp {tcp_lost} of {tcp_asked} lost"
    );
    assert!(udp_lost > 0 && tcp_lost > 0, "the control lost nothing");

    // Held: the sockets outlive each allowdns.
    let port = free_port();
    let at = format!("127.0.0.1:{port}");
    let mut cmd = Command::new("python3");
    cmd.arg(repo("tests/data/holder.py"))
        .arg(port.to_string())
        .arg(GAP.to_string())
        .arg(bin())
        .args(&args)
        .args(["--listen", &at]);
    let mut holder = Spawned::start(&mut cmd);
    holder.wait_for("listening on", 1);
    assert!(
        holder.stderr().contains("bound here: none"),
        "{}",
        holder.stderr()
    );
    let loops = [stub_loop("udp", port, LOOP), stub_loop("tcp", port, LOOP)];
    let mut control = holder.child.stdin.take().unwrap();
    for round in 2..=3 {
        std::thread::sleep(std::time::Duration::from_millis(1000));
        use std::io::Write;
        control.write_all(b"restart\n").unwrap();
        control.flush().unwrap();
        holder.wait_for("listening on", round);
    }
    let [(udp_asked, udp_lost), (tcp_asked, tcp_lost)] = loops.map(|l| l.join().unwrap());
    holder.child.stdin = Some(control);
    eprintln!(
        "held: udp {udp_lost} of {udp_asked} lost, tcp {tcp_lost} of {tcp_asked} lost, 2 restarts"
    );
    assert_eq!(holder.stderr().matches("SIGTERM received").count(), 2);
    assert!(
        udp_asked > 100 && tcp_asked > 100,
        "too few questions to tell"
    );
    assert_eq!((udp_lost, tcp_lost), (0, 0), "{}", holder.stderr());
}

/// A `listen:` address the service manager passes only over UDP is served
/// over TCP from a socket allowdns binds itself, and the log says it is not
/// held across restarts.
#[test]
fn a_listen_address_passed_only_over_udp_is_bound_here_for_tcp() {
    if !have("systemd-socket-activate") {
        return;
    }
    let (_dir, args) = offline_setup();
    let port = free_port();
    let at = format!("127.0.0.1:{port}");
    let server: std::net::SocketAddr = at.parse().unwrap();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["--datagram", "-l", &at])
        .arg(bin())
        .args(&args)
        .args(["--listen", &at]);
    let run = Spawned::start(&mut cmd);
    run.wait_for(&format!("Listening on {at} as 3"), 1);
    assert_eq!(
        ask_udp(server, std::time::Duration::from_secs(20)),
        Some(0),
        "{}",
        run.stderr()
    );
    run.wait_for("listening on", 1);
    let tcp = common::query_with(
        server,
        "keep.r.test",
        hickory_proto::rr::RecordType::A,
        Ask {
            tcp: true,
            ..Ask::default()
        },
    );
    assert_eq!(answers(&tcp).len(), 1);
    let err = run.stderr();
    assert!(
        err.contains(&format!("listen address {at}: the service manager passed no TCP socket for it; bound here instead, so it is not held while allowdns restarts")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "(passed by the service manager: udp://{at}; bound here: tcp://{at})"
        )),
        "{err}"
    );
}
