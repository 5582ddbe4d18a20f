//! `allowdns run` (the kennel), end to end: the fence it builds and the
//! threat model's escapes. Root and real parts: a "world" network namespace
//! with services on documentation addresses, an authoritative DNS server and
//! a rogue resolver; `allowdns run` starts inside it (`ip netns exec`), so the
//! kennel's way out leads only into the world. CMD is a shell script using
//! getent, dig and python sockets (tests/data/kennel/probe.py). Every probe
//! that must fail in the kennel is first shown to succeed unfenced.

use crate::common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{
    Upstream, assert_has, assert_lacks, bin, console_commands, data, in_ns, missing_lines, netns,
    readme_blocks, repo, require_root_and, sh,
};

const DNS: &str = "198.51.100.53";
const ROGUE: &str = "198.51.100.66";

/// Everything the tests need, or skip (fail under CI=true) naming what is missing.
fn ready() -> bool {
    require_root_and(&[
        "ip", "pasta", "nft", "python3", "dig", "getent", "setpriv", "unshare",
    ])
}

/// A world named `tag`, when everything is there ([`ready`]).
fn world(tag: &str) -> Option<World> {
    ready().then(|| World::new(tag))
}

/// Under one of the kennel's private mounts.
fn hidden_in_kennel(path: &Path) -> bool {
    ["/tmp", "/run", "/var/tmp", "/dev/shm"]
        .iter()
        .any(|m| path.starts_with(m))
}

/// The world: `w0` (198.51.100.1/28, 2001:db8:1::1/64) routes to a stub peer
/// namespace; services listen on the world's loopback addresses, which are
/// off-link for the kennel, so they are reached through pasta.
struct World {
    ns: String,
    peer: String,
    dir: PathBuf,
    unix: Vec<PathBuf>,
    /// Host files in /dev/shm and /var/tmp, which the kennel makes private.
    host_files: Vec<PathBuf>,
    server: Child,
    _dns: Vec<Upstream>,
    _lab: netns::Lab,
}

