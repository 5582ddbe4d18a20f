//! Feeding handed-out addresses into nftables sets, so a default-deny
//! ruleset in the agent's namespace passes exactly what DNS allowed.
//!
//! Per target (namespace, family, table) there are four sets:
//! - `set_v4` / `set_v6` (`ipv4_addr` / `ipv6_addr`, flags timeout): addresses
//!   of names allowed on any port;
//! - `set_v4_ports` / `set_v6_ports` (`addr . inet_proto . inet_service`,
//!   flags interval,timeout): addresses of names allowed only on given ports,
//!   and every IP/CIDR destination written in the policy (permanent).
//!
//! [`Firewall::feed`] runs before the reply leaves; if the kernel does not
//! confirm the update, the client gets SERVFAIL (fail closed). An element's
//! timeout is the record TTL clamped to `[min_ttl, max_ttl]` plus `grace`,
//! never 0, and never shortened. Updates are skipped while the element still
//! outlives the client's cached answer by half the grace, so cache hits
//! refresh elements without putting netlink on every query.

pub mod netlink;
pub mod ruleset;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::rr::rdata::svcb::SvcParamValue;
use hickory_proto::rr::{RData, Record};
use ipnet::IpNet;

pub use crate::policy::firewall::{Family, FirewallConfig};
use crate::policy::{Policy, PolicySet, Ports, Protocol, Rule};
use netlink::{Element, NFT_SET_INTERVAL, NFT_SET_TIMEOUT, Netlink, SetOp};

/// The sets one target holds, by the family its table passes.
trait TargetSets {
    fn set_name(&self, set: SetId) -> &str;
    fn sets(&self) -> Vec<SetId>;
}

impl TargetSets for FirewallConfig {
    fn set_name(&self, set: SetId) -> &str {
        match set {
            SetId::V4 => &self.set_v4,
            SetId::V6 => &self.set_v6,
            SetId::V4Ports => &self.set_v4_ports,
            SetId::V6Ports => &self.set_v6_ports,
        }
    }

    fn sets(&self) -> Vec<SetId> {
        let mut sets = Vec::new();
        if self.passes_v4() {
            sets.extend([SetId::V4, SetId::V4Ports]);
        }
        if self.passes_v6() {
            sets.extend([SetId::V6, SetId::V6Ports]);
        }
        sets
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SetId {
    V4,
    V6,
    V4Ports,
    V6Ports,
}

impl SetId {
    /// Key length and flags the set must have for the elements allowdns writes.
    fn expected(self) -> (u32, u32, &'static str) {
        match self {
            SetId::V4 => (4, NFT_SET_TIMEOUT, "type ipv4_addr; flags timeout"),
            SetId::V6 => (16, NFT_SET_TIMEOUT, "type ipv6_addr; flags timeout"),
            SetId::V4Ports => (
                12,
                NFT_SET_TIMEOUT | NFT_SET_INTERVAL,
                "type ipv4_addr . inet_proto . inet_service; flags interval,timeout",
            ),
            SetId::V6Ports => (
                24,
                NFT_SET_TIMEOUT | NFT_SET_INTERVAL,
                "type ipv6_addr . inet_proto . inet_service; flags interval,timeout",
            ),
        }
    }
}

/// Why an allowed answer could not be fed; the client gets SERVFAIL.
#[derive(Debug)]
pub struct FeedError(pub String);

impl std::fmt::Display for FeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One set of sets allowdns writes to.
struct Target {
    config: FirewallConfig,
    netlink: Mutex<Netlink>,
    /// When each element fed here expires, by (set, key).
    expiries: Mutex<Expiries>,
    /// Elements from policy addresses, as last installed.
    installed: Mutex<Vec<Static>>,
    /// Keys fed under an expiring rule (a grant, `expires:`), by (agent,
    /// pattern), so a revoke can take them out before their timeout.
    by_rule: Mutex<FedUnderRule>,
}

/// (agent, pattern) → the (set, key)s fed under that expiring rule.
type FedUnderRule = HashMap<(Arc<str>, Arc<str>), HashSet<(SetId, Vec<u8>)>>;

/// An element from a policy's IP/CIDR destination: permanent, or with a
/// kernel timeout when the entry expires, so it ends even if allowdns is down.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Static {
    set: SetId,
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    expires: Option<SystemTime>,
}

impl Static {
    fn same_range(&self, other: &Static) -> bool {
        self.set == other.set && self.key == other.key && self.key_end == other.key_end
    }

