//! Who did it: the process behind a denied lookup or a blocked connection.
//!
//! The socket is found by its exact id (protocol, both addresses) with
//! sock_diag in the client's network namespace ([`diag`]); its inode is
//! mapped to a process through `/proc/PID/fd` ([`procfs`]), newest process
//! first, then the process's command line and parents are read.
//!
//! Only denials are attributed, before their reply leaves (a client like
//! `getent` exits on NXDOMAIN, and its socket with it), within
//! [`Limits::per_lookup`]. A denial that will be alerted in full is always
//! attributed ([`Need::Alert`]); the others ([`Need::Record`]) at most
//! [`Limits::rate`] per second and agent, the rest say
//! `unknown (rate limited)`: a flood costs a lock per denial, not a socket
//! lookup. The /proc search is bounded by [`Limits::per_second`]:
//! the time /proc may be scanned per second. A socket seen before is
//! checked with one readlink, not looked up or searched again. Where the owner cannot be
//! seen the answer says why ([`Why`]); it never guesses.

mod diag;
mod procfs;
mod rate;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::observe::audit::schema::{OwnerFields, ParentRecord};
use crate::sync::lock;

/// Sockets whose holder is remembered (inode → pid, fd; id → inode), and
/// processes whose description is: bounded, and emptied when full.
const MAX_HOLDERS: usize = 4096;
const MAX_OWNERS: usize = 1024;
/// How long a process's description is reused (a long-lived socket's owner
/// is checked by readlink each time; only its command line may be this old).
const OWNER_TTL: Duration = Duration::from_secs(2);
/// Characters of a command line on an alert line; the audit log has more.
const ALERT_CMDLINE: usize = 300;

/// Transport protocol of the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// How much attribution may cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most one lookup may take (it delays that denial's reply).
    pub per_lookup: Duration,
    /// The most time spent searching /proc in any one second, over all
    /// threads; beyond it, `unknown (over budget)`, and an overrun is owed
    /// by the seconds after.
    pub per_second: Duration,
    /// Denials attributed per second and agent beyond those
    /// alerted in full; beyond it, `unknown (rate limited)`.
    pub rate: u32,
}

/// Why a denial is attributed: its alert is printed in full, or only its
/// audit record will carry the answer (rate-limited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Alert,
    Record,
}

/// A client lookup the rate let through ([`Attributor::admit`]).
#[derive(Debug)]
pub struct Admitted(());

impl Limits {
    /// `per_lookup` as given; per second, at least the default and never
    /// less than one lookup's worth.
    pub fn with_budget(per_lookup: Duration) -> Limits {
        Limits {
            per_lookup,
            per_second: Limits::default().per_second.max(per_lookup),
            ..Limits::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_lookup: Duration::from_millis(5),
            per_second: Duration::from_millis(100),
            rate: 100,
        }
    }
}

/// The process behind a socket, or why it is not known.
#[derive(Clone, Debug)]
pub enum Attribution {
    Found(Arc<Owner>),
    Unknown(Why),
}

/// Why the owner is not known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// No socket with that id (any more) in the client's namespace, or no
    /// process holds it: it was closed, its process gone.
    Exited,
    /// The namespace or the process's /proc could not be read.
    NoPermission,
    /// The client address is not one of the namespace's own: the socket is
    /// on another host.
    OtherHost,
    /// The per-lookup or per-second time budget ran out first.
    OverBudget,
    /// sock_diag failed (the error is logged).
    Failed,
    /// A TCP attempt the fence rejected: its reset closed the socket, mostly
    /// before the lookup (`deny_action: drop` keeps it open to be named).
    Reset,
    /// Not alerted in full, and the namespace's [`Limits::rate`] was spent:
    /// not looked up at all.
    RateLimited,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Exited => "exited",
            Why::NoPermission => "no permission",
            Why::OtherHost => "other host",
            Why::OverBudget => "over budget",
            Why::Failed => "lookup failed",
            Why::Reset => "socket closed by the fence's reset",
            Why::RateLimited => "rate limited",
        }
    }
}