impl World {
    fn new(tag: &str) -> World {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        // A scratch directory writable by the kennel's (unprivileged) root.
        // The kennel hides /tmp, /run, /var/tmp and /dev/shm: when the
        // checkout is under one of them, /var/tmp, shared with `--bind`.
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let base = if hidden_in_kennel(base) {
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
        let host_files: Vec<PathBuf> = ["/dev/shm", "/var/tmp"]
            .iter()
            .map(|d| PathBuf::from(format!("{d}/allowdns-kennel-{id}.txt")))
            .collect();
        for f in &host_files {
            std::fs::write(f, "host file\n").unwrap();
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let mut lab = netns::Lab::new("ak", &["w", "p"])
            .veth(
                ("w", "w0", "198.51.100.1/28"),
                ("p", "w1", "198.51.100.14/28"),
            )
            .ip("w", "-6 addr add 2001:db8:1::1/64 dev w0 nodad")
            .ip("p", "-6 addr add 2001:db8:1::fe/64 dev w1 nodad");
        for a in ["53", "66", "200", "201", "202"] {
            lab = lab.ip("w", &format!("addr add 198.51.100.{a}/32 dev lo"));
        }
        for a in ["200", "201", "202"] {
            lab = lab.ip("w", &format!("-6 addr add 2001:db8:2::{a}/128 dev lo"));
        }
        let lab = lab
            .ip("w", "route add default via 198.51.100.14")
            .ip("w", "-6 route add default via 2001:db8:1::fe")
            .sysctl("w", "net.ipv4.ping_group_range=0 2147483647");
        let (ns, peer) = (lab.name("w").to_string(), lab.name("p").to_string());
        let zone = data("kennel/kennel.test.zone");
        let dns = in_ns(lab.path("w"), || {
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
            host_files,
            server,
            _dns: dns,
            _lab: lab,
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
        let ns = |kind: &str| {
            std::fs::read_link(format!("/proc/self/ns/{kind}"))
                .map(|l| l.display().to_string())
                .unwrap_or_default()
        };
        script
            .replace("RUNSOCK", &self.unix[0].display().to_string())
            .replace("TMPSOCK", &self.unix[1].display().to_string())
            .replace("SHMFILE", &self.host_files[0].display().to_string())
            .replace("VARTMPFILE", &self.host_files[1].display().to_string())
            .replace("HOSTIPC", &ns("ipc"))
            .replace("HOSTUTS", &ns("uts"))
            .replace("HOSTCGROUP", &ns("cgroup"))
    }

    /// `allowdns run` inside the world with `policy`, CMD = `sh -c SCRIPT`.
    fn run_cmd(&self, prefix: &[&str], policy: &Path, extra: &[&str], script: &str) -> Command {
        let script = format!("{}{}", self.prelude(), self.fill(script));
        self.run_argv(prefix, policy, extra, &["sh", "-c", &script])
    }

    /// `allowdns run` inside the world with `policy`, CMD = `argv`. The
    /// scratch directory is shared when it lies under a private mount.
    fn run_argv(&self, prefix: &[&str], policy: &Path, extra: &[&str], argv: &[&str]) -> Command {
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
            .arg(self.dir.join("alerts.log"));
        if hidden_in_kennel(&self.dir) {
            cmd.arg("--bind").arg(&self.dir);
        }
        cmd.args(extra)
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// [`World::run_argv`] with no prefix, run to its end.
    fn exec(&self, policy: &Path, extra: &[&str], argv: &[&str]) -> Ran {
        finish(self.run_argv(&[], policy, extra, argv).spawn().unwrap())
    }

    /// `allowdns run ARGS -- sh -c SCRIPT` inside the world, no flags added
    /// but `--bind` for the scratch directory when it lies under a private mount.
    fn run_bare(&self, args: &[&str], script: &str) -> Ran {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(bin())
            .arg("run")
            .args(args);
        if hidden_in_kennel(&self.dir) {
            cmd.arg("--bind").arg(&self.dir);
        }
        let child = cmd
            .args(["--", "sh", "-c"])
            .arg(format!("{}{}", self.prelude(), self.fill(script)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        finish(child)
    }

    /// `allowdns run` on the kennel's own policy, CMD = `sh -c SCRIPT`.
    fn fenced_cmd(&self, script: &str) -> Command {
        self.run_cmd(&[], &data("kennel/policy.yaml"), &[], script)
    }

    /// [`World::fenced_cmd`], run to its end.
    fn fenced(&self, script: &str) -> Ran {
        self.run(&data("kennel/policy.yaml"), &[], script)
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
        for p in self.unix.iter().chain(&self.host_files) {
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

/// One probe of the shared fence run ([`fence`]) and what it must do: with
/// no fence (`None`: not run there) and in the kennel. `argv` is the
/// command line as sh reads it (`$P` is probe.py, `$D` the scratch
/// directory; RUNSOCK and the like are filled in by [`World::fill`]).
struct Probe {
    name: &'static str,
    argv: &'static str,
    unfenced: Option<bool>,
    fenced: bool,
}

impl Probe {
    const fn new(
        name: &'static str,
        argv: &'static str,
        unfenced: Option<bool>,
        fenced: bool,
    ) -> Probe {
        Probe {
            name,
            argv,
            unfenced,
            fenced,
        }
    }
}

/// Must work in the kennel.
const fn works(name: &'static str, argv: &'static str) -> Probe {
    Probe::new(name, argv, None, true)
}

/// Must fail in the kennel; it has no unfenced counterpart.
const fn refused(name: &'static str, argv: &'static str) -> Probe {
    Probe::new(name, argv, None, false)
}

/// An attack: it gets through unfenced (the positive control) and fails in the kennel.
const fn attack(name: &'static str, argv: &'static str) -> Probe {
    Probe::new(name, argv, Some(true), false)
}

const PROBES: &[Probe] = &[
    // Run in the kennel only, one after another.
    works(
        "no_tentative_v6",
        "sh -c '! ip -6 addr show | grep -q tentative'",
    ),
    works("resolve_web", "getent ahosts web.kennel.test"),
    works("tcp_web_8080", "python3 $P tcp web.kennel.test 8080"),
    works("tcp4_web_8080", "python3 $P tcp 198.51.100.200 8080"),
    works("tcp6_web_8080", "python3 $P tcp 2001:db8:2::200 8080"),
    works("resolve_any", "getent ahosts any.kennel.test"),
    works("icmp4_any", "python3 $P icmp 198.51.100.202"),
    works("icmp6_any", "python3 $P icmp 2001:db8:2::202"),
    works("udp4_any", "python3 $P udp 198.51.100.202 9999"),
    works("udp6_any", "python3 $P udp 2001:db8:2::202 9999"),
    refused("resolve_other", "getent hosts other.kennel.test"),
    works(
        "nxdomain_other",
        "sh -c 'dig +time=2 +tries=1 other.kennel.test | grep -q NXDOMAIN'",
    ),
    works("root_inside", r#"sh -c 'test "$(id -u)" = 0'"#),
    works(
        "resolv_names_allowdns",
        r#"sh -c 'test "$(grep ^nameserver /etc/resolv.conf)" = "nameserver 127.0.0.1"'"#,
    ),
    refused("nft_flush", "nft flush ruleset"),
    refused("nft_flush_new_userns", "unshare -Ur nft flush ruleset"),
    refused(
        "write_resolv",
        r#"sh -c 'grep -q __kennel /proc/1/cmdline && grep -q " /etc/resolv.conf " /proc/self/mountinfo && grep -qx "nameserver 127.0.0.1" /etc/resolv.conf || exit 0; echo nameserver 198.51.100.66 > /etc/resolv.conf'"#,
    ),
    refused("umount_resolv", "umount /etc/resolv.conf"),
    refused("loopback_gw", "python3 $P tcp 198.51.100.14 7070"),
    refused("loopback_self", "python3 $P tcp 198.51.100.1 7070"),
    works(
        "own_proc",
        "sh -c 'grep -q __kennel /proc/1/cmdline && test $(ls -d /proc/[0-9]* | wc -l) -lt 12'",
    ),
    refused(
        "signal_run",
        r#"sh -c 'i=0; while [ ! -s "$D/run.pid" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; kill -0 "$(cat "$D/run.pid")"'"#,
    ),
    // Run unfenced first (the positive control), then in the kennel, all at once.
    attack("tcp4_web_9090", "python3 $P tcp 198.51.100.200 9090"),
    attack("tcp6_web_9090", "python3 $P tcp 2001:db8:2::200 9090"),
    attack("tcp4_hard", "python3 $P tcp 198.51.100.201 8080"),
    attack("udp4_hard", "python3 $P udp 198.51.100.201 9999"),
    attack("icmp4_hard", "python3 $P icmp 198.51.100.201"),
    attack("tcp6_hard", "python3 $P tcp 2001:db8:2::201 8080"),
    attack("udp6_hard", "python3 $P udp 2001:db8:2::201 9999"),
    attack("icmp6_hard", "python3 $P icmp 2001:db8:2::201"),
    attack(
        "rogue_udp",
        "dig +time=1 +tries=1 @198.51.100.66 web.kennel.test",
    ),
    attack(
        "rogue_tcp",
        "dig +tcp +time=1 +tries=1 @198.51.100.66 web.kennel.test",
    ),
    attack(
        "rogue_853",
        "dig +tcp +time=1 +tries=1 -p 853 @198.51.100.66 web.kennel.test",
    ),
    attack(
        "upstream_udp",
        "dig +time=1 +tries=1 @198.51.100.53 web.kennel.test",
    ),
    attack(
        "upstream_tcp",
        "dig +tcp +time=1 +tries=1 @198.51.100.53 web.kennel.test",
    ),
    attack("loopback_service", "python3 $P tcp 127.0.0.1 7070"),
    attack("packet_socket", "python3 $P packet x"),
    attack("raw_socket", "python3 $P raw x"),
    attack("unix_run", "python3 $P unix RUNSOCK"),
    attack("unix_tmp", "python3 $P unix TMPSOCK"),
    attack("write_root_file", r#"sh -c 'echo x > "$D/rootonly/pwned"'"#),
    attack("read_shadow", "cat /etc/shadow"),
    attack("dev_shm_file", "cat SHMFILE"),
    attack("var_tmp_file", "cat VARTMPFILE"),
    attack(
        "host_ipc_ns",
        r#"sh -c 'test "$(readlink /proc/self/ns/ipc)" = "HOSTIPC"'"#,
    ),
    attack(
        "host_uts_ns",
        r#"sh -c 'test "$(readlink /proc/self/ns/uts)" = "HOSTUTS"'"#,
    ),
    attack(
        "host_cgroup_ns",
        r#"sh -c 'test "$(readlink /proc/self/ns/cgroup)" = "HOSTCGROUP"'"#,
    ),
];

/// The `probe NAME ARGV` lines of the probes `pick` selects.
fn script(pick: impl Fn(&Probe) -> bool) -> String {
    PROBES
        .iter()
        .filter(|p| pick(p))
        .map(|p| format!("probe {} {}\n", p.name, p.argv))
        .collect()
}

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
                parallel(&script(|p| p.unfenced.is_some()))
            ));
            // Attribution's budget generous: a debug build among parallel probes.
            let config = world.dir.join("allowdns.yaml");
            std::fs::write(&config, "alerts:\n  attribution_budget_ms: 1000\n").unwrap();
            let child = world
                .run_cmd(&[], &data("kennel/policy.yaml"), &["--config", config.to_str().unwrap()], &format!(
                        "{}{}",
                        script(|p| p.unfenced.is_none()),
                        parallel(&script(|p| p.unfenced.is_some()))
                    ))
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

/// Each named probe did what its row in [`PROBES`] says, the unfenced
/// control first.
fn assert_probes(r: &FenceResults, names: &[&str]) {
    assert_eq!(r.code, Some(0), "{}", r.output);
    for name in names {
        let row = PROBES
            .iter()
            .find(|p| p.name == *name)
            .unwrap_or_else(|| panic!("no probe {name} in PROBES"));
        if let Some(unfenced) = row.unfenced {
            assert_eq!(
                r.control.get(*name),
                Some(&unfenced),
                "{name} unfenced (positive control)"
            );
        }
        let verb = if row.fenced { "work" } else { "fail" };
        assert_eq!(
            r.kennel.get(*name),
            Some(&row.fenced),
            "{name} must {verb} in the kennel:\n{}",
            r.output
        );
    }
}

/// One test per row, each asserting a group of [`PROBES`] on the shared
/// fenced run ([`fence`]), the unfenced control first.
macro_rules! probe_tests {
    ($($(#[$doc:meta])* $name:ident: [$($probe:literal),* $(,)?];)*) => {
        $(
            $(#[$doc])*
            #[test]
            fn $name() {
                if let Some(r) = fence() {
                    assert_probes(r, &[$($probe),*]);
                }
            }
        )*
    };
}

probe_tests! {
    allowed_name_connects_on_its_port_only: ["resolve_web", "tcp_web_8080", "tcp4_web_8080", "tcp4_web_9090"];
    hard_coded_addresses_fail_over_tcp_udp_icmp: ["resolve_any", "icmp4_any", "udp4_any", "tcp4_hard", "udp4_hard", "icmp4_hard"];
    raw_dns_to_a_rogue_resolver_fails: ["resolve_web", "rogue_udp", "rogue_tcp", "rogue_853"];
    ipv6_is_fenced_like_ipv4: ["no_tentative_v6", "tcp6_web_8080", "icmp6_any", "udp6_any", "tcp6_web_9090", "tcp6_hard", "udp6_hard", "icmp6_hard"];
    root_in_the_kennel_cannot_loosen_the_fence: ["root_inside", "resolv_names_allowdns", "nft_flush", "nft_flush_new_userns", "write_resolv", "umount_resolv", "upstream_udp", "upstream_tcp"];
    /// Control: kill -0 on run's pid works from the world (it did: the run was started there).
    escape_signal_or_see_allowdns_and_pasta: ["own_proc", "signal_run"];
    escape_write_root_owned_files: ["root_inside", "write_root_file", "read_shadow"];
    escape_host_loopback_through_pasta: ["loopback_service", "loopback_gw", "loopback_self"];
    escape_packet_and_raw_sockets: ["packet_socket", "raw_socket"];
    escape_host_shm_var_tmp_and_ipc_uts_cgroup_namespaces: ["dev_shm_file", "var_tmp_file", "host_ipc_ns", "host_uts_ns", "host_cgroup_ns"];
    escape_unix_sockets_of_host_daemons: ["unix_run", "unix_tmp"];
}

#[test]
fn denied_name_is_nxdomain_with_alert_and_audit() {
    let Some(r) = fence() else { return };
    assert!(
        r.other_direct,
        "other.kennel.test must resolve unfenced (positive control)"
    );
    assert_probes(r, &["nxdomain_other", "resolve_other"]);
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

/// The hard-coded attempts above are each alerted and audited, with what
/// allowdns knows: never handed out, or handed out for another port.
#[test]
fn blocked_connections_are_alerted_and_audited() {
    let Some(r) = fence() else { return };
    // Positive control: they got through unfenced, and failed in the kennel.
    assert_probes(
        r,
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
    assert_has(&r.alerts, "[!] UNEXPECTED OUTBOUND CONNECTION\n");
    assert_has(&r.alerts, "\nAction: BLOCKED\n");
    // The process, or why not (a loaded machine may run out of the budget).
    assert_has(&r.alerts, "\nPID: ");
    assert_has(&r.alerts, "more connection attempts from");
}

/// `run --monitor`: the unlisted name resolves and the connection to it
/// passes, both alerted as logged, the connection with its name.
#[test]
fn monitor_lets_through_and_alerts() {
    let Some(world) = world("monitor") else {
        return;
    };
    let workload = "probe resolve_other getent ahostsv4 other.kennel.test\nprobe tcp_other python3 $P tcp 198.51.100.201 8080\n";
    // Positive control: enforced, both fail.
    let ran = world.fenced(workload);
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
    assert_has(
        &alerts,
        "Query: other.kennel.test A\nAction: LOGGED (Block policy not enabled)\n",
    );
    assert_has(
        &alerts,
        "Destination: 198.51.100.201:8080/tcp (resolved: other.kennel.test, handed to agent kennel_agent outside the allowlist)\nAction: LOGGED (Block policy not enabled)\n",
    );
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

/// The kennel's network namespace, read from its holder among `started`
/// (run's children).
fn kennel_netns(started: &[u32]) -> String {
    let holder = started
        .iter()
        .copied()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("holder"))
        })
        .expect("holder");
    std::fs::read_link(format!("/proc/{holder}/ns/net"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn double_forked_daemon_is_fenced_then_everything_is_torn_down() {
    let Some(world) = world("daemon") else {
        return;
    };
    let child = world
        .fenced_cmd(&format!(
            "getent ahosts web.kennel.test >/dev/null\n{DAEMON}"
        ))
        .spawn()
        .unwrap();
    let run_pid = child.id();
    let log = wait_for_file(&world.dir.join("bg.log"), "bg_hard");
    // Positive control, then the fence, both seen from the daemon while CMD still runs.
    assert_has(&log, "PROBE bg_web ok");
    assert_has(&log, "PROBE bg_hard fail");
    // Find the kennel's namespace and processes before they end.
    // `ip netns exec` execs run: the child's pid is run's.
    let run = run_pid;
    let started = children(run);
    assert_eq!(started.len(), 2, "holder and pasta: {started:?}");
    let netns = kennel_netns(&started);
    assert!(in_namespace(&netns).len() >= 3, "holder, init, CMD, daemon");
    std::fs::write(world.dir.join("stop"), "").unwrap();
    let ran = finish(child);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    // Torn down: no process, namespace or set left; pasta gone.
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
fn exit_status_passes_through_and_sigint_ends_cmd() {
    let Some(world) = world("status") else {
        return;
    };
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
fn learn_then_run_with_the_suggested_policy() {
    let Some(world) = world("learn") else {
        return;
    };
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
    assert_has(
        &text,
        "  # this agent connected to 198.51.100.201:8080 without a lookup (",
    );
    assert_has(
        &text,
        "  # - destination: \"198.51.100.201\"\n  #   port: 8080\n",
    );
    let (ok, _, stderr) = common::check_policy(&suggested);
    assert!(ok, "{stderr}");
    let ran = world.run(&suggested, &[], workload);
    assert!(
        ran.probe("resolve_web") && ran.probe("tcp_web_8080"),
        "{}\n{}",
        ran.stdout,
        ran.stderr
    );
}

#[test]
fn rootless_run_works() {
    let Some(world) = world("rootless") else {
        return;
    };
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
fn without_user_namespaces_run_refuses_and_never_runs_cmd() {
    let Some(world) = world("nouserns") else {
        return;
    };
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
    assert_has(&ran.stderr, "user namespaces are disabled");
    assert!(!marker.exists(), "CMD ran without the fence");
}

#[test]
fn escape_killing_allowdns_leaves_no_egress() {
    let Some(world) = world("kill") else {
        return;
    };
    // No pipes: a survivor holding them must fail the test, not hang it.
    let child = world
        .fenced_cmd(&format!(
            "getent ahosts web.kennel.test >/dev/null\n{DAEMON}"
        ))
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
    let netns = kennel_netns(&started);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = finish(child);
    // A SIGKILLed run cannot clean up (docs/kennel.md): its run directory is
    // the test's to remove.
    let prefix = format!("allowdns-run-{run}-");
    for entry in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
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

#[test]
fn run_help_lists_only_what_run_takes_and_usage_errors_exit_2() {
    let (_, help, _) = common::allowdns_via(&[], &["run", "--help"]);
    // Positive control: the help is there and lists run's own flags.
    assert_has(&help, "--policy <FILE>");
    assert_has(&help, "--learn");
    assert_lacks(&help, "--listen");
    assert_lacks(&help, "repeatable;");
    assert_has(&help, "`-` is stdout");
    let usage = |args: &[&str]| {
        let out = Command::new(bin()).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = usage(&["run", "--listen", "127.0.0.1:5300", "--", "true"]);
    assert_eq!(code, Some(2), "{err}");
    assert_has(&err, "--listen does not apply to run");
    let (code, err) = usage(&["run", "--", "true"]);
    assert_eq!(code, Some(2), "{err}");
    assert_has(&err, "run needs --policy FILE, or --learn");
    let (code, err) = usage(&[
        "run", "--policy", "a.yaml", "--policy", "b.yaml", "--", "true",
    ]);
    assert_eq!(code, Some(2), "{err}");
    // The usage line after an error does not make the flags given look required.
    let (code, err) = usage(&["run", "--zones", "zones", "--bogus", "--", "true"]);
    assert_eq!(code, Some(2), "{err}");
    assert_has(&err, "Usage: allowdns run [OPTIONS]");
    assert_lacks(&err, "--zones <");
    let (code, err) = usage(&["serve", "--zones", "zones", "--bogus"]);
    assert_eq!(code, Some(2), "{err}");
    assert_has(&err, "Usage: allowdns serve [OPTIONS]\n");
}

#[test]
fn short_commands_end_without_a_netns_warning() {
    let Some(world) = world("short") else {
        return;
    };
    let policy = data("kennel/policy.yaml");
    let args = ["--policy", policy.to_str().unwrap(), "--upstream", DNS];
    // Positive control: run starts and ends cleanly in this world.
    let ran = world.run_bare(&args, "exit 0");
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    for i in 0..20 {
        let child = Command::new("ip")
            .args(["netns", "exec", &world.ns])
            .arg(bin())
            .arg("run")
            .args(args)
            .args(["--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let ran = finish(child);
        assert_eq!(ran.code, Some(0), "run {i}: {}", ran.stderr);
        assert!(
            !ran.stderr.contains("nftables events") && !ran.stderr.contains("restart allowdns"),
            "run {i}: {}",
            ran.stderr
        );
    }
}

#[test]
fn learn_from_nothing_names_the_agent_and_keeps_the_evidence_when_asked() {
    let Some(world) = world("nothing") else {
        return;
    };
    let workload = "probe resolve_web getent ahosts web.kennel.test\nprobe tcp_web_8080 python3 $P tcp web.kennel.test 8080\n";
    let suggested = world.dir.join("from-nothing.yaml");
    let ran = world.run_bare(
        &[
            "--learn",
            "--agent",
            "scout",
            "--upstream",
            DNS,
            "--suggest-out",
            suggested.to_str().unwrap(),
        ],
        workload,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.probe("tcp_web_8080"),
        "learn mode opens: {}",
        ran.stderr
    );
    assert_has(&ran.stderr, "an empty policy for agent 'scout'");
    assert!(
        !ran.stderr.contains("allowdns-run-"),
        "a temp file is named: {}",
        ran.stderr
    );
    let text = std::fs::read_to_string(&suggested).unwrap_or_default();
    assert!(
        text.contains("agent_name: \"scout\""),
        "{text}\n{}",
        ran.stderr
    );
    assert_has(&text, "web.kennel.test");
    assert_lacks(&text, "\nclients:");
    assert_has(&text, "not kept: run with --audit-log FILE");
    // The agent's name defaults to CMD's file name; a kept log is cited.
    let kept = world.dir.join("kept.jsonl");
    let ran = world.run_bare(
        &[
            "--learn",
            "--upstream",
            DNS,
            "--audit-log",
            kept.to_str().unwrap(),
            "--suggest-out",
            suggested.to_str().unwrap(),
        ],
        workload,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let text = std::fs::read_to_string(&suggested).unwrap_or_default();
    assert_has(&text, "agent_name: \"sh\"");
    assert_has(&text, &kept.display().to_string());
    assert!(
        std::fs::read_to_string(&kept)
            .unwrap_or_default()
            .contains("web.kennel.test")
    );
    // The suggestion runs as it is, without a warning about clients.
    let ran = world.run_bare(
        &["--policy", suggested.to_str().unwrap(), "--upstream", DNS],
        workload,
    );
    assert!(ran.probe("tcp_web_8080"), "{}\n{}", ran.stdout, ran.stderr);
    assert_lacks(&ran.stderr, "clients ignored");
    // With a policy, the learn warning names the user's file.
    let learn = data("kennel/learn.yaml");
    let ran = world.run_bare(
        &[
            "--learn",
            "--policy",
            learn.to_str().unwrap(),
            "--upstream",
            DNS,
            "--suggest-out",
            suggested.to_str().unwrap(),
        ],
        workload,
    );
    assert!(
        ran.stderr
            .contains(&format!("names outside {}", learn.display())),
        "{}",
        ran.stderr
    );
}

#[test]
fn run_audit_log_dash_writes_stdout() {
    let Some(world) = world("auditdash") else {
        return;
    };
    let policy = data("kennel/policy.yaml");
    let script = "getent ahosts web.kennel.test >/dev/null; echo CMD-DONE";
    // Positive control: CMD's own output arrives on the same stdout.
    let ran = world.run_bare(
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--upstream",
            DNS,
            "--audit-log",
            "-",
        ],
        script,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_has(&ran.stdout, "CMD-DONE");
    assert!(
        ran.stdout
            .lines()
            .any(|l| l.starts_with('{') && l.contains("\"qname\":\"web.kennel.test\"")),
        "{}",
        ran.stdout
    );
    let ran = world.run_bare(
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--upstream",
            DNS,
            "--learn",
            "--audit-log",
            "-",
        ],
        script,
    );
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_has(&ran.stderr, "--audit-log");
    assert!(!ran.stdout.contains("CMD-DONE"), "CMD ran: {}", ran.stdout);
}

#[test]
fn readme_run_examples_print_what_the_readme_shows() {
    let Some(world) = world("readme") else {
        return;
    };
    // The README runs from the checkout's root; here, from a copy of what it
    // names, so that its output files land in the world's scratch directory.
    for dir in ["policies", "zones"] {
        sh(&[
            "cp",
            "-r",
            repo(dir).to_str().unwrap(),
            world.dir.to_str().unwrap(),
        ]);
    }
    sh(&["chmod", "-R", "a+rX", world.dir.to_str().unwrap()]);
    let commands: Vec<(String, Vec<String>)> = readme_blocks()
        .iter()
        .filter(|b| b.kind == "run")
        .flat_map(console_commands)
        .collect();
    // Positive control: the README's lab-free one-liner is among them.
    assert!(
        commands
            .iter()
            .any(|(c, _)| c.contains("--upstream none -- sh -c")),
        "{commands:?}"
    );
    for (cmd, shown) in commands {
        let rest = cmd.strip_prefix("allowdns run ").expect("a run command");
        // The README runs from a checkout the kennel can see; this copy may
        // lie under a private mount (a checkout under /tmp puts it in /var/tmp).
        let bind = if hidden_in_kennel(&world.dir) {
            format!("--bind '{}' ", world.dir.display())
        } else {
            String::new()
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &world.ns, "sh", "-c"])
            .arg(format!("exec '{}' run {bind}{rest}", bin()))
            .current_dir(&world.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let ran = finish(child);
        let all = format!("{}{}", ran.stdout, ran.stderr);
        let missing = missing_lines(&shown, &all);
        assert!(missing.is_empty(), "{cmd}: missing {missing:#?} in\n{all}");
    }
}

/// Waits (at most 20 s) until `path` exists.
fn wait_for_path(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A host directory under /tmp (hidden in the kennel), removed on drop.
struct HostTmp(PathBuf);

impl HostTmp {
    fn new(tag: &str) -> HostTmp {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = PathBuf::from(format!(
            "/tmp/allowdns-kennel-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        HostTmp(dir)
    }

    fn file(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

impl Drop for HostTmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reaching a host file and a host Unix socket through CMD's working directory.
const CWD_ATTACKS: &str = r#"
probe cwd_file cat ./secret.txt
probe cwd_proc_file cat /proc/self/cwd/secret.txt
probe cwd_socket python3 $P unix ./host.sock
probe cwd_proc_socket python3 $P unix /proc/self/cwd/host.sock
probe init_cwd_file cat /proc/1/cwd/secret.txt
"#;

#[test]
fn escape_working_directory_under_a_hidden_tmp() {
    let Some(world) = world("cwd") else {
        return;
    };
    let host = HostTmp::new("cwd");
    host.file("secret.txt", "host secret\n", 0o644);
    let sock = host.0.join("host.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Positive control: from that directory, unfenced, every probe gets through.
    let control = Command::new("ip")
        .args(["netns", "exec", &world.ns, "sh", "-c"])
        .arg(format!("{}{CWD_ATTACKS}", world.prelude()))
        .current_dir(&host.0)
        .output()
        .unwrap();
    let control = Ran {
        code: control.status.code(),
        stdout: String::from_utf8_lossy(&control.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&control.stderr).into_owned(),
    };
    for name in ["cwd_file", "cwd_proc_file", "cwd_socket", "cwd_proc_socket"] {
        assert!(control.probe(name), "{name} unfenced: {}", control.stderr);
    }
    let mut cmd = world.fenced_cmd(&format!("{CWD_ATTACKS}echo \"PWD_IS $(pwd)\"\n"));
    let ran = finish(cmd.current_dir(&host.0).spawn().unwrap());
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    for name in [
        "cwd_file",
        "cwd_proc_file",
        "cwd_socket",
        "cwd_proc_socket",
        "init_cwd_file",
    ] {
        assert!(!ran.probe(name), "{name} reached the host:\n{}", ran.stdout);
    }
    assert_has(&ran.stdout, "PWD_IS /\n");
    assert_has(
        &ran.stderr,
        &format!(
            "the working directory {} is not visible in the kennel",
            host.0.display()
        ),
    );
    // Root's home, which the kennel's uid cannot enter: CMD starts in / too.
    let root_private =
        std::fs::metadata("/root").is_ok_and(|m| m.permissions().mode() & 0o001 == 0);
    if root_private {
        let mut cmd = world.fenced_cmd("echo \"PWD_IS $(pwd)\"\n");
        let ran = finish(cmd.current_dir("/root").spawn().unwrap());
        assert_has(&ran.stdout, "PWD_IS /\n");
        assert_has(
            &ran.stderr,
            "the working directory /root is not visible in the kennel (host uid 65534 cannot reach it)",
        );
    }
}

#[test]
fn escape_inherited_file_descriptor() {
    let Some(world) = world("fd") else {
        return;
    };
    let host = HostTmp::new("fd");
    // Root's alone: only an inherited descriptor reaches it from the kennel.
    let secret = host.file("secret.txt", "FDSECRET\n", 0o600);
    let keep_fd7 = [
        "sh",
        "-c",
        "exec 7<\"$0\"; exec \"$@\"",
        secret.to_str().unwrap(),
    ];
    let script =
        "probe fd7 sh -c 'read l <&7 && test \"$l\" = FDSECRET'\nprobe by_path cat \"$0\"\n";
    // Positive control: unfenced, the descriptor reads the file.
    let control = Command::new("ip")
        .args(["netns", "exec", &world.ns])
        .args(keep_fd7)
        .args(["sh", "-c"])
        .arg(format!("{}{script}", world.prelude()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&control.stdout).contains("PROBE fd7 ok"),
        "{}",
        String::from_utf8_lossy(&control.stderr)
    );
    let policy = data("kennel/policy.yaml");
    let ran = finish(
        world
            .run_cmd(&keep_fd7, &policy, &[], script)
            .spawn()
            .unwrap(),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(!ran.probe("fd7"), "CMD inherited fd 7:\n{}", ran.stdout);
    // Asked for, it passes.
    let extra = ["--preserve-fds", "5"];
    let ran = finish(
        world
            .run_cmd(&keep_fd7, &policy, &extra, script)
            .spawn()
            .unwrap(),
    );
    assert!(
        ran.probe("fd7"),
        "--preserve-fds 5: {}\n{}",
        ran.stdout,
        ran.stderr
    );
}

/// CMD looks for `run`'s policy copy under a TMPDIR it can see, and tries to extend it.
const COPY_ATTACK: &str = r##"
probe sees_tmpdir test -d "$TMPDIR"
probe find_copy sh -c 'ls "$TMPDIR"/allowdns-run-*/policy.yaml'
probe write_copy sh -c 'for f in "$TMPDIR"/allowdns-run-*/policy.yaml; do echo "# x" >> "$f" || exit 1; done; test -e "$f"'
probe umount_cover sh -c 'umount "$TMPDIR"/allowdns-run-*'
touch "$D/probed"
i=0; while [ ! -e "$D/checked" ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
"##;

#[test]
fn policy_copy_is_out_of_cmds_reach_rootless_and_as_root() {
    if !ready() {
        return;
    }
    let rootless: &[&str] = &[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    for prefix in [&[][..], rootless] {
        let world = World::new("copy");
        let tmpdir = world.dir.join("tmpdir");
        std::fs::create_dir(&tmpdir).unwrap();
        std::fs::set_permissions(&tmpdir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let child = world
            .run_cmd(prefix, &data("kennel/policy.yaml"), &[], COPY_ATTACK)
            .env("TMPDIR", &tmpdir)
            .spawn()
            .unwrap();
        wait_for_path(&world.dir.join("probed"));
        // Positive control: the copy is there on the host, in a directory CMD sees;
        // run rootless, it belongs to CMD's own host uid.
        let copies: Vec<PathBuf> = std::fs::read_dir(&tmpdir)
            .unwrap()
            .filter_map(|e| Some(e.ok()?.path().join("policy.yaml")))
            .filter(|p| p.exists())
            .collect();
        let owner = copies.first().map(|c| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(c).map(|m| m.uid()).ok()
        });
        std::fs::write(world.dir.join("checked"), "").unwrap();
        let ran = finish(child);
        assert_eq!(copies.len(), 1, "{prefix:?}: no copy on the host");
        if !prefix.is_empty() {
            assert_eq!(
                owner,
                Some(Some(65534)),
                "rootless, the copy is CMD's uid's"
            );
        }
        assert_eq!(ran.code, Some(0), "{prefix:?}: {}", ran.stderr);
        assert!(ran.probe("sees_tmpdir"), "{}", ran.stdout);
        assert!(!ran.probe("find_copy"), "{prefix:?}: {}", ran.stdout);
        assert!(!ran.probe("write_copy"), "{prefix:?}: {}", ran.stdout);
        assert!(!ran.probe("umount_cover"), "{prefix:?}: {}", ran.stdout);
    }
}

#[test]
fn sighup_in_run_reloads_the_operators_policy_file() {
    let Some(world) = world("hup") else {
        return;
    };
    let policy = world.dir.join("operator.yaml");
    std::fs::copy(data("kennel/policy.yaml"), &policy).unwrap();
    let script = r#"
probe before getent hosts other.kennel.test
touch "$D/before"
i=0; while [ ! -e "$D/hupped" ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
i=0; while ! getent hosts other.kennel.test >/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
probe after getent hosts other.kennel.test
"#;
    let child = world.run_cmd(&[], &policy, &[], script).spawn().unwrap();
    wait_for_path(&world.dir.join("before"));
    let mut text = std::fs::read_to_string(&policy).unwrap();
    text.push_str("  - destination: other.kennel.test\n");
    std::fs::write(&policy, text).unwrap();
    // `ip netns exec` execs run: the child's pid is run's.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    std::fs::write(world.dir.join("hupped"), "").unwrap();
    let ran = finish(child);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    // Positive control: unlisted before the edit.
    assert!(!ran.probe("before"), "{}", ran.stdout);
    assert!(
        ran.probe("after"),
        "the operator's edit was not loaded:\n{}\n{}",
        ran.stdout,
        ran.stderr
    );
    // The scratch directory is everyone's: CMD could rewrite the file, and run says so.
    assert_has(
        &ran.stderr,
        &format!("CMD can rewrite the policy file {}", policy.display()),
    );
}

#[test]
fn missing_command_exits_127_not_found() {
    let Some(world) = world("missing") else {
        return;
    };
    let policy = data("kennel/policy.yaml");
    // Root's home first in PATH, as with pyenv or cargo: the kennel's uid cannot search it.
    let path = "/root:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    // Positive control: a command that exists runs.
    let run = |argv: &[&str]| {
        let mut cmd = world.run_argv(&[], &policy, &[], argv);
        finish(cmd.env("PATH", path).spawn().unwrap())
    };
    let ran = run(&["true"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let ran = run(&["allowdns-no-such-command"]);
    assert_eq!(ran.code, Some(127), "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("allowdns-no-such-command: command not found"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr
            .contains("PATH leaves out what it cannot use: /root"),
        "{}",
        ran.stderr
    );
    // A program PATH finds only under the private /tmp: named before CMD starts.
    let host = HostTmp::new("shim");
    let shim = host.file("allowdns-test-shim", "#!/bin/sh\necho SHIM RAN\n", 0o755);
    let shim_path = format!("{}:{path}", host.0.display());
    let control = Command::new("sh")
        .args(["-c", "allowdns-test-shim"])
        .env("PATH", &shim_path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&control.stdout).contains("SHIM RAN"));
    let mut cmd = world.run_argv(&[], &policy, &[], &["allowdns-test-shim"]);
    let ran = finish(cmd.env("PATH", &shim_path).spawn().unwrap());
    assert_eq!(ran.code, Some(127), "{}", ran.stderr);
    assert_has(
        &ran.stderr,
        &format!(
            "CMD 'allowdns-test-shim' is {} on the host, which the kennel cannot reach (/tmp is private in the kennel)",
            shim.display()
        ),
    );
}

#[test]
fn private_tmp_is_announced_and_ro_bind_shares_read_only() {
    let Some(world) = world("robind") else {
        return;
    };
    let host = HostTmp::new("robind");
    let agent = host.file("agent.py", "print('AGENT RAN')\n", 0o644);
    let scratch = host.file("scratch", "", 0o666);
    let agent_s = agent.to_str().unwrap();
    let policy = data("kennel/policy.yaml");
    let write = format!("echo x >> '{}'", scratch.display());
    let argv = [
        "sh",
        "-c",
        &format!("python3 \"$0\"; {write} && echo WROTE"),
        agent_s,
    ];
    // Positive control: unfenced, the agent runs and the file is writable.
    let control = Command::new("ip")
        .args(["netns", "exec", &world.ns])
        .args(argv)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&control.stdout);
    assert_has(&out, "AGENT RAN");
    assert_has(&out, "WROTE");
    // Hidden by default, and said so before CMD starts.
    let ran = world.exec(&policy, &[], &argv);
    assert_lacks(&ran.stdout, "AGENT RAN");
    let warning = format!(
        "argument '{agent_s}' names the host path {agent_s}, which is not visible in the kennel (/tmp is private in the kennel); share it with --ro-bind {agent_s}"
    );
    let said = ran.stderr.find(&warning);
    let failed = ran.stderr.find("can't open file");
    assert!(
        said.is_some() && failed.is_some() && said < failed,
        "{}",
        ran.stderr
    );
    assert_has(&ran.stderr, "private /tmp, /run");
    // Shared read-only: it runs, and CMD cannot write there.
    let dir = host.0.to_str().unwrap();
    let ran = world.exec(&policy, &["--ro-bind", dir], &argv);
    assert!(
        ran.stdout.contains("AGENT RAN"),
        "{}\n{}",
        ran.stdout,
        ran.stderr
    );
    assert_lacks(&ran.stdout, "WROTE");
    assert!(
        !ran.stderr
            .contains(&format!("names the host path {agent_s}")),
        "{}",
        ran.stderr
    );
    // Shared read-write when asked.
    let ran = world.exec(&policy, &["--bind", dir], &argv);
    assert!(
        ran.stdout.contains("WROTE"),
        "{}\n{}",
        ran.stdout,
        ran.stderr
    );
    // A path that is not there is bad input, and CMD never starts.
    let missing = format!("{dir}/missing");
    let ran = world.exec(&policy, &["--ro-bind", &missing], &argv);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains(&format!("{missing}: --ro-bind: cannot share it")),
        "{}",
        ran.stderr
    );
    assert_lacks(&ran.stdout, "AGENT RAN");
}

#[test]
fn serve_binds_an_ipv6_address_still_in_duplicate_address_detection() {
    let Some(world) = world("dad") else {
        return;
    };
    let (ns, peer) = (&world.ns, &world.peer);
    // A fresh link with its carrier up: its new address goes through DAD.
    sh(&[
        "ip", "-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1", "netns", peer,
    ]);
    sh(&["ip", "-n", peer, "link", "set", "d1", "up"]);
    sh(&["ip", "-n", ns, "link", "set", "d0", "up"]);
    sh(&[
        "ip",
        "-n",
        ns,
        "-6",
        "addr",
        "add",
        "2001:db8:7::5/64",
        "dev",
        "d0",
    ]);
    // Positive control: the address is tentative right now.
    let (_, shown) = common::sh_out(&["ip", "-n", ns, "-6", "addr", "show", "dev", "d0"]);
    assert_has(&shown, "tentative");
    let server = common::Allowdns::serve_via(
        &["ip", "netns", "exec", ns],
        &[
            "--listen",
            "[2001:db8:7::5]:5353",
            "--policy",
            data("kennel/policy.yaml").to_str().unwrap(),
            "--upstream",
            "none",
        ],
    );
    assert_eq!(server.udp.to_string(), "[2001:db8:7::5]:5353");
    assert!(
        server.stderr().contains("tentative"),
        "says why it waited: {}",
        server.stderr()
    );
}

/// Before CMD starts, the fence checks itself from inside: a policy that
/// opens the self-test's canary (192.0.2.1, never handed out otherwise) is
/// the cheapest broken fence, and CMD never runs. A closed port on an
/// allowed address times out through pasta (it does not pass the refusal
/// on); a denied one is rejected at once.
#[test]
fn the_fence_checks_itself_before_cmd_and_denials_fail_fast() {
    let Some(world) = world("selftest") else {
        return;
    };
    // Positive control: the shipped policy passes the check and CMD runs.
    let script = "echo CMD-RAN\nstart=$(date +%s%N)\ncurl -s -m 5 http://198.51.100.201:8080/ >/dev/null; echo \"denied $? $(( ($(date +%s%N) - start) / 1000000 ))\"\n";
    let ran = world.fenced(script);
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    assert_has(&ran.stdout, "CMD-RAN");
    let denied = ran
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("denied "))
        .unwrap_or_else(|| panic!("{}", ran.stdout));
    let (code, ms) = denied.split_once(' ').unwrap();
    assert_eq!(code, "7", "a denied address is rejected: {}", ran.stdout);
    assert!(
        ms.parse::<u64>().unwrap() < 1000,
        "rejected at once: {ms} ms"
    );
    let policy = world.dir.join("canary.yaml");
    std::fs::write(
        &policy,
        "agent_name: canary\nexpected_outbound:\n  - destination: web.kennel.test\n  - destination: 192.0.2.0/24\n",
    )
    .unwrap();
    let ran = world.run(&policy, &[], "echo CMD-RAN\n");
    assert_ne!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        !ran.stdout.contains("CMD-RAN"),
        "CMD ran on an unproven fence"
    );
    assert_has(&ran.stderr, "self-test");
    assert_has(&ran.stderr, "192.0.2.1");
}
