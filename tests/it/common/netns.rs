//! Network-namespace labs: namespaces a test creates and wires with veth
//! pairs, removed on drop, and threads that run inside one of them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Share, sh};

/// Network namespaces named `{prefix}-{role}-{pid}-{n}`, loopback up;
/// all deleted on drop (also when a test panics half-way through building).
pub struct Lab {
    names: Vec<(String, String)>,
    _share: Share,
}

impl Lab {
    /// One namespace per role, e.g. `Lab::new("adns", &["r", "a", "i"])`.
    pub fn new(prefix: &str, roles: &[&str]) -> Lab {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id() % 100_000);
        let mut lab = Lab {
            names: Vec::new(),
            _share: super::share(),
        };
        for role in roles {
            let name = format!("{prefix}-{role}-{id}");
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(std::process::Stdio::null())
                .status();
            sh(&["ip", "netns", "add", &name]);
            lab.names.push((role.to_string(), name));
            lab = lab.ip(role, "link set lo up");
        }
        lab
    }

    /// The namespace's name (for `ip netns exec NAME`, `ip -n NAME`).
    pub fn name(&self, role: &str) -> &str {
        self.names
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, n)| n.as_str())
            .unwrap_or_else(|| panic!("no namespace {role} in this lab"))
    }

    /// The namespace's path under /run/netns (for [`in_ns`], `setns`).
    pub fn path(&self, role: &str) -> PathBuf {
        path(self.name(role))
    }

    /// `ip -n NS ARGS` (ARGS split on whitespace); panics unless it succeeds.
    pub fn ip(self, role: &str, args: &str) -> Lab {
        let mut argv = vec!["ip", "-n", self.name(role)];
        argv.extend(args.split_whitespace());
        sh(&argv);
        self
    }

    /// `sysctl -qw KEY=VALUE` inside the namespace.
    pub fn sysctl(self, role: &str, setting: &str) -> Lab {
        sh(&[
            "ip",
            "netns",
            "exec",
            self.name(role),
            "sysctl",
            "-qw",
            setting,
        ]);
        self
    }

    /// A veth pair between two namespaces, both ends up: each end is
    /// `(role, device, address/prefix)`; an empty address adds none.
    pub fn veth(self, (a, dev_a, addr_a): End, (b, dev_b, addr_b): End) -> Lab {
        let peer = self.name(b).to_string();
        let mut lab = self.ip(
            a,
            &format!("link add {dev_a} type veth peer name {dev_b} netns {peer}"),
        );
        for (role, dev, addr) in [(a, dev_a, addr_a), (b, dev_b, addr_b)] {
            if !addr.is_empty() {
                lab = lab.ip(role, &format!("addr add {addr} dev {dev}"));
            }
            lab = lab.ip(role, &format!("link set {dev} up"));
        }
        lab
    }
}

/// One end of a veth pair: (role, device, address/prefix).
pub type End<'a> = (&'a str, &'a str, &'a str);

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, name) in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// `nft -f FILE` inside namespace `ns`, as an operator loads a ruleset.
pub fn nft_file(ns: &str, file: &Path) {
    sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "nft",
        "-f",
        file.to_str().unwrap(),
    ]);
}