    fn element(&self, now: SystemTime) -> Element {
        Element {
            key: self.key.clone(),
            key_end: self.key_end.clone(),
            timeout: self.expires.map(|at| {
                at.duration_since(now)
                    .unwrap_or_default()
                    .max(Duration::from_secs(1))
            }),
        }
    }
}

/// Entries kept in a target's expiry map before expired ones are pruned.
const PRUNE_AT: usize = 200_000;

/// What allowdns knows of element expiries in one target.
#[derive(Default)]
struct Expiries {
    map: HashMap<(SetId, Vec<u8>), Instant>,
    /// The latest expiry among entries forgotten to bound memory. A key not
    /// in the map may still live in the kernel until then, so it is treated as
    /// expiring then: elements are never shortened.
    floor: Option<Instant>,
}

impl Expiries {
    fn known(&self, set: SetId, key: &[u8], now: Instant) -> Option<Instant> {
        let floor = self.floor.filter(|f| *f > now);
        match (self.map.get(&(set, key.to_vec())).copied(), floor) {
            (Some(e), Some(f)) => Some(e.max(f)),
            (e, f) => e.or(f),
        }
    }

    fn prune(&mut self, now: Instant) {
        if self.map.len() <= PRUNE_AT {
            return;
        }
        self.map.retain(|_, e| *e > now);
        if self.map.len() > PRUNE_AT {
            let latest = self.map.values().max().copied();
            self.floor = self.floor.max(latest);
            self.map.clear();
        }
    }
}

/// Whether a policy range element contains a single concatenated key.
fn covers(range: &Static, key: &[u8]) -> bool {
    let Some(end) = &range.key_end else {
        return range.key == key;
    };
    if range.key.len() != key.len() || end.len() != key.len() {
        return false;
    }
    // Fields: address, protocol (1 byte padded to 4), port (2 bytes padded to 4).
    let addr = key.len() - 8;
    let fields = [(0, addr), (addr, addr + 1), (addr + 4, addr + 6)];
    fields
        .iter()
        .all(|&(a, b)| range.key[a..b] <= key[a..b] && key[a..b] <= end[a..b])
}

/// The targets opened at startup. Which one a policy feeds follows from its
/// own `firewall:` config, so the policy in force and its target never disagree.
pub struct Firewall {
    targets: Vec<Target>,
}

impl Firewall {
    /// Opens a socket per target and checks every set; changes nothing, so
    /// `check` can use it. `None` when no policy feeds a firewall.
    pub fn open(policies: &PolicySet) -> Result<Option<Firewall>, String> {
        let mut targets: Vec<Target> = Vec::new();
        for config in policies.policies.iter().filter_map(|p| p.firewall.as_ref()) {
            if !targets.iter().any(|t| &t.config == config) {
                targets.push(Target::open(config)?);
            }
        }
        Ok((!targets.is_empty()).then_some(Firewall { targets }))
    }

    fn target_for(&self, policy: &Policy) -> Option<&Target> {
        let config = policy.firewall.as_ref()?;
        self.targets.iter().find(|t| &t.config == config)
    }

    /// Whether every policy feeds a target opened at startup (opening netlink
    /// sockets in new namespaces needs a restart). Changes nothing.
    pub fn check(&self, policies: &PolicySet) -> Result<(), String> {
        for policy in &policies.policies {
            if let Some(config) = &policy.firewall
                && self.target_for(policy).is_none()
            {
                return Err(format!(
                    "agent '{}' feeds {}, which was not open at startup; restart allowdns to add it",
                    policy.agent,
                    config.describe()
                ));
            }
        }
        Ok(())
    }

