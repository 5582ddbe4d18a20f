//! `allowdns run` (the kennel), end to end: issue 12's tests 1-12 and the
//! threat model's escapes. Root and real parts: a "world" network namespace
//! with services on documentation addresses, an authoritative DNS server and
//! a rogue resolver; `allowdns run` starts inside it (`ip netns exec`), so the
//! kennel's way out leads only into the world. CMD is a shell script using
//! getent, dig and python sockets (tests/data/kennel/probe.py). Every probe
//! that must fail in the kennel is first shown to succeed unfenced.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Upstream, bin, data, is_root, require_or_skip, sh};

const DNS: &str = "198.51.100.53";
const ROGUE: &str = "198.51.100.66";

/// Everything the tests need, or skip (fail under CI=true) naming what is missing.
fn ready() -> bool {
    if !is_root() {
        require_or_skip("the kennel tests need root (network namespaces)");
        return false;
    }
    for tool in [
        "ip", "pasta", "nft", "python3", "dig", "getent", "setpriv", "unshare",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            require_or_skip(&format!(
                "{tool} is not installed (apt: passt, nftables, iproute2, dnsutils, python3)"
            ));
            return false;
        }
    }
    true
}

/// Runs `f` on a thread inside network namespace `ns` (sockets stay there).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(format!("/run/netns/{ns}")).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// The world: `w0` (198.51.100.1/28, 2001:db8:1::1/64) routes to a stub peer
/// namespace; services listen on the world's loopback addresses, which are
/// off-link for the kennel, so they are reached through pasta.
struct World {
    ns: String,
    peer: String,
    dir: PathBuf,
    unix: Vec<PathBuf>,
    server: Child,
    _dns: Vec<Upstream>,
}