/// A process, as the alert and the audit record describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The PID as the client sees it (in its own PID namespace).
    pub pid: u32,
    /// The PID as allowdns sees it.
    pub host_pid: u32,
    /// The kernel's short name (`/proc/PID/comm`).
    pub comm: String,
    /// The executable; empty when it cannot be read.
    pub exe: String,
    /// The command line, arguments joined by spaces, control characters escaped.
    pub cmdline: String,
    /// Nearest first, up to the PID namespace's init or the first process
    /// of the client's network namespace.
    pub parents: Vec<Parent>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parent {
    pub pid: u32,
    pub host_pid: u32,
    pub cmdline: String,
}

impl Attribution {
    /// The audit record's fields for it.
    pub fn fields(&self) -> OwnerFields {
        match self {
            Attribution::Found(o) => OwnerFields {
                pid: Some(o.pid),
                host_pid: Some(o.host_pid),
                comm: Some(o.comm.clone()),
                exe: Some(o.exe.clone()),
                cmdline: Some(o.cmdline.clone()),
                parents: Some(
                    o.parents
                        .iter()
                        .map(|p| ParentRecord {
                            pid: p.pid,
                            host_pid: p.host_pid,
                            cmdline: p.cmdline.clone(),
                        })
                        .collect(),
                ),
                owner_unknown: None,
            },
            Attribution::Unknown(why) => OwnerFields {
                owner_unknown: Some(why.as_str().to_string()),
                ..OwnerFields::default()
            },
        }
    }
}

/// The alert's lines: `PID:`, `Command:`, `Parents:`, each ending in a newline.
impl fmt::Display for Attribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = match self {
            Attribution::Found(o) => o,
            Attribution::Unknown(why) => return writeln!(f, "PID: unknown ({})", why.as_str()),
        };
        write!(f, "PID: {}", o.pid)?;
        if o.pid != o.host_pid {
            write!(f, " (host {})", o.host_pid)?;
        }
        writeln!(f, "\nCommand: {}", short(&o.cmdline))?;
        if o.parents.is_empty() {
            return writeln!(f, "Parents: none");
        }
        write!(f, "Parents: ")?;
        for (i, p) in o.parents.iter().enumerate() {
            let sep = if i > 0 { " <- " } else { "" };
            write!(f, "{sep}{} (PID {})", short(&p.cmdline), p.pid)?;
        }
        writeln!(f)
    }
}

