//! Surviving a ruleset reload.
//!
//! `nft -f` of the printed ruleset deletes and recreates allowdns's table,
//! and with it the sets: every element fed so far is gone, and connections to
//! names whose answers clients still cache would fail until those answers
//! expire. So one netlink service per fenced namespace listens to nftables
//! events there (`NFNLGRP_NFTABLES`). When a table or set that allowdns
//! writes to is created or deleted, allowdns re-feeds every element it knows
//! to be live, with the time each has left, once the transaction's events
//! have arrived (`SETTLE`).
//!
//! Every feed is an nftables event too. A socket filter drops element and
//! generation events in the kernel, so feeding never wakes this thread.
//!
//! The service owns one `NETLINK_NETFILTER` socket in its namespace and hands
//! each message to its subscribers by nfnetlink subsystem. The ruleset watch
//! is the first subscriber; the blocked-connection log (NFLOG, subsystem
//! ULOG, src/fence/nflog.rs) binds its group on the same socket and joins
//! the same loop.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use netlink_packet_core::{
    NLMSG_ERROR, NetlinkMessage, NetlinkPayload, ParseableParametrized as _,
};
use netlink_packet_netfilter::NetfilterMessage;
use netlink_packet_netfilter::nftables::{NfTablesMessage, SetAttribute, TableAttribute};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::Firewall;
use super::keys::{SetId, TargetSets};
use super::netlink::{Element, SetOp, messages};
use super::nflog::{NFNL_SUBSYS_ULOG, Nflog, Report};
use super::target::Target;

use crate::sync::lock;

const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u8 = 10;
const NFT_MSG_NEWTABLE: u8 = 0;
const NFT_MSG_DELTABLE: u8 = 2;
const NFT_MSG_NEWSET: u8 = 9;
const NFT_MSG_DELSET: u8 = 11;
const NFT_MSG_NEWSETELEM: u8 = 12;
const NFT_MSG_DELSETELEM: u8 = 14;
const NFT_MSG_NEWGEN: u8 = 15;
/// How long after a change's first event the re-feed runs: a transaction's
/// events are all sent at its commit, so by then the rest have arrived.
const SETTLE: Duration = Duration::from_millis(20);
/// Elements per transaction when re-feeding.
const REFEED_CHUNK: usize = 1024;
/// The longest the loop blocks: how soon it sees a request to drain.
const IDLE: Duration = Duration::from_millis(250);