impl World {
    fn new(tag: &str) -> World {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let (ns, peer) = (format!("akw-{id}"), format!("akp-{id}"));
        // The kennel hides /tmp and /run: a scratch directory it can see,
        // writable by its (unprivileged) root; /var/tmp when the checkout
        // itself is under one of them.
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let base = if base.starts_with("/tmp") || base.starts_with("/run") {
            Path::new("/var/tmp")
        } else {
            base
        };
        let dir = base.join(format!("kennel-{tag}-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::copy(data("kennel/probe.py"), dir.join("probe.py")).unwrap();
        let rootdir = dir.join("rootonly");
        std::fs::create_dir(&rootdir).unwrap();
        std::fs::set_permissions(&rootdir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let unix = vec![
            PathBuf::from(format!("/run/allowdns-kennel-{id}.sock")),
            PathBuf::from(format!("/tmp/allowdns-kennel-{id}.sock")),
        ];
        sh(&["ip", "netns", "add", &ns]);
        sh(&["ip", "netns", "add", &peer]);
        let w = |args: &str| {
            let mut v = vec!["ip", "-n", &ns];
            v.extend(args.split_whitespace());
            sh(&v);
        };
        let p = |args: &str| {
            let mut v = vec!["ip", "-n", &peer];
            v.extend(args.split_whitespace());
            sh(&v);
        };
        w("link set lo up");
        sh(&[
            "ip", "-n", &ns, "link", "add", "w0", "type", "veth", "peer", "name", "w1", "netns",
            &peer,
        ]);
        w("link set w0 up");
        p("link set w1 up");
        w("addr add 198.51.100.1/28 dev w0");
        p("addr add 198.51.100.14/28 dev w1");
        w("-6 addr add 2001:db8:1::1/64 dev w0 nodad");
        p("-6 addr add 2001:db8:1::fe/64 dev w1 nodad");
        for a in ["53", "66", "200", "201", "202"] {
            w(&format!("addr add 198.51.100.{a}/32 dev lo"));
        }
        for a in ["200", "201", "202"] {
            w(&format!("-6 addr add 2001:db8:2::{a}/128 dev lo"));
        }
        w("route add default via 198.51.100.14");
        w("-6 route add default via 2001:db8:1::fe");
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv4.ping_group_range=0 2147483647",
        ]);
        let zone = data("kennel/kennel.test.zone");
        let dns = in_netns(&ns, || {
            vec![
                Upstream::start(DNS, 53, std::slice::from_ref(&zone)),
                Upstream::start(ROGUE, 53, std::slice::from_ref(&zone)),
                Upstream::start(ROGUE, 853, std::slice::from_ref(&zone)),
            ]
        });
        let mut server = Command::new("ip")
            .args(["netns", "exec", &ns, "python3"])
            .arg(data("kennel/world.py"))
            .args(&unix)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        World {
            ns,
            peer,
            dir,
            unix,
            server,
            _dns: dns,
        }
    }

    /// The probe helpers every script starts with.
    fn prelude(&self) -> String {
        format!(
            "P='{dir}/probe.py'; D='{dir}'\n\
             export P D\n\
             probe() {{ n=$1; shift; if \"$@\" >/dev/null 2>&1; then echo \"PROBE $n ok\"; else echo \"PROBE $n fail\"; fi; }}\n",
            dir = self.dir.display()
        )
    }

    fn fill(&self, script: &str) -> String {
        script
            .replace("RUNSOCK", &self.unix[0].display().to_string())
            .replace("TMPSOCK", &self.unix[1].display().to_string())
    }

    /// `allowdns run` inside the world with `policy`, CMD = `sh -c SCRIPT`.
    fn run_cmd(&self, prefix: &[&str], policy: &Path, extra: &[&str], script: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .args(prefix)
            .arg(bin())
            .arg("run")
            .arg("--policy")
            .arg(policy)
            .args(["--upstream", DNS, "--audit-log"])
            .arg(self.dir.join("audit.jsonl"))
            .arg("--alerts")
            .arg(self.dir.join("alerts.log"))
            .args(extra)
            .args(["--", "sh", "-c"])
            .arg(format!("{}{}", self.prelude(), self.fill(script)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn run(&self, policy: &Path, extra: &[&str], script: &str) -> Ran {
        finish(self.run_cmd(&[], policy, extra, script).spawn().unwrap())
    }

    /// The same script with no fence: as root, straight in the world.
    fn unfenced(&self, script: &str) -> Ran {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "sh", "-c"])
            .arg(format!("{}{}", self.prelude(), self.fill(script)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        finish(child)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.peer])
            .status();
        for p in &self.unix {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn probes(&self) -> HashMap<String, bool> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix("PROBE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(n, r)| (n.to_string(), r == "ok"))
            .collect()
    }

    fn probe(&self, name: &str) -> bool {
        *self
            .probes()
            .get(name)
            .unwrap_or_else(|| panic!("no probe {name}:\n{}\n{}", self.stdout, self.stderr))
    }
}

/// Waits (at most 60 s) and collects the output.
fn finish(mut child: Child) -> Ran {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Probes that must get through unfenced (the positive controls) and fail in the kennel.
const ATTACKS: &str = r#"
probe tcp4_web_9090 python3 $P tcp 198.51.100.200 9090
probe tcp6_web_9090 python3 $P tcp 2001:db8:2::200 9090
probe tcp4_hard python3 $P tcp 198.51.100.201 8080
probe udp4_hard python3 $P udp 198.51.100.201 9999
probe icmp4_hard python3 $P icmp 198.51.100.201
probe tcp6_hard python3 $P tcp 2001:db8:2::201 8080
probe udp6_hard python3 $P udp 2001:db8:2::201 9999
probe icmp6_hard python3 $P icmp 2001:db8:2::201
probe rogue_udp dig +time=1 +tries=1 @198.51.100.66 web.kennel.test
probe rogue_tcp dig +tcp +time=1 +tries=1 @198.51.100.66 web.kennel.test
probe rogue_853 dig +tcp +time=1 +tries=1 -p 853 @198.51.100.66 web.kennel.test
probe upstream_udp dig +time=1 +tries=1 @198.51.100.53 web.kennel.test
probe upstream_tcp dig +tcp +time=1 +tries=1 @198.51.100.53 web.kennel.test
probe loopback_service python3 $P tcp 127.0.0.1 7070
probe packet_socket python3 $P packet x
probe raw_socket python3 $P raw x
probe unix_run python3 $P unix RUNSOCK
probe unix_tmp python3 $P unix TMPSOCK
probe write_root_file sh -c 'echo x > "$D/rootonly/pwned"'
probe read_shadow cat /etc/shadow
"#;

/// Only in the kennel: what must work there, and attacks with no unfenced counterpart.
const KENNEL_ONLY: &str = r#"
probe resolve_web getent ahosts web.kennel.test
probe tcp_web_8080 python3 $P tcp web.kennel.test 8080
probe tcp4_web_8080 python3 $P tcp 198.51.100.200 8080
probe tcp6_web_8080 python3 $P tcp 2001:db8:2::200 8080
probe resolve_any getent ahosts any.kennel.test
probe icmp4_any python3 $P icmp 198.51.100.202
probe icmp6_any python3 $P icmp 2001:db8:2::202
probe udp4_any python3 $P udp 198.51.100.202 9999
probe udp6_any python3 $P udp 2001:db8:2::202 9999
probe resolve_other getent hosts other.kennel.test
probe nxdomain_other sh -c 'dig +time=2 +tries=1 other.kennel.test | grep -q NXDOMAIN'
probe root_inside sh -c 'test "$(id -u)" = 0'
probe resolv_names_allowdns sh -c 'test "$(grep ^nameserver /etc/resolv.conf)" = "nameserver 127.0.0.1"'
probe nft_flush nft flush ruleset
probe nft_flush_new_userns unshare -Ur nft flush ruleset
probe write_resolv sh -c 'grep -qx "nameserver 127.0.0.1" /etc/resolv.conf || exit 0; echo nameserver 198.51.100.66 > /etc/resolv.conf'
probe umount_resolv umount /etc/resolv.conf
probe loopback_gw python3 $P tcp 198.51.100.14 7070
probe loopback_self python3 $P tcp 198.51.100.1 7070
probe own_proc sh -c 'grep -q __kennel /proc/1/cmdline && test $(ls -d /proc/[0-9]* | wc -l) -lt 12'
probe signal_run sh -c 'i=0; while [ ! -s "$D/run.pid" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; kill -0 "$(cat "$D/run.pid")"'
"#;

/// The unfenced controls, the kennel's probes, the alerts and the audit log, from one world.
struct FenceResults {
    control: HashMap<String, bool>,
    kennel: HashMap<String, bool>,
    other_direct: bool,
    code: Option<i32>,
    output: String,
    alerts: String,
    audit: Vec<serde_json::Value>,
}

/// Runs every probe line of `script` at once (each waits up to its timeout).
fn parallel(script: &str) -> String {
    let mut out: String = script
        .lines()
        .map(|l| {
            if l.starts_with("probe ") {
                format!("{l} &\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    out.push_str("wait\n");
    out
}

fn fence() -> Option<&'static FenceResults> {
    static RESULTS: OnceLock<Option<FenceResults>> = OnceLock::new();
    RESULTS
        .get_or_init(|| {
            if !ready() {
                return None;
            }
            let world = World::new("fence");
            let control = world.unfenced(&format!(
                "{}\nprobe other_direct sh -c 'dig +short @198.51.100.53 other.kennel.test | grep -q 198.51.100.201'\n",
                parallel(ATTACKS)
            ));
            // Attribution's budget generous: a debug build among parallel probes.
            let config = world.dir.join("allowdns.yaml");
            std::fs::write(&config, "alerts:\n  attribution_budget_ms: 1000\n").unwrap();
            let child = world
                .run_cmd(&[], &data("kennel/policy.yaml"), &["--config", config.to_str().unwrap()], &format!("{KENNEL_ONLY}{}", parallel(ATTACKS)))
                .spawn()
                .unwrap();
            std::fs::write(world.dir.join("run.pid"), child.id().to_string()).unwrap();
            let ran = finish(child);
            let mut control_probes = control.probes();
            let other_direct = control_probes.remove("other_direct").unwrap_or(false);
            Some(FenceResults {
                control: control_probes,
                kennel: ran.probes(),
                other_direct,
                code: ran.code,
                output: format!("{}\n{}", ran.stdout, ran.stderr),
                alerts: std::fs::read_to_string(world.dir.join("alerts.log")).unwrap_or_default(),
                audit: common::read_audit(&world.dir.join("audit.jsonl")),
            })
        })
        .as_ref()
}

fn assert_probes(r: &FenceResults, ok: &[&str], blocked: &[&str]) {
    assert_eq!(r.code, Some(0), "{}", r.output);
    for name in ok {
        assert_eq!(
            r.kennel.get(*name),
            Some(&true),
            "{name} must work in the kennel:\n{}",
            r.output
        );
    }
    for name in blocked {
        // Positive control first: the attack works without the fence.
        if let Some(control) = r.control.get(*name) {
            assert!(control, "{name} must work unfenced (positive control)");
        }
        assert_eq!(
            r.kennel.get(*name),
            Some(&false),
            "{name} must fail in the kennel:\n{}",
            r.output
        );
    }
}

#[test]
fn t01_allowed_name_connects_on_its_port_only() {
    let Some(r) = fence() else { return };
    assert_probes(
        r,
        &["resolve_web", "tcp_web_8080", "tcp4_web_8080"],
        &["tcp4_web_9090"],
    );
}

#[test]
fn t02_denied_name_is_nxdomain_with_alert_and_audit() {
    let Some(r) = fence() else { return };
    assert!(
        r.other_direct,
        "other.kennel.test must resolve unfenced (positive control)"
    );
    assert_probes(r, &["nxdomain_other"], &["resolve_other"]);
    assert!(
        r.alerts.contains("other.kennel.test"),
        "alert: {}",
        r.alerts
    );
    assert!(
        r.audit
            .iter()
            .any(|v| v["qname"] == "other.kennel.test" && v["decision"] == "deny"),
        "audit: {:?}",
        r.audit
    );
    assert!(
        r.audit
            .iter()
            .any(|v| v["qname"] == "web.kennel.test" && v["decision"] == "allow")
    );
    // Who asked: the PID the agent sees and the host's, up to the kennel's init.
    let asked: Vec<_> = r
        .audit
        .iter()
        .filter(|v| v["qname"] == "other.kennel.test")
        .collect();
    for v in &asked {
        let (pid, host) = (v["pid"].as_u64(), v["host_pid"].as_u64());
        assert!(
            pid.is_some() && host.is_some() && pid != host,
            "in the kennel, two PIDs: {v}"
        );
        assert!(
            ["getent", "dig"].contains(&v["comm"].as_str().unwrap()),
            "{v}"
        );
        let parents = v["parents"].as_array().unwrap();
        assert_eq!(
            parents.last().unwrap()["pid"],
            1,
            "up to the kennel's init: {v}"
        );
    }
    assert!(!asked.is_empty());
    let line = r
        .alerts
        .lines()
        .find(|l| l.starts_with("PID: "))
        .unwrap_or_else(|| panic!("no PID line: {}", r.alerts));
    let (pid, host) = line["PID: ".len()..]
        .trim_end_matches(')')
        .split_once(" (host ")
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        pid.parse::<u32>().unwrap() != host.parse::<u32>().unwrap(),
        "{line}"
    );
}

#[test]
fn t03_hard_coded_addresses_fail_over_tcp_udp_icmp() {
    let Some(r) = fence() else { return };
    assert_probes(
        r,
        &["icmp4_any", "udp4_any"],
        &["tcp4_hard", "udp4_hard", "icmp4_hard"],
    );
}

/// The hard-coded attempts of t03 are each alerted and audited, with what
/// allowdns knows: never handed out, or handed out for another port.
#[test]
fn t13_blocked_connections_are_alerted_and_audited() {
    let Some(r) = fence() else { return };
    // Positive control: they got through unfenced, and failed in the kennel.
    assert_probes(
        r,
        &[],
        &["tcp4_hard", "udp4_hard", "icmp4_hard", "tcp4_web_9090"],
    );
    let egress = |addr: &str, proto: &str| {
        r.audit
            .iter()
            .find(|v| v["event"] == "egress_denied" && v["addr"] == addr && v["proto"] == proto)
            .unwrap_or_else(|| panic!("no egress_denied for {addr}/{proto}: {:?}", r.audit))
            .clone()
    };
    let tcp = egress("198.51.100.201", "tcp");
    assert_eq!(tcp["action"], "blocked");
    assert_eq!(tcp["port"], 8080);
    assert_eq!(tcp["agent"], "kennel_agent");
    assert!(tcp["resolved"].is_null(), "{tcp}");
    assert_eq!(egress("198.51.100.201", "udp")["port"], 9999);
    assert!(egress("198.51.100.201", "icmp")["port"].is_null());
    // Handed out for 8080, tried on 9090: the record names the name and port.
    let web = r
        .audit
        .iter()
        .find(|v| {
            v["event"] == "egress_denied" && v["addr"] == "198.51.100.200" && v["port"] == 9090
        })
        .unwrap_or_else(|| panic!("{:?}", r.audit));
    assert_eq!(web["resolved"], "web.kennel.test", "{web}");
    assert_eq!(web["resolved_ports"], "8080/tcp", "{web}");
    assert_eq!(web["rule"], "web.kennel.test", "{web}");
    // The alerts: the seeds' block, blocked, with the process; the parallel
    // probes fold into one summary.
    assert!(
        r.alerts.contains("[!] UNEXPECTED OUTBOUND CONNECTION\n"),
        "{}",
        r.alerts
    );
    assert!(r.alerts.contains("\nAction: BLOCKED\n"), "{}", r.alerts);
    // The process, or why not (a loaded machine may run out of the budget).
    assert!(r.alerts.contains("\nPID: "), "{}", r.alerts);
    assert!(
        r.alerts.contains("more connection attempts from"),
        "{}",
        r.alerts
    );
}

/// `run --monitor`: the unlisted name resolves and the connection to it
/// passes, both alerted as logged, the connection with its name.
#[test]
fn t14_monitor_lets_through_and_alerts() {
    if !ready() {
        return;
    }
    let world = World::new("monitor");
    let workload = "probe resolve_other getent ahostsv4 other.kennel.test\nprobe tcp_other python3 $P tcp 198.51.100.201 8080\n";
    // Positive control: enforced, both fail.
    let ran = world.run(&data("kennel/policy.yaml"), &[], workload);
    assert!(
        !ran.probe("resolve_other") && !ran.probe("tcp_other"),
        "{}",
        ran.stdout
    );
    let ran = world.run(&data("kennel/policy.yaml"), &["--monitor"], workload);
    assert!(
        ran.probe("resolve_other") && ran.probe("tcp_other"),
        "monitor mode blocked: {}\n{}",
        ran.stdout,
        ran.stderr
    );
    let alerts = std::fs::read_to_string(world.dir.join("alerts.log")).unwrap_or_default();
    assert!(
        alerts.contains("Query: other.kennel.test A\nAction: LOGGED (Block policy not enabled)\n"),
        "{alerts}"
    );
    assert!(
        alerts.contains("Destination: 198.51.100.201:8080/tcp (resolved: other.kennel.test, handed to agent kennel_agent outside the allowlist)\nAction: LOGGED (Block policy not enabled)\n"),
        "{alerts}"
    );
}

#[test]
fn t04_raw_dns_to_a_rogue_resolver_fails() {
    let Some(r) = fence() else { return };
    assert_probes(
        r,
        &["resolve_web"],
        &["rogue_udp", "rogue_tcp", "rogue_853"],
    );
}

#[test]
fn t05_ipv6_is_fenced_like_ipv4() {
    let Some(r) = fence() else { return };
    assert_probes(
        r,
        &["tcp6_web_8080", "icmp6_any", "udp6_any"],
        &["tcp6_web_9090", "tcp6_hard", "udp6_hard", "icmp6_hard"],
    );
}

#[test]
fn t07_root_in_the_kennel_cannot_loosen_the_fence() {
    let Some(r) = fence() else { return };
    assert_probes(
        r,
        &["root_inside", "resolv_names_allowdns"],
        &[
            "nft_flush",
            "nft_flush_new_userns",
            "write_resolv",
            "umount_resolv",
            "upstream_udp",
            "upstream_tcp",
        ],
    );
}

#[test]
fn escape_signal_or_see_allowdns_and_pasta() {
    let Some(r) = fence() else { return };
    // Control: kill -0 on run's pid works from the world (it did: the run was started there).
    assert_probes(r, &["own_proc"], &["signal_run"]);
}

#[test]
fn escape_write_root_owned_files() {
    let Some(r) = fence() else { return };
    assert_probes(r, &["root_inside"], &["write_root_file", "read_shadow"]);
}

#[test]
fn escape_host_loopback_through_pasta() {
    let Some(r) = fence() else { return };
    assert_probes(
        r,
        &[],
        &["loopback_service", "loopback_gw", "loopback_self"],
    );
}

#[test]
fn escape_packet_and_raw_sockets() {
    let Some(r) = fence() else { return };
    assert_probes(r, &[], &["packet_socket", "raw_socket"]);
}

#[test]
fn escape_unix_sockets_of_host_daemons() {
    let Some(r) = fence() else { return };
    assert_probes(r, &[], &["unix_run", "unix_tmp"]);
}

/// A probe loop that double-forks away from CMD and reports to `$D/bg.log`.
const DAEMON: &str = r#"
( ( while :; do
   probe bg_web python3 $P tcp 198.51.100.200 8080 >> "$D/bg.log"
   probe bg_hard python3 $P tcp 198.51.100.201 8080 >> "$D/bg.log"
   date +%s%N > "$D/heartbeat"; sleep 0.1; done ) & ) &
i=0; while [ ! -e "$D/stop" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
"#;

fn wait_for_file(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The processes whose network namespace is `inode` (`net:[N]`).
fn in_namespace(link: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|l| l.to_string_lossy() == link)
        })
        .collect()
}

/// run's children: the holder and pasta.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn t06_t09_double_forked_daemon_is_fenced_then_everything_is_torn_down() {
    if !ready() {
        return;
    }
    let world = World::new("daemon");
    let child = world
        .run_cmd(
            &[],
            &data("kennel/policy.yaml"),
            &[],
            &format!("getent ahosts web.kennel.test >/dev/null\n{DAEMON}"),
        )
        .spawn()
        .unwrap();
    let run_pid = child.id();
    let log = wait_for_file(&world.dir.join("bg.log"), "bg_hard");
    // Positive control, then the fence, both seen from the daemon while CMD still runs.
    assert!(log.contains("PROBE bg_web ok"), "{log}");
    assert!(log.contains("PROBE bg_hard fail"), "{log}");
    // Find the kennel's namespace and processes before they end.
    // `ip netns exec` execs run: the child's pid is run's.
    let run = run_pid;
    let started = children(run);
    assert_eq!(started.len(), 2, "holder and pasta: {started:?}");
    let holder = started
        .iter()
        .copied()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("holder"))
        })
        .expect("holder");
    let netns = std::fs::read_link(format!("/proc/{holder}/ns/net"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(in_namespace(&netns).len() >= 3, "holder, init, CMD, daemon");
    std::fs::write(world.dir.join("stop"), "").unwrap();
    let ran = finish(child);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    // t09: no process, namespace or set left; pasta gone.
    assert_eq!(
        in_namespace(&netns),
        Vec::<u32>::new(),
        "processes left in the kennel"
    );
    for pid in &started {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} survived"
        );
    }
    let beat = std::fs::read_to_string(world.dir.join("heartbeat")).unwrap_or_default();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        beat,
        std::fs::read_to_string(world.dir.join("heartbeat")).unwrap_or_default(),
        "the double-forked daemon outlived CMD"
    );
    let leftovers = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("allowdns-run-{run}-"))
        })
        .count();
    assert_eq!(leftovers, 0, "run's temp directory was left behind");
    // The world's own ruleset never held the kennel's sets.
    let world_rules = Command::new("ip")
        .args(["netns", "exec", &world.ns, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&world_rules.stdout).contains("allowdns"));
}