fn short(s: &str) -> String {
    match s.char_indices().nth(ALERT_CMDLINE) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// Control characters escaped, so a command line cannot forge alert lines;
/// bidi and invisible format characters too, so it cannot reorder or hide
/// text where the alert is shown (Trojan Source).
pub(crate) fn clean(s: &str) -> String {
    let unsafe_char = |c: char| c.is_control() || is_format(c);
    if !s.chars().any(unsafe_char) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if unsafe_char(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Unicode format characters (category Cf) that change how text displays:
/// bidi embeddings, overrides and isolates, zero-width characters.
fn is_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// (namespace inode, protocol, socket address, peer if asked by it).
type Tuple = (u64, Proto, SocketAddr, Option<SocketAddr>);

/// One namespace's sock_diag socket, and which namespace it is in.
struct Ns {
    inode: u64,
    diag: Mutex<diag::Diag>,
}

/// Finds owners; shared by every serving thread.
pub struct Attributor {
    /// Where allowdns answers: a DNS client's socket is connected to one.
    servers: Vec<SocketAddr>,
    /// Our effective uid, and whether we may read every process's fds.
    euid: u32,
    ptrace: bool,
    /// allowdns's own network namespace (inode): searched without a filter.
    own_netns: Option<u64>,
    namespaces: Mutex<HashMap<Option<PathBuf>, Arc<Ns>>>,
    holders: Mutex<HashMap<u64, (u32, u32)>>,
    /// Sockets by their id, as asked about: their inode.
    tuples: Mutex<HashMap<Tuple, u64>>,
    owners: Mutex<HashMap<u32, (Instant, Arc<Owner>)>>,
    budget: rate::Budget,
    rate: rate::Rate,
}

impl Attributor {
    /// `servers`: the addresses allowdns answers DNS on.
    pub fn new(limits: Limits, servers: Vec<SocketAddr>) -> Attributor {
        Attributor {
            servers,
            euid: nix::unistd::geteuid().as_raw(),
            ptrace: caps::has_cap(
                None,
                caps::CapSet::Effective,
                caps::Capability::CAP_SYS_PTRACE,
            )
            .unwrap_or(false),
            own_netns: {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino())
            },
            namespaces: Mutex::default(),
            holders: Mutex::default(),
            tuples: Mutex::default(),
            owners: Mutex::default(),
            budget: rate::Budget::new(limits.per_lookup, limits.per_second, Instant::now()),
            rate: rate::Rate::new(limits.rate),
        }
    }

    /// Opens the sock_diag socket of `netns` now, so a first denial does not
    /// pay for it; a failure is left for the lookups to report.
    pub fn prepare(&self, netns: Option<&Path>) {
        let _ = self.namespace(netns);
    }

    /// A lookup for a denial, if the rate lets it run (an alerted one
    /// always): decided where the query is answered, so one over the rate
    /// costs nothing there, and the lookup itself can run elsewhere.
    pub fn admit(&self, agent: &str, need: Need) -> Option<Admitted> {
        self.may(agent, need, Instant::now())
            .then_some(Admitted(()))
    }

    /// The owner of a DNS client's socket: `client` as allowdns saw it,
    /// connected to one of the server addresses.
    pub fn lookup_client(
        &self,
        netns: Option<&Path>,
        proto: Proto,
        client: SocketAddr,
        _: Admitted,
    ) -> Attribution {
        self.attribute(netns, None, (proto, client, None), |diag| {
            let mut found = Ok(None);
            for &server in self.servers.iter().filter(|s| !s.ip().is_unspecified()) {
                found = diag.find(proto, client, server);
                if !matches!(found, Ok(None)) {
                    break;
                }
            }
            if matches!(found, Ok(None)) && self.servers.iter().any(|s| s.ip().is_unspecified()) {
                found = diag.find_local(proto, client);
            }
            match found {
                Ok(None) => Err(if diag.is_local(client.ip()) {
                    Why::Exited
                } else {
                    Why::OtherHost
                }),
                other => Ok(other),
            }
        })
    }

    /// The owner of the socket with address `local` and peer `remote` in
    /// network namespace `netns` (`None`: allowdns's own), within
    /// `agent`'s rate.
    pub fn lookup(
        &self,
        (netns, agent): (Option<&Path>, &str),
        proto: Proto,
        local: SocketAddr,
        remote: SocketAddr,
        need: Need,
    ) -> Attribution {
        self.attribute(
            netns,
            Some((agent, need)),
            (proto, local, Some(remote)),
            |diag| match diag.find(proto, local, remote) {
                Ok(None) if !diag.is_local(local.ip()) => Err(Why::OtherHost),
                other => Ok(other),
            },
        )
    }

    /// The lookup both of the above make: rate (`need`; `None`: admitted
    /// already), namespace, memory, then `find` with the namespace's
    /// sock_diag socket (an `Err` ends it unknown).
    fn attribute(
        &self,
        netns: Option<&Path>,
        need: Option<(&str, Need)>,
        (proto, local, remote): (Proto, SocketAddr, Option<SocketAddr>),
        find: impl FnOnce(&mut diag::Diag) -> Result<io::Result<Option<diag::Found>>, Why>,
    ) -> Attribution {
        let started = Instant::now();
        if need.is_some_and(|(agent, need)| !self.may(agent, need, started)) {
            return Attribution::Unknown(Why::RateLimited);
        }
        let ns = match self.namespace(netns) {
            Ok(ns) => ns,
            Err(why) => return Attribution::Unknown(why),
        };
        let key = (ns.inode, proto, local, remote);
        if let Some(known) = self.remembered(&ns, &key) {
            return known;
        }
        let found = find(&mut lock(&ns.diag));
        match found {
            Ok(found) => self.owner_of(&ns, key, found, started),
            Err(why) => Attribution::Unknown(why),
        }
    }

    /// Whether this denial may be looked up: an alerted one always, the
    /// others while the agent's rate allows.
    fn may(&self, agent: &str, need: Need, now: Instant) -> bool {
        need == Need::Alert || self.rate.take(agent, now)
    }

    /// The owner of a socket asked about before, without sock_diag: while
    /// the process remembered still holds the socket remembered, the socket
    /// is alive, and a live socket keeps its addresses.
    fn remembered(&self, ns: &Ns, key: &Tuple) -> Option<Attribution> {
        let inode = *lock(&self.tuples).get(key)?;
        let (pid, fd) = *self.lock_holders().get(&inode)?;
        if !procfs::holds(pid, fd, inode) {
            return None;
        }
        Some(match self.describe(pid, ns.inode) {
            Some(owner) => Attribution::Found(owner),
            None => Attribution::Unknown(Why::Exited),
        })
    }

    fn owner_of(
        &self,
        ns: &Ns,
        key: Tuple,
        found: io::Result<Option<diag::Found>>,
        started: Instant,
    ) -> Attribution {
        let (inode, uid) = match found {
            Ok(Some(found)) => (found.inode, found.uid),
            Ok(None) => return Attribution::Unknown(Why::Exited),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Attribution::Unknown(Why::NoPermission);
            }
            Err(e) => {
                tracing::debug!(error = %e, "sock_diag failed");
                return Attribution::Unknown(Why::Failed);
            }
        };
        // inode 0: a socket in TIME_WAIT or being torn down, held by no one.
        if inode == 0 {
            return Attribution::Unknown(Why::Exited);
        }
        {
            let mut tuples = lock(&self.tuples);
            if tuples.len() >= MAX_HOLDERS {
                tuples.clear();
            }
            tuples.insert(key, inode);
        }
        let cached = self.lock_holders().get(&inode).copied();
        let pid = match cached.filter(|&(pid, fd)| procfs::holds(pid, fd, inode)) {
            Some((pid, _)) => pid,
            None => match self.search(inode, ns.inode, started) {
                Ok(pid) => pid,
                // Another user's processes are hidden from us (hidepid, no
                // CAP_SYS_PTRACE): not seen is not gone.
                Err(Why::Exited) if uid != self.euid && !self.ptrace => {
                    return Attribution::Unknown(Why::NoPermission);
                }
                Err(why) => return Attribution::Unknown(why),
            },
        };
        match self.describe(pid, ns.inode) {
            Some(owner) => Attribution::Found(owner),
            None => Attribution::Unknown(Why::Exited),
        }
    }

    /// Searches /proc within both budgets.
    fn search(&self, inode: u64, netns: u64, started: Instant) -> Result<u32, Why> {
        let now = Instant::now();
        let grant = self.budget.grant(now);
        if grant.is_zero() {
            return Err(Why::OverBudget);
        }
        let deadline = started + grant;
        // In the namespace first; a process may have moved since it made the
        // socket. Our own holds nearly every process: no filter there.
        let filter = (self.own_netns != Some(netns)).then_some(netns);
        let mut scan = procfs::scan(inode, filter, deadline);
        if filter.is_some()
            && let procfs::Scan::Nobody { .. } = scan
        {
            scan = procfs::scan(inode, None, deadline);
        }
        let took = now.elapsed();
        tracing::debug!(inode, ?took, since_start = ?started.elapsed(), "searched /proc for a socket's holder");
        self.budget.settle(grant, took);
        match scan {
            procfs::Scan::Found { pid, fd } => {
                let mut holders = self.lock_holders();
                if holders.len() >= MAX_HOLDERS {
                    holders.clear();
                }
                holders.insert(inode, (pid, fd));
                Ok(pid)
            }
            procfs::Scan::Nobody { denied: true } => Err(Why::NoPermission),
            procfs::Scan::Nobody { denied: false } => Err(Why::Exited),
            procfs::Scan::OutOfTime => Err(Why::OverBudget),
        }
    }

    fn describe(&self, host_pid: u32, netns: u64) -> Option<Arc<Owner>> {
        let now = Instant::now();
        {
            let owners = lock(&self.owners);
            if let Some((at, owner)) = owners.get(&host_pid)
                && now.duration_since(*at) < OWNER_TTL
            {
                return Some(owner.clone());
            }
        }
        let me = procfs::read(host_pid).ok()?;
        let parents = procfs::parents(&me, Some(netns));
        let owner = Arc::new(Owner {
            pid: me.pid,
            host_pid,
            comm: me.comm,
            exe: me.exe,
            cmdline: me.cmdline,
            parents,
        });
        let mut owners = lock(&self.owners);
        if owners.len() >= MAX_OWNERS {
            owners.clear();
        }
        owners.insert(host_pid, (now, owner.clone()));
        Some(owner)
    }

    fn lock_holders(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (u32, u32)>> {
        lock(&self.holders)
    }

    /// The namespace's socket, opened on first use and again when the path
    /// names another namespace than before (a netns recreated under one name).
    fn namespace(&self, netns: Option<&Path>) -> Result<Arc<Ns>, Why> {
        use std::os::unix::fs::MetadataExt;
        // allowdns's own namespace never changes: skip the stat of /proc
        // (a quarter of a looked-up denial's cost in the profile).
        if netns.is_none()
            && let Some(ns) = lock(&self.namespaces).get(&None)
        {
            return Ok(ns.clone());
        }
        let path = netns.unwrap_or(Path::new("/proc/self/ns/net"));
        let inode = match std::fs::metadata(path) {
            Ok(m) => m.ino(),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(Why::NoPermission);
            }
            // The namespace is gone, and every process in it.
            Err(_) => return Err(Why::Exited),
        };
        let key = netns.map(Path::to_path_buf);
        let mut namespaces = lock(&self.namespaces);
        if let Some(ns) = namespaces.get(&key)
            && ns.inode == inode
        {
            return Ok(ns.clone());
        }
        let diag = diag::Diag::open(netns).map_err(|e| {
            tracing::warn!(netns = %path.display(), error = %e, "cannot open sock_diag in the client's namespace");
            if matches!(e.raw_os_error(), Some(nix::libc::EPERM | nix::libc::EACCES)) {
                Why::NoPermission
            } else {
                Why::Failed
            }
        })?;
        let ns = Arc::new(Ns {
            inode,
            diag: Mutex::new(diag),
        });
        // Bounded by the policies' namespaces; a stale one is replaced.
        namespaces.insert(key, ns.clone());
        Ok(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_and_invisible_characters_are_escaped() {
        // Positive control: plain text, even non-ASCII, is kept.
        assert_eq!(clean("python3 café.py"), "python3 café.py");
        let shown = clean("sleep 3 \u{202E}yp.doog\u{200B}\nPID: 1");
        assert!(!shown.contains('\u{202E}') && !shown.contains('\u{200B}'));
        assert!(
            shown.contains("\\u{202e}") && shown.contains("\\n"),
            "{shown}"
        );
    }

    fn owner(pid: u32, host_pid: u32, cmdline: &str) -> Attribution {
        Attribution::Found(Arc::new(Owner {
            pid,
            host_pid,
            comm: "getent".into(),
            exe: "/usr/bin/getent".into(),
            cmdline: cmdline.into(),
            parents: vec![
                Parent {
                    pid: 5,
                    host_pid: 412230,
                    cmdline: "python3 /opt/agent/main.py".into(),
                },
                Parent {
                    pid: 1,
                    host_pid: 412200,
                    cmdline: "/init".into(),
                },
            ],
        }))
    }

    #[test]
    fn the_alert_lines_name_both_pids_in_a_kennel_and_one_outside() {
        let text = owner(7, 412233, "getent hosts denied.example").to_string();
        assert_eq!(
            text,
            "PID: 7 (host 412233)\nCommand: getent hosts denied.example\nParents: python3 /opt/agent/main.py (PID 5) <- /init (PID 1)\n"
        );
        let text = owner(412233, 412233, "getent").to_string();
        assert!(text.starts_with("PID: 412233\n"), "{text}");
        for (why, said) in [
            (Why::Exited, "exited"),
            (Why::NoPermission, "no permission"),
            (Why::OtherHost, "other host"),
        ] {
            assert_eq!(
                Attribution::Unknown(why).to_string(),
                format!("PID: unknown ({said})\n")
            );
        }
    }

    #[test]
    fn a_command_line_cannot_forge_alert_lines_and_long_ones_are_cut() {
        // Read from /proc as the process wrote it: escaped before it is shown.
        let forged = clean("sh\nAction: ALLOWED\r");
        assert_eq!(forged, "sh\\nAction: ALLOWED\\r");
        let text = owner(7, 7, &forged).to_string();
        assert_eq!(text.lines().filter(|l| l.starts_with("Action")).count(), 0);
        let long = "x".repeat(5000);
        let text = owner(7, 7, &long).to_string();
        let command = text.lines().nth(1).unwrap();
        assert_eq!(
            command.chars().count(),
            "Command: ".len() + ALERT_CMDLINE + 1
        );
        assert!(command.ends_with('…'));
    }

    #[test]
    fn the_audit_fields_are_the_owner_or_why_not() {
        let fields = owner(7, 412233, "getent").fields();
        assert_eq!((fields.pid, fields.host_pid), (Some(7), Some(412233)));
        assert_eq!(fields.parents.as_ref().map(Vec::len), Some(2));
        assert_eq!(fields.owner_unknown, None);
        let fields = Attribution::Unknown(Why::OverBudget).fields();
        assert_eq!(fields.pid, None);
        assert_eq!(fields.owner_unknown.as_deref(), Some("over budget"));
    }

    #[test]
    fn our_own_socket_is_found_and_its_holder_cached() {
        let attributor = Attributor::new(Limits::with_budget(Duration::from_secs(1)), vec![]);
        let socket = UdpSocketPair::new();
        let me = std::process::id();
        for _ in 0..2 {
            match attributor.lookup(
                (None, "a"),
                Proto::Udp,
                socket.local,
                socket.remote,
                Need::Alert,
            ) {
                Attribution::Found(o) => assert_eq!(o.host_pid, me),
                Attribution::Unknown(why) => panic!("{why:?}"),
            }
        }
        assert_eq!(attributor.lock_holders().len(), 1);
        // Closed: gone, not guessed from the cache.
        let (local, remote) = (socket.local, socket.remote);
        drop(socket);
        let got = attributor.lookup((None, "a"), Proto::Udp, local, remote, Need::Alert);
        assert!(matches!(got, Attribution::Unknown(Why::Exited)), "{got:?}");
        // An address that is not ours: another host's socket.
        let got = attributor.lookup(
            (None, "a"),
            Proto::Udp,
            "192.0.2.77:5353".parse().unwrap(),
            remote,
            Need::Alert,
        );
        assert!(
            matches!(got, Attribution::Unknown(Why::OtherHost)),
            "{got:?}"
        );
    }

    #[test]
    fn past_the_rate_a_record_is_rate_limited_and_an_alert_still_named() {
        let limits = Limits {
            rate: 1,
            ..Limits::with_budget(Duration::from_secs(1))
        };
        let attributor = Attributor::new(limits, vec![]);
        let socket = UdpSocketPair::new();
        let me = std::process::id();
        let ask =
            |need| attributor.lookup((None, "a"), Proto::Udp, socket.local, socket.remote, need);
        // Positive control: within the rate, named.
        assert!(matches!(ask(Need::Record), Attribution::Found(o) if o.host_pid == me));
        let got = ask(Need::Record);
        assert!(
            matches!(got, Attribution::Unknown(Why::RateLimited)),
            "{got:?}"
        );
        assert_eq!(got.to_string(), "PID: unknown (rate limited)\n");
        assert!(matches!(ask(Need::Alert), Attribution::Found(o) if o.host_pid == me));
    }

    #[test]
    fn a_tcp_socket_is_found_by_its_exact_id_ipv4_and_ipv6() {
        let attributor = Attributor::new(Limits::with_budget(Duration::from_secs(1)), vec![]);
        for at in ["127.0.0.1:0", "[::1]:0"] {
            let listener = std::net::TcpListener::bind(at).unwrap();
            let server = listener.local_addr().unwrap();
            let client = std::net::TcpStream::connect(server).unwrap();
            let local = client.local_addr().unwrap();
            match attributor.lookup((None, "a"), Proto::Tcp, local, server, Need::Alert) {
                Attribution::Found(o) => assert_eq!(o.host_pid, std::process::id()),
                Attribution::Unknown(why) => panic!("{at}: {why:?}"),
            }
            // The same ports, the other way round, is another socket (the server's).
            let wrong_peer = SocketAddr::new(server.ip(), server.port().wrapping_add(1));
            let got = attributor.lookup((None, "a"), Proto::Tcp, local, wrong_peer, Need::Alert);
            assert!(matches!(got, Attribution::Unknown(Why::Exited)), "{got:?}");
        }
    }

    struct UdpSocketPair {
        _a: std::net::UdpSocket,
        local: SocketAddr,
        remote: SocketAddr,
    }

    impl UdpSocketPair {
        fn new() -> Self {
            let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            a.connect(b.local_addr().unwrap()).unwrap();
            UdpSocketPair {
                local: a.local_addr().unwrap(),
                remote: b.local_addr().unwrap(),
                _a: a,
            }
        }
    }
}
