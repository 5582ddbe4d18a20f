//! The fence checks itself from inside the agent's namespace, before anything
//! relies on it: `run` before CMD starts, `allowdns selftest` for a namespace
//! set up by hand. Each check is something an agent could do:
//! - the table's output chain is loaded, with a default of drop;
//! - a canary connection to an address never handed out (TEST-NET-1) fails,
//!   and the fence's own counter says it was the fence that denied it;
//! - DNS to another resolver does not get through;
//! - DNS to allowdns does (when its address is known).
//!
//! Anything wrong, or anything that cannot be checked, is a failure: the
//! fence never falls open on doubt.

use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::ruleset::LOG_PREFIX;
use crate::policy::firewall::Family;

/// Documentation addresses (RFC 5737, RFC 3849): never routed on the
/// internet, never in a policy's sets unless someone put them there.
const CANARY_V4: &str = "192.0.2.1:9";
const CANARY_V6: &str = "[2001:db8::1]:9";
const ROGUE_DNS_V4: &str = "192.0.2.53:53";
const ROGUE_DNS_V6: &str = "[2001:db8::53]:53";
/// How long a dropped packet is waited for.
const WAIT: Duration = Duration::from_millis(1500);

/// What the checks need to know about the fence.
#[derive(Clone, Debug)]
pub struct Fence {
    /// The agent's network namespace (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns: PathBuf,
    pub family: Family,
    pub table: String,
    /// allowdns as the agent reaches it (port 53); empty: not checked.
    pub dns: Vec<IpAddr>,
}

/// One check and what it found.
#[derive(Clone, Debug)]
pub struct Check {
    pub what: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// Every check, in the order they ran.
#[derive(Clone, Debug)]
pub struct Report {
    pub fence: String,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    /// The failed checks, one per line, for an error message.
    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.what, c.detail))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fence self-test of {}", self.fence)?;
        for c in &self.checks {
            let mark = if c.passed { "ok  " } else { "FAIL" };
            writeln!(f, "  {mark} {}: {}", c.what, c.detail)?;
        }
        let verdict = if self.passed() {
            "the fence holds"
        } else {
            "the fence does NOT hold"
        };
        write!(f, "{verdict}")
    }
}

/// Runs every check inside `fence.netns` (on a thread of its own, so the
/// caller's namespace is untouched).
pub fn run(fence: &Fence) -> Report {
    let described = format!(
        "table {} {} in netns {}",
        fence.family.as_str(),
        fence.table,
        fence.netns.display()
    );
    let inside = fence.clone();
    let checks = std::thread::scope(|s| {
        s.spawn(move || match enter(&inside.netns) {
            Ok(()) => checks(&inside),
            Err(detail) => vec![Check {
                what: "namespace",
                passed: false,
                detail,
            }],
        })
        .join()
        .unwrap_or_else(|_| {
            vec![Check {
                what: "self-test",
                passed: false,
                detail: "the check panicked".into(),
            }]
        })
    });
    Report {
        fence: described,
        checks,
    }
}

fn enter(netns: &Path) -> Result<(), String> {
    let file =
        std::fs::File::open(netns).map_err(|e| format!("cannot open {}: {e}", netns.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("cannot enter {}: {e}", netns.display()))?;
    // nft keeps CAP_NET_ADMIN across exec even when our uid is not mapped in
    // the namespace's owner (`run` started by root). This thread's sets only.
    use caps::{CapSet, Capability};
    for set in [CapSet::Inheritable, CapSet::Ambient] {
        let _ = caps::raise(None, set, Capability::CAP_NET_ADMIN);
    }
    Ok(())
}

fn checks(fence: &Fence) -> Vec<Check> {
    let mut out = Vec::new();
    let chain = output_chain(fence);
    out.push(match &chain {
        Ok(text) if text.contains("policy drop;") && text.contains(LOG_PREFIX) => Check {
            what: "ruleset",
            passed: true,
            detail: "output chain loaded, default drop, denials logged".into(),
        },
        Ok(text) => Check {
            what: "ruleset",
            passed: false,
            detail: format!(
                "output chain is not allowdns's default-deny chain: {}",
                text.lines().take(3).collect::<Vec<_>>().join(" ")
            ),
        },
        Err(e) => Check {
            what: "ruleset",
            passed: false,
            detail: e.clone(),
        },
    });
    let families: &[&str] = match fence.family {
        Family::Inet => &[CANARY_V4, CANARY_V6],
        Family::Ip => &[CANARY_V4],
        Family::Ip6 => &[CANARY_V6],
    };
    for canary in families {
        let canary: SocketAddr = canary.parse().expect("a socket address");
        out.push(canary_check(fence, canary, &chain));
    }
    let rogue: SocketAddr = if fence.family == Family::Ip6 {
        ROGUE_DNS_V6
    } else {
        ROGUE_DNS_V4
    }
    .parse()
    .expect("a socket address");
    let answered = ask(rogue);
    out.push(Check {
        what: "dns elsewhere",
        passed: answered.is_err(),
        detail: match answered {
            Ok(()) => format!("a resolver at {rogue} answered"),
            Err(e) => format!("a query to {rogue} got no answer ({e})"),
        },
    });
    if fence.dns.is_empty() {
        out.push(Check {
            what: "dns to allowdns",
            passed: true,
            detail: "not checked: allowdns's address not given".into(),
        });
    }
    for ip in &fence.dns {
        let server = SocketAddr::new(*ip, 53);
        let answered = ask(server);
        out.push(Check {
            what: "dns to allowdns",
            passed: answered.is_ok(),
            detail: match answered {
                Ok(()) => format!("{server} answers"),
                Err(e) => format!("{server} does not answer ({e})"),
            },
        });
    }
    out
}

/// A socket for talking to `to`, marked [`SELFTEST_MARK`] so allowdns does
/// not alert on it; unmarked where the mark cannot be set (no CAP_NET_ADMIN).
fn marked_socket(
    to: SocketAddr,
    kind: socket2::Type,
    protocol: socket2::Protocol,
) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(to), kind, Some(protocol))?;
    let _ = socket.set_mark(super::ruleset::SELFTEST_MARK);
    Ok(socket)
}