#[test]
fn t08_exit_status_passes_through_and_sigint_ends_cmd() {
    if !ready() {
        return;
    }
    let world = World::new("status");
    let policy = data("kennel/policy.yaml");
    let ran = world.run(&policy, &[], "exit 42");
    assert_eq!(ran.code, Some(42), "{}", ran.stderr);
    let ran = world.run(&policy, &[], "exit 0");
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    // SIGINT to run reaches CMD, which traps it; until then CMD keeps running.
    let child = world
        .run_cmd(
            &[],
            &policy,
            &[],
            r#"trap 'echo GOT_INT; exit 130' INT; touch "$D/ready"; i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; echo TIMEOUT"#,
        )
        .spawn()
        .unwrap();
    wait_for_file(&world.dir.join("ready"), "");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !world.dir.join("ready").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    // ip netns exec execs run, so the child's pid is run's.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let ran = finish(child);
    assert!(
        ran.stdout.contains("GOT_INT"),
        "{}\n{}",
        ran.stdout,
        ran.stderr
    );
    assert_eq!(ran.code, Some(130));
}

#[test]
fn t10_learn_then_run_with_the_suggested_policy() {
    if !ready() {
        return;
    }
    let world = World::new("learn");
    let workload = "probe resolve_web getent ahosts web.kennel.test\nprobe tcp_web_8080 python3 $P tcp web.kennel.test 8080\nprobe tcp_hard python3 $P tcp 198.51.100.201 8080\n";
    // Positive control: the starting policy does not allow the workload.
    let ran = world.run(&data("kennel/learn.yaml"), &[], workload);
    assert!(!ran.probe("tcp_web_8080"), "{}", ran.stdout);
    let suggested = world.dir.join("suggested.yaml");
    let ran = world.run(
        &data("kennel/learn.yaml"),
        &["--learn", "--suggest-out", suggested.to_str().unwrap()],
        workload,
    );
    assert!(
        ran.probe("tcp_web_8080"),
        "learn mode resolves and opens: {}",
        ran.stderr
    );
    let text = std::fs::read_to_string(&suggested).unwrap_or_default();
    assert!(text.contains("web.kennel.test"), "{text}\n{}", ran.stderr);
    // The hard-coded connection learn mode saw (and blocked) is offered, commented out.
    assert!(
        text.contains("  # this agent connected to 198.51.100.201:8080 without a lookup (")
            && text.contains("  # - destination: \"198.51.100.201\"\n  #   port: 8080\n"),
        "{text}"
    );
    let check = Command::new(bin())
        .args(["check", "--upstream", "none", "--policy"])
        .arg(&suggested)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let ran = world.run(&suggested, &[], workload);
    assert!(
        ran.probe("resolve_web") && ran.probe("tcp_web_8080"),
        "{}\n{}",
        ran.stdout,
        ran.stderr
    );
}

