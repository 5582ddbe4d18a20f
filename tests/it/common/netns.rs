//! Network-namespace labs: namespaces a test creates and wires with veth
//! pairs, removed on drop, and threads that run inside one of them.

use std::path::{Path, PathBuf};
use std::process::Command;

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