    /// Makes the policy-address elements match the policies' IP/CIDR
    /// destinations, in every target. Elements of an expiring entry carry a
    /// kernel timeout to its end.
    pub fn sync_static(&self, policies: &PolicySet) -> Result<(), String> {
        let now = SystemTime::now();
        for target in &self.targets {
            let mut wanted: Vec<Static> = Vec::new();
            for policy in &policies.policies {
                if policy.firewall.as_ref() != Some(&target.config) {
                    continue;
                }
                for address in policy
                    .addresses
                    .iter()
                    .filter(|a| a.expires.is_none_or(|at| now < at))
                {
                    for e in static_elements(&target.config, address.net, &address.ports) {
                        let e = Static {
                            expires: address.expires,
                            ..e
                        };
                        match wanted.iter_mut().find(|w| w.same_range(&e)) {
                            // The same range from two entries lives as long as the longer one.
                            Some(w) => {
                                w.expires = w.expires.zip(e.expires).map(|(a, b)| a.max(b));
                            }
                            None => wanted.push(e),
                        }
                    }
                }
            }
            target.replace_static(wanted, now)?;
        }
        Ok(())
    }

    /// Takes out, at once, every element fed under `agent`'s expiring rule
    /// `pattern` (a revoked or shortened grant), instead of letting them run
    /// to their timeout. Addresses other names also led to go too; they are
    /// fed again on their next answer.
    pub fn withdraw(&self, agent: &str, pattern: &str) -> Result<usize, String> {
        let mut total = 0;
        for target in &self.targets {
            total += target.withdraw(agent, pattern).map_err(|e| {
                format!(
                    "cannot withdraw elements of '{pattern}' from {}: {e}",
                    target.config.describe()
                )
            })?;
        }
        Ok(total)
    }

    /// Stops tracking keys for expiring rules no longer in force; their
    /// elements age out by their own timeouts.
    pub fn forget_ended(&self, policies: &PolicySet) {
        for target in &self.targets {
            let mut by_rule = target.by_rule.lock().unwrap_or_else(|p| p.into_inner());
            by_rule.retain(|(agent, pattern), _| {
                policies.by_agent(agent).is_some_and(|p| {
                    p.rules
                        .iter()
                        .chain(&p.learn)
                        .any(|r| r.pattern == *pattern && withdrawable(p, r))
                })
            });
        }
    }

    /// Adds every address in `answers` to the agent's sets, before the reply
    /// leaves. Records of a family the target cannot pass are removed, and
    /// TTLs are capped at `max_ttl` so no client caches past its element.
    pub fn feed(
        &self,
        policy: &Policy,
        rule: &Rule,
        answers: &mut Vec<Record>,
    ) -> Result<(), FeedError> {
        self.feed_checked(policy, rule, answers, &|| true)
    }