#[test]
fn t11_rootless_run_works() {
    if !ready() {
        return;
    }
    let world = World::new("rootless");
    let script = "probe uid sh -c 'test $(id -u) = 0'\nprobe tcp_web_8080 python3 $P tcp web.kennel.test 8080\nprobe tcp4_hard python3 $P tcp 198.51.100.201 8080\n";
    let child = world
        .run_cmd(
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ],
            &data("kennel/policy.yaml"),
            &[],
            script,
        )
        .spawn()
        .unwrap();
    let ran = finish(child);
    // Positive control: the rootless kennel starts and the allowed name connects.
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.probe("uid") && ran.probe("tcp_web_8080"),
        "{}\n{}",
        ran.stdout,
        ran.stderr
    );
    assert!(!ran.probe("tcp4_hard"), "{}", ran.stdout);
}

#[test]
fn t12_without_user_namespaces_run_refuses_and_never_runs_cmd() {
    if !ready() {
        return;
    }
    let world = World::new("nouserns");
    let marker = world.dir.join("ran");
    let script = format!("touch '{}'", marker.display());
    let inside = |limit: &str| {
        let wrap = format!("echo {limit} > /proc/sys/user/max_user_namespaces && exec \"$@\"");
        let child = world
            .run_cmd(
                &["unshare", "-Ur", "sh", "-c", &wrap, "wrap"],
                &data("kennel/policy.yaml"),
                &[],
                &script,
            )
            .spawn()
            .unwrap();
        finish(child)
    };
    // Positive control: in a user namespace that allows more, run starts CMD.
    let ran = inside("100");
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(marker.exists(), "{}", ran.stderr);
    std::fs::remove_file(&marker).unwrap();
    let ran = inside("0");
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr.contains("user namespaces are disabled"),
        "{}",
        ran.stderr
    );
    assert!(!marker.exists(), "CMD ran without the fence");
}

#[test]
fn escape_killing_allowdns_leaves_no_egress() {
    if !ready() {
        return;
    }
    let world = World::new("kill");
    // No pipes: a survivor holding them must fail the test, not hang it.
    let child = world
        .run_cmd(
            &[],
            &data("kennel/policy.yaml"),
            &[],
            &format!("getent ahosts web.kennel.test >/dev/null\n{DAEMON}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = wait_for_file(&world.dir.join("bg.log"), "bg_web");
    assert!(
        log.contains("PROBE bg_web ok"),
        "positive control: egress works first: {log}"
    );
    let run = child.id();
    let started = children(run);
    let holder = started
        .iter()
        .copied()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("holder"))
        })
        .expect("holder");
    let netns = std::fs::read_link(format!("/proc/{holder}/ns/net"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = finish(child);
    // pasta and every process of the kennel die with allowdns: no way out is left.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !in_namespace(&netns).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(in_namespace(&netns), Vec::<u32>::new());
    for pid in &started {
        let gone = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < gone {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} (pasta?) survived"
        );
    }
}