/// `/run/netns/NAME`.
pub fn path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Runs `f` on a thread inside the network namespace at `ns`; sockets it
/// creates stay there.
pub fn in_ns<T: Send>(ns: impl AsRef<Path>, f: impl FnOnce() -> T + Send) -> T {
    let ns = ns.as_ref();
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(ns).unwrap_or_else(|e| panic!("{}: {e}", ns.display()));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// Where allowdns listens for the agent, on R's end of the R–A link.
pub const DNS: &str = "10.200.1.1";
/// The agent's address on its link to I.
pub const AGENT_V4: &str = "10.200.2.2";

/// Root and what an agent lab runs: `ip`, `nft`, `sysctl`, then `tools`.
pub fn agent_prerequisites(tools: &[&str]) -> bool {
    super::require_root_and(&["ip", "nft", "sysctl"]) && super::require_tools(tools)
}

/// The agent lab of the fence tests, in namespaces all created here:
/// - R: where allowdns can run, at [`DNS`] on a /30 to A;
/// - A: the agent, fenced by the printed ruleset; default route via I;
/// - I: "the internet", at 10.200.2.1, answering on whatever prefixes the
///   test puts on its loopback.
///
/// Policies, rulesets and zones go to `dir`, a temp dir removed on drop.
pub struct Agent {
    pub r: String,
    pub a: String,
    pub i: String,
    pub dir: super::TempDir,
    _ns: Lab,
}

impl Agent {
    /// The wiring above; `wire` adds what the test needs on top (addresses
    /// on I's loopback, IPv6, routes).
    pub fn new(prefix: &str, wire: impl FnOnce(Lab) -> Lab) -> Agent {
        let ns = Lab::new(prefix, &["r", "a", "i"])
            // No duplicate address detection: a link-local address is usable at once.
            .sysctl("a", "net.ipv6.conf.default.accept_dad=0")
            .sysctl("i", "net.ipv6.conf.default.accept_dad=0")
            .veth(
                ("r", "r-a", &format!("{DNS}/30")),
                ("a", "a-r", "10.200.1.2/30"),
            )
            .veth(
                ("a", "a-i", &format!("{AGENT_V4}/24")),
                ("i", "i-a", "10.200.2.1/24"),
            )
            .ip("a", "route add default via 10.200.2.1");
        let ns = wire(ns);
        Agent {
            r: ns.name("r").to_string(),
            a: ns.name("a").to_string(),
            i: ns.name("i").to_string(),
            dir: super::TempDir::new(prefix),
            _ns: ns,
        }
    }

    /// The namespace's path under /run/netns (for [`in_ns`]).
    pub fn netns(&self, ns: &str) -> PathBuf {
        path(ns)
    }

    /// Writes the policy `file` (`NETNS` stands for A), prints its ruleset
    /// with `allowdns nft-ruleset` and loads it into A, as a person would.
    /// Returns the policy's path.
    pub fn fence(&self, file: &str, policy: &str) -> PathBuf {
        let policy = self.dir.write(file, &policy.replace("NETNS", &self.a));
        let ruleset = super::nft_ruleset(&policy, DNS);
        let nft = self.dir.write(&format!("{file}.nft"), &ruleset);
        nft_file(&self.a, &nft);
        policy
    }

    /// Takes the fence down: an empty ruleset in A.
    pub fn unfence(&self) {
        self.nft("flush ruleset");
    }

    /// `nft ARGS` in A (ARGS as a shell reads them); panics unless it succeeds.
    pub fn nft(&self, args: &str) -> String {
        let (ok, out) = self.exec(&self.a, &["sh", "-c", &format!("nft {args}")]);
        assert!(ok, "nft {args}: {out}");
        out
    }

    /// The elements of allowdns's set `set` in A.
    pub fn set(&self, set: &str) -> String {
        self.nft(&format!("list set inet allowdns {set}"))
    }

    /// `ip netns exec NS ARGS`: whether it succeeded, its stdout then stderr.
    pub fn exec(&self, ns: &str, args: &[&str]) -> (bool, String) {
        let mut argv = vec!["ip", "netns", "exec", ns];
        argv.extend_from_slice(args);
        super::sh_out(&argv)
    }

    /// `ip -n NS ARGS` (ARGS split on whitespace); panics unless it succeeds.
    pub fn ip(&self, ns: &str, args: &str) {
        let mut argv = vec!["ip", "-n", ns];
        argv.extend(args.split_whitespace());
        sh(&argv);
    }

    /// Writes the zone `file` and starts an upstream for it on `ip`, in the
    /// test's own namespace.
    pub fn upstream(&self, file: &str, zone: &str, ip: &str) -> super::Upstream {
        super::Upstream::start(ip, 0, &[self.dir.write(file, zone)])
    }

    /// Writes the zone `file` and starts an upstream for it on R's loopback.
    pub fn upstream_in_r(&self, file: &str, zone: &str) -> super::Upstream {
        let zone = self.dir.write(file, zone);
        in_ns(self.netns(&self.r), move || {
            super::Upstream::start("127.0.0.1", 0, &[zone])
        })
    }

    /// allowdns in R at [`DNS`]:53 on `policy`, forwarding to `upstream`
    /// ("none": offline); `extra` follows.
    pub fn serve_in_r(&self, policy: &Path, upstream: &str, extra: &[&str]) -> super::Allowdns {
        let listen = format!("{DNS}:53");
        let mut args = vec![
            "--listen",
            &listen,
            "--policy",
            policy.to_str().unwrap(),
            "--upstream",
            upstream,
        ];
        args.extend_from_slice(extra);
        super::Allowdns::serve_via(&["ip", "netns", "exec", &self.r], &args)
    }

    /// An echo server in `ns` on `addr`, for the test's life.
    pub fn echo_server(&self, ns: &str, addr: &str) {
        echo_server(self.netns(ns), addr);
    }

    /// A TCP connection from `ns` to `addr` (800 ms to connect), if one opens.
    pub fn connect_from(&self, ns: &str, addr: SocketAddr) -> Option<TcpStream> {
        in_ns(self.netns(ns), move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(800)).ok()
        })
    }

    /// A TCP connection from A to `addr`, if one opens.
    pub fn connect(&self, addr: &str) -> Option<TcpStream> {
        self.connect_from(&self.a, addr.parse().unwrap())
    }

    /// Whether A reaches an echo server at `addr` and hears itself back.
    pub fn connects(&self, addr: &str) -> bool {
        self.connect(addr).is_some_and(|mut s| echo(&mut s))
    }
}

/// An echo server in the namespace at `ns` on `addr` (`[::]:PORT` takes
/// IPv4 too), for the test's life.
pub fn echo_server(ns: impl AsRef<Path>, addr: &str) {
    let addr = addr.to_string();
    let listener = in_ns(ns, move || TcpListener::bind(addr).unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Whether `stream` echoes a ping back within 2 s.
pub fn echo(stream: &mut TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4];
    stream.write_all(b"ping").is_ok() && stream.read_exact(&mut buf).is_ok() && &buf == b"ping"
}