    /// [`Firewall::feed`], for a rule that a revoke or reload may end while
    /// the answer is on its way: `still_in_force` is asked under the lock
    /// that withdrawals take, and if it says no, nothing is fed (SERVFAIL).
    pub fn feed_checked(
        &self,
        policy: &Policy,
        rule: &Rule,
        answers: &mut Vec<Record>,
        still_in_force: &dyn Fn() -> bool,
    ) -> Result<(), FeedError> {
        let Some(target) = self.target_for(policy) else {
            return match &policy.firewall {
                // Cannot happen after `check`; never hand out what the fence would not pass.
                Some(config) => Err(FeedError(format!("{} is not open", config.describe()))),
                None => Ok(()),
            };
        };
        let config = &target.config;
        answers.retain(|r| match &r.data {
            RData::A(_) => config.passes_v4(),
            RData::AAAA(_) => config.passes_v6(),
            _ => true,
        });
        // An element allowed by an expiring rule (a grant, `expires:`) lives
        // no longer than the rule, plus grace.
        let rule_left = rule.expires.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            u32::try_from(left.as_secs()).unwrap_or(u32::MAX)
        });
        let mut wanted: Vec<(SetId, Vec<u8>, u32)> = Vec::new();
        for record in answers.iter_mut() {
            record.ttl = record.ttl.min(config.max_ttl);
            let lifetime = record
                .ttl
                .clamp(config.min_ttl, config.max_ttl)
                .min(rule_left.unwrap_or(u32::MAX));
            for ip in addresses(record) {
                if (ip.is_ipv4() && !config.passes_v4()) || (ip.is_ipv6() && !config.passes_v6()) {
                    continue;
                }
                for (set, key) in dynamic_keys(ip, &rule.ports) {
                    wanted.push((set, key, lifetime));
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let failed = |e: io::Error| {
            FeedError(format!(
                "nftables update in {} failed: {e}",
                config.describe()
            ))
        };
        if !withdrawable(policy, rule) {
            return target.feed(wanted).map_err(failed);
        }
        // Held through the update, so a withdraw cannot slip between the
        // check that the rule still stands and the add.
        let mut by_rule = target.by_rule.lock().unwrap_or_else(|p| p.into_inner());
        if !still_in_force() {
            return Err(FeedError(format!(
                "'{}' of agent '{}' ended while this answer was on its way",
                rule.pattern, policy.agent
            )));
        }
        let keys = by_rule
            .entry((policy.agent.clone(), rule.pattern.clone()))
            .or_default();
        keys.extend(wanted.iter().map(|(set, key, _)| (*set, key.clone())));
        if keys.len() > PRUNE_AT {
            // Keys whose elements already timed out need no withdrawal.
            let expiries = target.expiries.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            keys.retain(|(set, key)| expiries.known(*set, key, now).is_some_and(|e| e > now));
        }
        target.feed(wanted).map_err(failed)
    }
}

/// Rules whose fed elements may have to go before their timeout: expiring
/// ones (a revoke) and learn mode's catch-all (a switch to enforce).
pub fn withdrawable(policy: &Policy, rule: &Rule) -> bool {
    rule.expires.is_some()
        || policy
            .learn
            .as_ref()
            .is_some_and(|l| l.pattern == rule.pattern)
}

impl Target {
    fn open(config: &FirewallConfig) -> Result<Target, String> {
        let mut netlink = open_in(config.netns.as_deref()).map_err(|e| {
            format!(
                "cannot open netlink for {}: {e}{}",
                config.describe(),
                hint(&e)
            )
        })?;
        let mut expiries = Expiries::default();
        let now = Instant::now();
        for set in config.sets() {
            let name = config.set_name(set);
            let (key_len, flags, decl) = set.expected();
            let info = netlink.get_set(config.family, &config.table, name).map_err(|e| {
                format!(
                    "set '{name}' in {}: {e}{} (expected `set {name} {{ {decl}; }}`; `allowdns nft-ruleset` prints it)",
                    config.describe(),
                    hint(&e)
                )
            })?;
            if info.key_len != key_len || info.flags & flags != flags {
                return Err(format!(
                    "set '{name}' in {} has the wrong type or flags (expected `{decl}`)",
                    config.describe()
                ));
            }
            // Elements from before a restart: remember their expiry so none is shortened.
            let listed = netlink
                .list_elements(config.family, &config.table, name)
                .map_err(|e| format!("cannot list set '{name}' in {}: {e}", config.describe()))?;
            for l in listed {
                if let Some(left) = l.expires_in {
                    expiries.map.insert((set, l.key), now + left);
                }
            }
        }
        Ok(Target {
            config: config.clone(),
            netlink: Mutex::new(netlink),
            expiries: Mutex::new(expiries),
            installed: Mutex::new(Vec::new()),
            by_rule: Mutex::new(HashMap::new()),
        })
    }

    fn feed(&self, wanted: Vec<(SetId, Vec<u8>, u32)>) -> io::Result<()> {
        // Keys inside a permanent range are already passed; adding them would
        // overlap the range, which interval sets refuse.
        let wanted: Vec<_> = {
            let installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
            wanted
                .into_iter()
                .filter(|(set, key, _)| !installed.iter().any(|e| e.set == *set && covers(e, key)))
                .collect()
        };
        if wanted.is_empty() || self.updates(&wanted, Instant::now()).is_empty() {
            return Ok(()); // ample time left everywhere: no netlink
        }
        // Updates are serialized and recomputed under the netlink lock, so two
        // feeds of one key cannot race each other into a shorter expiry.
        let mut netlink = self.netlink.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let updates = self.updates(&wanted, now);
        if updates.is_empty() {
            return Ok(());
        }
        let mut per_set: HashMap<SetId, Vec<Element>> = HashMap::new();
        for (set, key, expiry) in &updates {
            let timeout = expiry
                .saturating_duration_since(now)
                .max(Duration::from_secs(1));
            let key_end = matches!(set, SetId::V4Ports | SetId::V6Ports).then(|| key.clone());
            per_set.entry(*set).or_default().push(Element {
                key: key.clone(),
                key_end,
                timeout: Some(timeout),
            });
        }
        let config = &self.config;
        let ops: Vec<SetOp<'_>> = per_set
            .iter()
            .map(|(set, elements)| SetOp {
                family: config.family,
                table: &config.table,
                set: config.set_name(*set),
                add: elements,
                delete: &[],
            })
            .collect();
        let applied = netlink.apply(&ops);
        let metrics = &crate::observe::metrics::METRICS;
        metrics.nft_updates.fetch_add(1, Relaxed);
        let mut expiries = self.expiries.lock().unwrap_or_else(|p| p.into_inner());
        match &applied {
            Ok(()) => {
                metrics
                    .nft_elements
                    .fetch_add(updates.len() as u64, Relaxed);
                expiries.prune(now);
                for (set, key, expiry) in updates {
                    let slot = expiries.map.entry((set, key)).or_insert(expiry);
                    *slot = (*slot).max(expiry);
                }
            }
            // The kernel's state is unknown: forget, so the next answer updates again.
            Err(_) => {
                metrics.nft_failures.fetch_add(1, Relaxed);
                for (set, key, _) in &updates {
                    expiries.map.remove(&(*set, key.clone()));
                }
            }
        }
        applied
    }

    /// The elements that need an update, with their new expiry: those that
    /// would expire before the answer's TTL plus half the grace. The new
    /// expiry is never earlier than the known one.
    fn updates(
        &self,
        // (set, key, lifetime in seconds, already clamped)
        wanted: &[(SetId, Vec<u8>, u32)],
        now: Instant,
    ) -> Vec<(SetId, Vec<u8>, Instant)> {
        let config = &self.config;
        let grace = Duration::from_secs(u64::from(config.grace));
        let expiries = self.expiries.lock().unwrap_or_else(|p| p.into_inner());
        let mut updates: Vec<(SetId, Vec<u8>, Instant)> = Vec::new();
        for (set, key, ttl) in wanted {
            let ttl = Duration::from_secs(u64::from(*ttl));
            let existing = expiries.known(*set, key, now);
            if existing.is_some_and(|e| e >= now + ttl + grace / 2) {
                continue;
            }
            let expiry = existing.map_or(now + ttl + grace, |e| e.max(now + ttl + grace));
            if !updates.iter().any(|(s, k, _)| s == set && k == key) {
                updates.push((*set, key.clone(), expiry));
            }
        }
        updates
    }

    /// Installs `wanted` as the policy-address elements, removing ones no
    /// longer wanted and re-adding ones whose expiry changed.
    fn replace_static(&self, wanted: Vec<Static>, now: SystemTime) -> Result<(), String> {
        let config = &self.config;
        let mut installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
        let mut netlink = self.netlink.lock().unwrap_or_else(|p| p.into_inner());
        // On first sync, what is installed is whatever permanent elements the sets hold.
        if installed.is_empty() {
            for set in [SetId::V4Ports, SetId::V6Ports] {
                if !config.sets().contains(&set) {
                    continue;
                }
                let listed = netlink
                    .list_elements(config.family, &config.table, config.set_name(set))
                    .map_err(|e| format!("cannot list set '{}': {e}", config.set_name(set)))?;
                for l in listed.into_iter().filter(|l| l.expires_in.is_none()) {
                    installed.push(Static {
                        set,
                        key: l.key,
                        key_end: l.key_end,
                        expires: None,
                    });
                }
            }
        }
        // A changed expiry is a delete and an add in the same transaction.
        let mut ops_data: HashMap<SetId, (Vec<Element>, Vec<Element>)> = HashMap::new();
        // One that has timed out in the kernel (or is about to) is left to
        // go: deleting a missing element fails the whole batch.
        let soon = now + Duration::from_secs(1);
        for old in installed.iter().filter(|old| !wanted.contains(old)) {
            if old.expires.is_none_or(|at| at > soon) {
                ops_data
                    .entry(old.set)
                    .or_default()
                    .1
                    .push(old.element(now));
            }
        }
        for new in wanted.iter().filter(|new| !installed.contains(new)) {
            ops_data
                .entry(new.set)
                .or_default()
                .0
                .push(new.element(now));
        }
        let ops: Vec<SetOp<'_>> = ops_data
            .iter()
            .map(|(set, (add, delete))| SetOp {
                family: config.family,
                table: &config.table,
                set: config.set_name(*set),
                add,
                delete,
            })
            .collect();
        if ops.is_empty() {
            return Ok(());
        }
        let metrics = &crate::observe::metrics::METRICS;
        metrics.nft_updates.fetch_add(1, Relaxed);
        if let Err(e) = netlink.apply(&ops) {
            metrics.nft_failures.fetch_add(1, Relaxed);
            return Err(format!(
                "cannot install policy addresses in {}: {e}",
                config.describe()
            ));
        }
        let added: usize = ops_data.values().map(|(add, _)| add.len()).sum();
        metrics.nft_elements.fetch_add(added as u64, Relaxed);
        *installed = wanted;
        Ok(())
    }

    /// Deletes the elements fed under one expiring rule; see [`Firewall::withdraw`].
    fn withdraw(&self, agent: &str, pattern: &str) -> io::Result<usize> {
        // Held until the kernel has the deletes: see `feed_checked`.
        let mut by_rule = self.by_rule.lock().unwrap_or_else(|p| p.into_inner());
        let Some(keys) = by_rule.remove(&(Arc::from(agent), Arc::from(pattern))) else {
            return Ok(0);
        };
        let mut netlink = self.netlink.lock().unwrap_or_else(|p| p.into_inner());
        let mut expiries = self.expiries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Only elements surely still in the kernel: deleting a missing one
        // fails the batch. One about to time out is left to do so.
        let mut per_set: HashMap<SetId, Vec<Element>> = HashMap::new();
        for (set, key) in keys {
            let alive = expiries
                .map
                .remove(&(set, key.clone()))
                .is_some_and(|e| e > now + Duration::from_secs(1));
            if alive {
                let key_end = matches!(set, SetId::V4Ports | SetId::V6Ports).then(|| key.clone());
                per_set.entry(set).or_default().push(Element {
                    key,
                    key_end,
                    timeout: None,
                });
            }
        }
        drop(expiries);
        let ops: Vec<SetOp<'_>> = per_set
            .iter()
            .map(|(set, delete)| SetOp {
                family: self.config.family,
                table: &self.config.table,
                set: self.config.set_name(*set),
                add: &[],
                delete,
            })
            .collect();
        let count = per_set.values().map(Vec::len).sum();
        if count == 0 {
            return Ok(0);
        }
        let metrics = &crate::observe::metrics::METRICS;
        metrics.nft_updates.fetch_add(1, Relaxed);
        netlink.apply(&ops).inspect_err(|_| {
            metrics.nft_failures.fetch_add(1, Relaxed);
        })?;
        Ok(count)
    }
}

/// Opens a netlink socket inside `netns` (the socket stays there).
fn open_in(netns: Option<&Path>) -> io::Result<Netlink> {
    let Some(path) = netns else {
        return Netlink::open();
    };
    let file = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    // setns affects only the calling thread, so do it on a thread of its own.
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            Netlink::open()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
    })
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(1) => " (needs CAP_NET_ADMIN)",
        Some(2) => " (does it exist?)",
        _ => "",
    }
}