/// A marked TCP connection: the canary.
fn marked_connect(to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = marked_socket(to, socket2::Type::STREAM, socket2::Protocol::TCP)?;
    socket.connect_timeout(&to.into(), WAIT)?;
    Ok(socket.into())
}

/// A connection to `canary` must fail at the fence: its final rule's counter
/// moves. With no route at all nothing leaves either, and that is said.
fn canary_check(fence: &Fence, canary: SocketAddr, chain: &Result<String, String>) -> Check {
    let before = chain.as_ref().map(|t| counted(t)).unwrap_or(0);
    let reached = marked_connect(canary);
    let after = output_chain(fence).map(|t| counted(&t)).unwrap_or(0);
    let (passed, detail) = match reached {
        Ok(_) => (
            false,
            format!("a connection to {canary}, never handed out, got through"),
        ),
        Err(e) if after > before => (
            true,
            format!("{canary} (never handed out) denied by the fence ({e})"),
        ),
        Err(e) if e.kind() == ErrorKind::NetworkUnreachable => (
            true,
            format!("{canary}: no route out for this family ({e})"),
        ),
        Err(e) => (
            false,
            format!(
                "{canary} failed ({e}), but not at the fence's final rule: its counter did not move"
            ),
        ),
    };
    Check {
        what: "canary",
        passed,
        detail,
    }
}

/// The output chain as nft lists it, from inside the namespace (nft inherits
/// this thread's network namespace).
fn output_chain(fence: &Fence) -> Result<String, String> {
    let out = Command::new("nft")
        .args([
            "list",
            "chain",
            fence.family.as_str(),
            &fence.table,
            "output",
        ])
        .output()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "no output chain in table {} {}: {}",
            fence.family.as_str(),
            fence.table,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or_default()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Packets the chain's counters have seen: only the final deny rule counts.
fn counted(chain: &str) -> u64 {
    chain
        .split("counter packets ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// A CH TXT `version.bind` question to `server`: CH is refused before any
/// name is looked at, so allowdns answers without an audit of a name or an
/// alert. `Ok` when any reply with our ID comes back.
fn ask(server: SocketAddr) -> Result<(), std::io::Error> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("a socket address");
    // Marked, like the canary: the rogue-DNS probe raises no alert.
    let socket = marked_socket(server, socket2::Type::DGRAM, socket2::Protocol::UDP)?;
    socket.bind(&bind.into())?;
    let socket: UdpSocket = socket.into();
    socket.connect(server)?;
    socket.set_read_timeout(Some(WAIT))?;
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let mut query = id.to_be_bytes().to_vec();
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    query.extend_from_slice(b"\x07version\x04bind\x00\x00\x10\x00\x03");
    socket.send(&query)?;
    let mut reply = [0u8; 512];
    let n = socket.recv(&mut reply)?;
    if n >= 2 && reply[..2] == id.to_be_bytes() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "a reply that does not match the question",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_counters_are_summed_and_a_failed_check_fails_the_report() {
        let chain = "log prefix \"x\" level warn\n\t\tcounter packets 3 bytes 180 goto denied\n";
        assert_eq!(counted(chain), 3);
        let report = Report {
            fence: "t".into(),
            checks: vec![
                Check {
                    what: "a",
                    passed: true,
                    detail: "fine".into(),
                },
                Check {
                    what: "b",
                    passed: false,
                    detail: "broken".into(),
                },
            ],
        };
        assert!(!report.passed());
        assert_eq!(report.failures(), "b: broken");
        assert!(report.to_string().ends_with("the fence does NOT hold"));
    }
}