/// The namespaces' service threads, to drain at shutdown: blocked-connection
/// reports still queued in a socket are read and audited before the audit
/// log closes, not lost with the process.
#[derive(Default)]
pub struct Events {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Events {
    /// Reads what is queued, for at most `within`; a queue not empty by then
    /// is reported lost (`egress_records_lost`).
    pub fn drain(self, within: Duration) {
        self.stop.store(true, Relaxed);
        let deadline = Instant::now() + within + IDLE;
        for thread in self.threads {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// One user of a namespace's netlink service.
trait Subscriber: Send {
    /// The nfnetlink subsystem whose messages it gets.
    fn subsystem(&self) -> u8;
    /// Once, as soon as the socket is subscribed.
    fn start(&mut self, socket: &Socket);
    fn on_message(&mut self, kind: u8, family: u8, payload: &[u8]);
    /// The socket overran: messages were lost, state may have changed unseen.
    fn on_overrun(&mut self);
    /// After every receive or timeout; how soon it wants to be called again.
    fn tick(&mut self) -> Option<Duration>;
    /// Shutdown came before the queue was read to its end.
    fn cut_short(&mut self) {}
}

/// Starts one service thread per namespace that `firewall` feeds. `get`
/// reaches the firewall inside `owner` (the handler, which lives as long as
/// the process); `report` makes the receiver of each namespace's blocked
/// connections.
pub fn spawn<O: Send + Sync + 'static>(
    owner: Arc<O>,
    get: fn(&O) -> Option<&Firewall>,
    report: &dyn Fn() -> Box<dyn Report>,
    drain_within: Duration,
) -> Events {
    let mut events = Events::default();
    let Some(firewall) = get(&owner) else {
        return events;
    };
    let mut by_netns: Vec<(Option<PathBuf>, Vec<usize>)> = Vec::new();
    for (i, target) in firewall.targets.iter().enumerate() {
        let netns = &target.config.netns;
        match by_netns.iter_mut().find(|(n, _)| n == netns) {
            Some((_, targets)) => targets.push(i),
            None => by_netns.push((netns.clone(), vec![i])),
        }
    }
    for (netns, targets) in by_netns {
        let watch = RulesetWatch {
            owner: owner.clone(),
            get,
            targets,
            pending: Vec::new(),
            since: None,
            handles: HashMap::new(),
        };
        let nflog = Nflog::new(netns.clone(), report());
        let place = netns.as_ref().map_or_else(
            || "allowdns's own namespace".to_string(),
            |p| format!("netns {}", p.display()),
        );
        let stop = events.stop.clone();
        let spawned = std::thread::Builder::new()
            .name("netlink-events".into())
            .spawn(move || {
                let subscribers: Vec<Box<dyn Subscriber>> = vec![Box::new(watch), Box::new(nflog)];
                let stopping = Stopping {
                    flag: stop,
                    within: drain_within,
                };
                if let Err(e) = serve(netns.as_deref(), subscribers, &stopping) {
                    tracing::warn!(
                        "nftables events in {place}: {e}; after a ruleset reload there, restart allowdns"
                    );
                }
            });
        match spawned {
            Ok(thread) => events.threads.push(thread),
            Err(e) => tracing::warn!("cannot start the nftables event thread: {e}"),
        }
    }
    events
}

/// When the loop should end: once asked, as soon as the queue is empty, or
/// `within` after the ask with what is left reported lost.
struct Stopping {
    flag: Arc<AtomicBool>,
    within: Duration,
}

/// The service loop: enters `netns` (this thread, for good), subscribes, and
/// dispatches until the socket fails.
fn serve(
    netns: Option<&Path>,
    mut subscribers: Vec<Box<dyn Subscriber>>,
    stopping: &Stopping,
) -> io::Result<()> {
    if let Some(path) = netns {
        crate::netns::enter(path)?;
    }
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket2::SockRef::from(&socket).attach_filter(&quiet_filter())?;
    socket.bind_auto()?;
    socket.add_membership(NFNLGRP_NFTABLES)?;
    // Room for the events of a large reload.
    let size = 4usize << 20;
    if nix::sys::socket::setsockopt(
        &socket.as_fd(),
        nix::sys::socket::sockopt::RcvBufForce,
        &size,
    )
    .is_err()
    {
        let _ = socket.set_rx_buf_sz(size);
    }
    for s in &mut subscribers {
        s.start(&socket);
    }
    let mut buf = Vec::with_capacity(1 << 16);
    let mut wait: Option<Duration> = None;
    let mut wait_set: Option<Duration> = None;
    let mut asked: Option<Instant> = None;
    loop {
        if asked.is_none() && stopping.flag.load(Relaxed) {
            asked = Some(Instant::now());
        }
        if let Some(at) = asked
            && at.elapsed() >= stopping.within
        {
            for s in &mut subscribers {
                s.cut_short();
            }
            return Ok(());
        }
        // Never block for good: a request to drain must be seen.
        let block = wait
            .map_or(IDLE, |w| w.min(IDLE))
            .max(Duration::from_millis(1));
        if Some(block) != wait_set {
            let t = block;
            let tv = nix::sys::time::TimeVal::new(t.as_secs() as _, t.subsec_micros() as _);
            nix::sys::socket::setsockopt(
                &socket.as_fd(),
                nix::sys::socket::sockopt::ReceiveTimeout,
                &tv,
            )
            .map_err(io::Error::from)?;
            wait_set = Some(block);
        }
        buf.clear();
        match socket.recv(&mut buf, 0) {
            Ok(_) => {
                for raw in messages(&buf) {
                    // A refused request of ours (binding the NFLOG group).
                    if raw.message_type() == NLMSG_ERROR {
                        let refused =
                            NetlinkMessage::<NetfilterMessage>::deserialize(raw.into_inner())
                                .map_or_else(
                                    |e| {
                                        Some(io::Error::new(
                                            io::ErrorKind::InvalidData,
                                            e.to_string(),
                                        ))
                                    },
                                    |m| match m.payload {
                                        NetlinkPayload::Error(e) if e.code.is_some() => {
                                            Some(e.to_io())
                                        }
                                        _ => None,
                                    },
                                );
                        if let Some(e) = refused {
                            tracing::warn!(
                                "netlink in this namespace refused a request: {e}; blocked connections may not be alerted"
                            );
                        }
                        continue;
                    }
                    let (subsystem, kind) =
                        ((raw.message_type() >> 8) as u8, raw.message_type() as u8);
                    let payload = raw.payload();
                    let family = payload.first().copied().unwrap_or_default();
                    for s in subscribers
                        .iter_mut()
                        .filter(|s| s.subsystem() == subsystem)
                    {
                        s.on_message(kind, family, payload);
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                for s in &mut subscribers {
                    s.on_overrun();
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if asked.is_some() {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
        wait = subscribers.iter_mut().filter_map(|s| s.tick()).min();
    }
}

/// Classic BPF over each message batch's first header: drops nftables
/// element and generation events (allowdns's own feeds, mostly), passes the
/// rest. A transaction's events may share one batch; table and set changes
/// come first in theirs.
fn quiet_filter() -> Vec<socket2::SockFilter> {
    use socket2::SockFilter as F;
    const LDB_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    // nlmsg_type is host-endian u16 at offset 4: on little endian the
    // message type is byte 4 and the subsystem byte 5.
    let (kind_at, subsystem_at) = if cfg!(target_endian = "little") {
        (4, 5)
    } else {
        (5, 4)
    };
    vec![
        F::new(LDB_ABS, 0, 0, subsystem_at),
        F::new(JEQ_K, 0, 4, u32::from(NFNL_SUBSYS_NFTABLES)), // else accept
        F::new(LDB_ABS, 0, 0, kind_at),
        F::new(JEQ_K, 3, 0, u32::from(NFT_MSG_NEWSETELEM)), // drop
        F::new(JEQ_K, 2, 0, u32::from(NFT_MSG_DELSETELEM)), // drop
        F::new(JEQ_K, 1, 0, u32::from(NFT_MSG_NEWGEN)),     // drop
        F::new(RET_K, 0, 0, u32::MAX),                      // accept
        F::new(RET_K, 0, 0, 0),                             // drop
    ]
}

/// Re-feeds the targets of one namespace when their table or sets are
/// recreated under allowdns.
struct RulesetWatch<O> {
    owner: Arc<O>,
    get: fn(&O) -> Option<&Firewall>,
    /// Indices into the firewall's targets: those in this namespace.
    targets: Vec<usize>,
    /// Targets changed by someone else, waiting for their transaction's end.
    pending: Vec<usize>,
    since: Option<Instant>,
    /// Each target's set handles at its last re-feed, to tell after an
    /// overrun whether a set was recreated unseen.
    handles: HashMap<usize, Vec<Option<u64>>>,
}

impl<O: Send + Sync + 'static> RulesetWatch<O> {
    fn refeed_pending(&mut self) {
        let owner = self.owner.clone();
        let Some(firewall) = (self.get)(&owner) else {
            return;
        };
        for i in std::mem::take(&mut self.pending) {
            let target = &firewall.targets[i];
            let what = target.config.describe();
            let started = Instant::now();
            match target.refeed(&firewall.handed) {
                Ok(count) => tracing::info!(
                    "nftables: {what} changed under allowdns; re-fed {count} live element(s) in {} ms",
                    started.elapsed().as_millis()
                ),
                Err(e) => tracing::warn!(
                    "nftables: {what} changed under allowdns and re-feeding failed: {e} (retried when its table or sets are created again)"
                ),
            }
            let monitor = *lock(&target.monitor);
            if monitor && let Err(e) = target.sync_monitor(true) {
                tracing::warn!("nftables: {what}: monitor mode not restored: {e}");
            }
            self.handles.insert(i, target.set_handles());
        }
        self.since = None;
    }

    fn mark(&mut self, i: usize) {
        if !self.pending.contains(&i) {
            self.pending.push(i);
        }
        self.since.get_or_insert_with(Instant::now);
    }
}

impl<O: Send + Sync + 'static> Subscriber for RulesetWatch<O> {
    fn subsystem(&self) -> u8 {
        NFNL_SUBSYS_NFTABLES
    }

    /// A reload between startup's checks and the subscription would go
    /// unseen: re-feed once now (idempotent: same elements, same expiries).
    fn start(&mut self, _: &Socket) {
        for i in self.targets.clone() {
            self.mark(i);
        }
        self.refeed_pending();
    }

    fn on_message(&mut self, kind: u8, family: u8, payload: &[u8]) {
        if !matches!(
            kind,
            NFT_MSG_NEWTABLE | NFT_MSG_DELTABLE | NFT_MSG_NEWSET | NFT_MSG_DELSET
        ) {
            return; // element changes, chains, rules: ours or harmless
        }
        let owner = self.owner.clone();
        let Some(firewall) = (self.get)(&owner) else {
            return;
        };
        // An event that does not decode may be about our table: re-feed (idempotent).
        let table =
            match NfTablesMessage::parse_with_param(payload.get(4..).unwrap_or_default(), kind) {
                Ok(NfTablesMessage::NewTable(t) | NfTablesMessage::DeleteTable(t)) => {
                    t.attributes.into_iter().find_map(|a| match a {
                        TableAttribute::Name(name) => Some(name),
                        _ => None,
                    })
                }
                Ok(NfTablesMessage::NewSet(s) | NfTablesMessage::DeleteSet(s)) => {
                    s.attributes.into_iter().find_map(|a| match a {
                        SetAttribute::Table(name) => Some(name),
                        _ => None,
                    })
                }
                _ => None,
            };
        for i in self.targets.clone() {
            let config = &firewall.targets[i].config;
            if super::netlink::nfproto(config.family) == family
                && table.as_ref().is_none_or(|t| *t == config.table)
            {
                self.mark(i);
            }
        }
    }

    fn on_overrun(&mut self) {
        let owner = self.owner.clone();
        let Some(firewall) = (self.get)(&owner) else {
            return;
        };
        tracing::debug!("nftables events overran; checking set handles");
        for i in self.targets.clone() {
            if self.handles.get(&i) != Some(&firewall.targets[i].set_handles()) {
                self.mark(i);
            }
        }
    }

    fn tick(&mut self) -> Option<Duration> {
        let since = self.since?;
        let left = SETTLE.saturating_sub(since.elapsed());
        if left.is_zero() {
            self.refeed_pending();
            return None;
        }
        Some(left)
    }
}

impl Subscriber for Nflog {
    fn subsystem(&self) -> u8 {
        NFNL_SUBSYS_ULOG
    }

    fn start(&mut self, socket: &Socket) {
        if let Err(e) = Nflog::bind(socket) {
            tracing::warn!(
                "cannot read NFLOG group {}: {e}; blocked connections are dropped but not alerted",
                super::ruleset::NFLOG_GROUP
            );
        }
    }

    fn on_message(&mut self, kind: u8, _family: u8, payload: &[u8]) {
        if kind == Nflog::kind() {
            self.on_packet(payload, Instant::now());
        }
    }

    fn on_overrun(&mut self) {
        Nflog::on_overrun(self);
    }

    fn cut_short(&mut self) {
        tracing::warn!(
            "shutting down with blocked-connection reports still queued: they are counted as lost"
        );
        Nflog::on_overrun(self);
    }

    fn tick(&mut self) -> Option<Duration> {
        None
    }
}

impl Target {
    /// The handle of each set, `None` where it is missing.
    fn set_handles(&self) -> Vec<Option<u64>> {
        let config = &self.config;
        let mut netlink = lock(&self.netlink);
        config
            .sets()
            .into_iter()
            .map(|set| {
                netlink
                    .get_set(config.family, &config.table, config.set_name(set))
                    .ok()
                    .map(|info| info.handle)
            })
            .collect()
    }

    /// Adds back every element allowdns knows to be live: policy ranges and
    /// fed addresses, each with the time it has left. Returns how many.
    fn refeed(&self, handed: &super::handed::HandedOut) -> io::Result<usize> {
        let installed = lock(&self.installed);
        let mut netlink = lock(&self.netlink);
        let now = Instant::now();
        let wall = SystemTime::now();
        let soon = Duration::from_secs(1);
        let mut fed: HashMap<SetId, Vec<Element>> = HashMap::new();
        {
            let mut expiries = lock(&self.expiries);
            // The sets are new: nothing in them can be shortened, so keys
            // forgotten to bound memory no longer hold feeds back.
            expiries.floor = None;
            for ((set, key), expiry) in &expiries.map {
                if *expiry <= now + soon {
                    continue;
                }
                let key_end = matches!(set, SetId::V4Ports | SetId::V6Ports).then(|| key.clone());
                fed.entry(*set).or_default().push(Element {
                    key: key.clone(),
                    key_end,
                    timeout: Some(*expiry - now),
                    // Labelled again from what the address was handed out for.
                    label: super::takeover::address_of(*set, key)
                        .and_then(|ip| handed.lookup(ip, None, now))
                        .map(|h| super::takeover::label(&h.agent, &h.name)),
                });
            }
        }
        let mut ranges: HashMap<SetId, Vec<Element>> = HashMap::new();
        for s in installed
            .iter()
            .filter(|s| s.expires.is_none_or(|at| at > wall + soon))
        {
            ranges.entry(s.set).or_default().push(s.element(wall));
        }
        drop(installed);
        let metrics = &crate::observe::metrics::METRICS;
        let config = &self.config;
        let mut count = 0;
        let mut failed = None;
        // Policy ranges in transactions of their own: a reloaded ruleset that
        // already holds them (or overlapping ones) must not cost the rest.
        for (is_fed, batch) in [(false, &ranges), (true, &fed)] {
            for (set, elements) in batch {
                for chunk in elements.chunks(REFEED_CHUNK) {
                    let op = SetOp {
                        family: config.family,
                        table: &config.table,
                        set: config.set_name(*set),
                        add: chunk,
                        delete: &[],
                    };
                    metrics.nft_updates.fetch_add(1, Relaxed);
                    match netlink.apply(&[op]) {
                        Ok(()) => {
                            count += chunk.len();
                            metrics.nft_elements.fetch_add(chunk.len() as u64, Relaxed);
                        }
                        Err(e) => {
                            metrics.nft_failures.fetch_add(1, Relaxed);
                            // Not in the kernel: forget them, so the next answer feeds again.
                            if is_fed {
                                let mut expiries = lock(&self.expiries);
                                for e in chunk {
                                    expiries.map.remove(&(*set, e.key.clone()));
                                }
                            }
                            failed.get_or_insert(e);
                        }
                    }
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(count),
        }
    }
}