/// Every address a record hands out: A, AAAA, and HTTPS/SVCB address hints.
fn addresses(record: &Record) -> Vec<IpAddr> {
    let svcb = match &record.data {
        RData::A(a) => return vec![IpAddr::V4(a.0)],
        RData::AAAA(a) => return vec![IpAddr::V6(a.0)],
        RData::HTTPS(https) => &https.0,
        RData::SVCB(svcb) => svcb,
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for (_, value) in &svcb.svc_params {
        match value {
            SvcParamValue::Ipv4Hint(hint) => out.extend(hint.0.iter().map(|a| IpAddr::V4(a.0))),
            SvcParamValue::Ipv6Hint(hint) => out.extend(hint.0.iter().map(|a| IpAddr::V6(a.0))),
            _ => {}
        }
    }
    out
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// `addr . proto . port`, each field padded to 4 bytes as nftables registers are.
fn concat(ip: &[u8], proto: u8, port: u16) -> Vec<u8> {
    let mut key = ip.to_vec();
    key.extend_from_slice(&[proto, 0, 0, 0]);
    key.extend_from_slice(&port.to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    key
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    }
}

/// Keys for a DNS-fed address: the plain set for any port, else one
/// concatenated key per allowed (protocol, port).
fn dynamic_keys(ip: IpAddr, ports: &Ports) -> Vec<(SetId, Vec<u8>)> {
    let (plain, with_ports) = if ip.is_ipv4() {
        (SetId::V4, SetId::V4Ports)
    } else {
        (SetId::V6, SetId::V6Ports)
    };
    let bytes = ip_bytes(ip);
    if ports.any || ports.listed.is_empty() {
        return vec![(plain, bytes)];
    }
    ports
        .listed
        .iter()
        .map(|&(proto, port)| (with_ports, concat(&bytes, proto_number(proto), port)))
        .collect()
}

/// Range elements for an IP/CIDR destination (permanent until the caller sets `expires`).
fn static_elements(config: &FirewallConfig, net: IpNet, ports: &Ports) -> Vec<Static> {
    let set = match net {
        IpNet::V4(_) if config.passes_v4() => SetId::V4Ports,
        IpNet::V6(_) if config.passes_v6() => SetId::V6Ports,
        _ => return Vec::new(),
    };
    let (first, last) = (ip_bytes(net.network()), ip_bytes(net.broadcast()));
    let ranges: Vec<((u8, u16), (u8, u16))> = if ports.any || ports.listed.is_empty() {
        vec![((0, 0), (255, 65535))]
    } else {
        ports
            .listed
            .iter()
            .map(|&(p, port)| ((proto_number(p), port), (proto_number(p), port)))
            .collect()
    };
    ranges
        .into_iter()
        .map(|((p0, port0), (p1, port1))| Static {
            set,
            key: concat(&first, p0, port0),
            key_end: Some(concat(&last, p1, port1)),
            expires: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_address_hints_are_handed_out_addresses() {
        use hickory_proto::rr::rdata::svcb::{IpHint, SVCB, SvcParamKey};
        use hickory_proto::rr::rdata::{A, AAAA, HTTPS};
        let svcb = SVCB::new(
            1,
            hickory_proto::rr::Name::root(),
            vec![
                (
                    SvcParamKey::Ipv4Hint,
                    SvcParamValue::Ipv4Hint(IpHint(vec![A::new(192, 0, 2, 7)])),
                ),
                (
                    SvcParamKey::Ipv6Hint,
                    SvcParamValue::Ipv6Hint(IpHint(vec![AAAA::new(
                        0x2001, 0xdb8, 0, 0, 0, 0, 0, 7,
                    )])),
                ),
            ],
        );
        let record = Record::from_rdata(
            hickory_proto::rr::Name::root(),
            60,
            RData::HTTPS(HTTPS(svcb)),
        );
        assert_eq!(
            addresses(&record),
            vec![
                "192.0.2.7".parse::<IpAddr>().unwrap(),
                "2001:db8::7".parse().unwrap()
            ]
        );
    }

    #[test]
    fn keys_follow_nftables_register_layout() {
        let ports = Ports {
            any: false,
            listed: vec![(Protocol::Tcp, 443)],
        };
        let keys = dynamic_keys("192.0.2.1".parse().unwrap(), &ports);
        assert_eq!(
            keys,
            vec![(SetId::V4Ports, vec![192, 0, 2, 1, 6, 0, 0, 0, 1, 187, 0, 0])]
        );
        let any = Ports {
            any: true,
            listed: vec![],
        };
        assert_eq!(
            dynamic_keys("2001:db8::1".parse().unwrap(), &any)[0]
                .1
                .len(),
            16
        );
        let config = FirewallConfig::with_defaults();
        let e = static_elements(&config, "10.0.0.0/8".parse().unwrap(), &any);
        assert_eq!(e[0].key, vec![10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            e[0].key_end.as_ref().unwrap(),
            &vec![10, 255, 255, 255, 255, 0, 0, 0, 255, 255, 0, 0]
        );
    }
}
