//! One target: a netlink socket in the target's namespace and what allowdns
//! knows of its sets. Opening verifies every set (type, flags) and reads the
//! expiries already there; then elements are fed, policy ranges installed,
//! and the elements of an ended rule withdrawn.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::error::{FenceError, TargetId};
use super::keys::{Expiries, SetId, Static, TargetSets, covers, set_ops};
use super::netlink::{Element, Listed, Netlink, SetOp};
use crate::policy::firewall::FirewallConfig;
use crate::sync::lock;

/// Entering a namespace, and nftables there.
const CAPS_NETNS: &str = "CAP_SYS_ADMIN (to enter the namespace) and CAP_NET_ADMIN";
/// nftables in allowdns's own namespace.
const CAPS_NFT: &str = "CAP_NET_ADMIN";

/// One set of sets allowdns writes to.
pub(super) struct Target {
    /// Where the sets are and how elements are timed; also the key a policy
    /// finds its target by.
    pub(super) config: FirewallConfig,
    /// The socket in the target's namespace; its lock serializes updates,
    /// so two feeds of one key cannot race into a shorter expiry.
    pub(super) netlink: Mutex<Netlink>,
    /// When each element fed here expires, by (set, key).
    pub(super) expiries: Mutex<Expiries>,
    /// Elements from policy addresses, as last installed.
    pub(super) installed: Mutex<Vec<Static>>,
    /// Keys fed under an expiring rule (a grant, `expires:`), by (agent,
    /// pattern), so a revoke can take them out before their timeout; and
    /// which rules were withdrawn when. One lock, which withdrawals and
    /// feeds of withdrawable rules both hold through their netlink update.
    pub(super) by_rule: Mutex<ByRule>,
    /// Whether a `mode: monitor` policy feeds this target: its monitor set
    /// then holds an element per family, restored after a ruleset reload.
    pub(super) monitor: Mutex<bool>,
    /// Elements with a timeout found at open (a previous run's), until
    /// [`super::Firewall::take_over`] keeps or withdraws them.
    pub(super) inherited: Mutex<Vec<(SetId, Listed)>>,
}

/// (agent, pattern) → the (set, key)s fed under that expiring rule.
pub(super) type FedUnderRule = HashMap<(Arc<str>, Arc<str>), HashSet<(SetId, Vec<u8>)>>;

/// What a target knows of withdrawable rules: what was fed under each, and
/// which were withdrawn at which generation of the policy set, so an answer
/// decided against an older set cannot feed a rule withdrawn since.
#[derive(Default)]
pub(super) struct ByRule {
    /// The keys to delete when a rule is withdrawn.
    pub(super) fed: FedUnderRule,
    /// (agent, pattern) → the generation the rule was withdrawn at, and
    /// when: recent withdrawals only (see [`ByRule::withdrawn`]).
    withdrawn: HashMap<(Arc<str>, Arc<str>), (u64, Instant)>,
    /// The newest generation among withdrawals no longer remembered: an
    /// answer decided before it can no longer be told apart, so it feeds
    /// nothing (never open on doubt).
    forgotten: u64,
}

impl ByRule {
    /// Records that `agent`'s rule `pattern` was withdrawn by the set of
    /// `generation`, and forgets withdrawals older than `remember` (the
    /// longest an answer may be on its way).
    pub(super) fn withdrawn(
        &mut self,
        agent: &str,
        pattern: &str,
        generation: u64,
        remember: Duration,
        now: Instant,
    ) {
        let mut forgotten = self.forgotten;
        self.withdrawn.retain(|_, (at, when)| {
            let keep = now.saturating_duration_since(*when) <= remember;
            if !keep {
                forgotten = forgotten.max(*at);
            }
            keep
        });
        self.forgotten = forgotten;
        let slot = self
            .withdrawn
            .entry((Arc::from(agent), Arc::from(pattern)))
            .or_insert((generation, now));
        // Withdrawals come in generation order; a late one never lowers the mark.
        *slot = (slot.0.max(generation), now);
    }

    /// Whether an answer for the rule (agent, pattern), decided against the
    /// set of generation `decided_at`, may still feed: not if the rule was
    /// withdrawn by a later set.
    pub(super) fn may_feed(&self, rule: &(Arc<str>, Arc<str>), decided_at: u64) -> bool {
        decided_at >= self.forgotten
            && self
                .withdrawn
                .get(rule)
                .is_none_or(|(at, _)| *at <= decided_at)
    }
}

impl Target {
    /// Opens a socket in the target's namespace and checks every set;
    /// changes nothing.
    pub(super) fn open(config: &FirewallConfig) -> Result<Target, FenceError> {
        let target = TargetId::of(config);
        let (action, caps) = match &config.netns {
            Some(_) => ("enter the namespace", CAPS_NETNS),
            None => ("open netlink", CAPS_NFT),
        };
        let mut netlink =
            crate::netns::within(config.netns.as_deref(), Netlink::open).map_err(|source| {
                FenceError::or_permission(
                    source,
                    &target,
                    || action.into(),
                    caps,
                    |source| FenceError::Open {
                        target: target.clone(),
                        source,
                    },
                )
            })?;
        let mut expiries = Expiries::default();
        let mut inherited = Vec::new();
        let now = Instant::now();
        for set in config.sets() {
            let name = config.set_name(set);
            let (key_len, flags, decl) = set.expected();
            let info = netlink
                .get_set(config.family, &config.table, name)
                .map_err(|source| SetCall::Read { decl }.failed(source, &target, name))?;
            if info.key_len != key_len || info.flags & flags != flags {
                return Err(FenceError::WrongType {
                    target,
                    set: name.to_string(),
                    decl,
                });
            }
            // Elements from before a restart: remember their expiry so none is shortened.
            let listed = netlink
                .list_elements(config.family, &config.table, name)
                .map_err(|source| SetCall::List.failed(source, &target, name))?;
            for l in listed {
                if let Some(left) = l.expires_in {
                    expiries.map.insert((set, l.key.clone()), now + left);
                    inherited.push((set, l));
                }
            }
        }
        Ok(Target {
            config: config.clone(),
            netlink: Mutex::new(netlink),
            expiries: Mutex::new(expiries),
            installed: Mutex::new(Vec::new()),
            by_rule: Mutex::new(ByRule::default()),
            monitor: Mutex::new(false),
            inherited: Mutex::new(inherited),
        })
    }

    /// Adds `wanted` (set, key, lifetime), each labelled `label` in the kernel.
    pub(super) fn feed(
        &self,
        wanted: Vec<(SetId, Vec<u8>, u32)>,
        label: Option<&str>,
    ) -> io::Result<()> {
        // Keys inside a permanent range are already passed; adding them would
        // overlap the range, which interval sets refuse.
        let wanted: Vec<_> = {
            let installed = lock(&self.installed);
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
        let mut netlink = lock(&self.netlink);
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
                label: label.map(str::to_string),
            });
        }
        let config = &self.config;
        let ops = set_ops(config, &per_set, false);
        let applied = netlink.apply(&ops);
        let metrics = &crate::observe::metrics::METRICS;
        metrics.nft_updates.fetch_add(1, Relaxed);
        let mut expiries = lock(&self.expiries);
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
        let expiries = lock(&self.expiries);
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
    pub(super) fn replace_static(
        &self,
        wanted: Vec<Static>,
        now: SystemTime,
    ) -> Result<(), FenceError> {
        let config = &self.config;
        let mut installed = lock(&self.installed);
        let mut netlink = lock(&self.netlink);
        // On first sync, what is installed is whatever permanent elements the sets hold.
        if installed.is_empty() {
            for set in [SetId::V4Ports, SetId::V6Ports] {
                if !config.sets().contains(&set) {
                    continue;
                }
                let listed = netlink
                    .list_elements(config.family, &config.table, config.set_name(set))
                    .map_err(|source| FenceError::List {
                        target: TargetId::of(config),
                        set: config.set_name(set).to_string(),
                        source,
                    })?;
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
        if let Err(source) = netlink.apply(&ops) {
            metrics.nft_failures.fetch_add(1, Relaxed);
            return Err(FenceError::Install {
                target: TargetId::of(config),
                source,
            });
        }
        let added: usize = ops_data.values().map(|(add, _)| add.len()).sum();
        metrics.nft_elements.fetch_add(added as u64, Relaxed);
        *installed = wanted;
        Ok(())
    }

    /// Fills the monitor set (`on`) or empties it: with it full, what the
    /// sets do not pass is logged and accepted instead of dropped. A ruleset
    /// without the set can only enforce.
    pub(super) fn sync_monitor(&self, on: bool) -> Result<(), FenceError> {
        let mut want = lock(&self.monitor);
        *want = on;
        let config = &self.config;
        let set = crate::fence::ruleset::MONITOR_SET;
        let decl = "type ether_type";
        let mut netlink = lock(&self.netlink);
        let info = match netlink.get_set(config.family, &config.table, set) {
            Ok(info) => info,
            Err(_) if !on => return Ok(()),
            Err(source) => {
                return Err(FenceError::Set {
                    target: TargetId::of(config),
                    set: set.into(),
                    decl,
                    source,
                });
            }
        };
        if info.key_len != 2 {
            return Err(FenceError::WrongType {
                target: TargetId::of(config),
                set: set.into(),
                decl,
            });
        }
        let listed = netlink
            .list_elements(config.family, &config.table, set)
            .map_err(|source| FenceError::List {
                target: TargetId::of(config),
                set: set.into(),
                source,
            })?;
        let mut wanted: Vec<Vec<u8>> = Vec::new();
        if on {
            // The packets' ethertypes (`meta protocol`, set on local output
            // in every family), for the families the table passes.
            if config.passes_v4() {
                wanted.push(vec![0x08, 0x00]);
            }
            if config.passes_v6() {
                wanted.push(vec![0x86, 0xdd]);
            }
        }
        let element = |key: &Vec<u8>| Element {
            key: key.clone(),
            key_end: None,
            timeout: None,
            label: None,
        };
        let have: Vec<Vec<u8>> = listed.into_iter().map(|l| l.key).collect();
        let add: Vec<Element> = wanted
            .iter()
            .filter(|k| !have.contains(k))
            .map(element)
            .collect();
        let delete: Vec<Element> = have
            .iter()
            .filter(|k| !wanted.contains(k))
            .map(element)
            .collect();
        if add.is_empty() && delete.is_empty() {
            return Ok(());
        }
        let op = SetOp {
            family: config.family,
            table: &config.table,
            set,
            add: &add,
            delete: &delete,
        };
        let metrics = &crate::observe::metrics::METRICS;
        metrics.nft_updates.fetch_add(1, Relaxed);
        netlink.apply(&[op]).map_err(|source| {
            metrics.nft_failures.fetch_add(1, Relaxed);
            FenceError::Install {
                target: TargetId::of(config),
                source,
            }
        })
    }

    /// Deletes the elements fed under one expiring rule, withdrawn by the set
    /// of `generation`; see [`Firewall::withdraw`].
    pub(super) fn withdraw(
        &self,
        agent: &str,
        pattern: &str,
        generation: u64,
        remember: Duration,
    ) -> io::Result<usize> {
        // Held until the kernel has the deletes: see `feed_decided_at`.
        let mut by_rule = lock(&self.by_rule);
        // Recorded first, so a late answer feeds nothing even if the deletes fail.
        by_rule.withdrawn(agent, pattern, generation, remember, Instant::now());
        let Some(keys) = by_rule.fed.remove(&(Arc::from(agent), Arc::from(pattern))) else {
            return Ok(0);
        };
        let mut netlink = lock(&self.netlink);
        let mut expiries = lock(&self.expiries);
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
                    label: None,
                });
            }
        }
        drop(expiries);
        let ops = set_ops(&self.config, &per_set, true);
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

/// The netlink calls on one set that opening a target makes.
#[derive(Clone, Copy)]
enum SetCall {
    /// Reading its type, which should be `decl`.
    Read { decl: &'static str },
    /// Listing its elements.
    List,
}

impl SetCall {
    /// The call failed on set `name`: a permission problem, or its own error.
    fn failed(self, source: io::Error, target: &TargetId, name: &str) -> FenceError {
        let verb = match self {
            SetCall::Read { .. } => "read",
            SetCall::List => "list",
        };
        FenceError::or_permission(
            source,
            target,
            || format!("{verb} set '{name}'"),
            CAPS_NFT,
            |source| {
                let (target, set) = (target.clone(), name.to_string());
                match self {
                    SetCall::Read { decl } => FenceError::Set {
                        target,
                        set,
                        decl,
                        source,
                    },
                    SetCall::List => FenceError::List {
                        target,
                        set,
                        source,
                    },
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    //! The bookkeeping that keeps a late answer from re-feeding a withdrawn
    //! rule, without netlink. A withdrawal runs under the grants lock right
    //! after the install of the set that ended the rule (generation `g`);
    //! `withdrawn` and `may_feed` both run under the target's `by_rule` lock,
    //! which the feed holds through its netlink add and the withdrawal
    //! through its deletes, so "during" is always "before" or "after".

    use super::*;

    const REMEMBER: Duration = Duration::from_secs(7);

    fn rule(agent: &str, pattern: &str) -> (Arc<str>, Arc<str>) {
        (Arc::from(agent), Arc::from(pattern))
    }

    #[test]
    fn a_rule_withdrawn_by_a_later_set_feeds_nothing_from_an_older_one() {
        let mut by_rule = ByRule::default();
        let now = Instant::now();
        let grant = rule("a", "g.test");
        // Positive control: nothing withdrawn, any generation feeds.
        assert!(by_rule.may_feed(&grant, 0) && by_rule.may_feed(&grant, 5));

        // Feed first (decided at 1), then the revoke installs 2 and
        // withdraws: the feed went in, and the withdrawal takes it out.
        assert!(by_rule.may_feed(&grant, 1));
        by_rule.withdrawn("a", "g.test", 2, REMEMBER, now);
        // Withdrawal first: an answer decided at 1 arrives late, nothing fed.
        assert!(!by_rule.may_feed(&grant, 1));
        // Decided against the set that ended it (a shortened grant still in
        // it, capped at its new end) or a later one: feeds.
        assert!(by_rule.may_feed(&grant, 2) && by_rule.may_feed(&grant, 3));
        // Only that rule: the same pattern of another agent, another pattern
        // of the same agent still feed.
        assert!(by_rule.may_feed(&rule("b", "g.test"), 1));
        assert!(by_rule.may_feed(&rule("a", "other.test"), 1));
    }

    #[test]
    fn a_reload_that_keeps_the_rule_withdraws_nothing_so_older_answers_still_feed() {
        let by_rule = ByRule::default();
        // Sets 1..=4 came and went (reloads, other grants) without ending
        // the rule: the state withdrew nothing, so an answer from 1 feeds.
        assert!(by_rule.may_feed(&rule("a", "kept.test"), 1));
    }

    #[test]
    fn a_revoked_pattern_granted_again_feeds_only_from_the_new_grant() {
        let mut by_rule = ByRule::default();
        let now = Instant::now();
        let g = rule("a", "g.test");
        by_rule.withdrawn("a", "g.test", 2, REMEMBER, now); // revoke
        // Granted again at 3 (no withdrawal): answers of the old grant (1)
        // still feed nothing, those of the new one do.
        assert!(!by_rule.may_feed(&g, 1));
        assert!(by_rule.may_feed(&g, 3));
        // Revoked again at 5: the new grant's late answers stop too.
        by_rule.withdrawn("a", "g.test", 5, REMEMBER, now);
        assert!(!by_rule.may_feed(&g, 3) && !by_rule.may_feed(&g, 4));
        assert!(by_rule.may_feed(&g, 5));
        // A record never moves the mark back.
        by_rule.withdrawn("a", "g.test", 4, REMEMBER, now);
        assert!(!by_rule.may_feed(&g, 4));
    }

    #[test]
    fn old_withdrawals_are_forgotten_and_answers_older_than_them_feed_nothing() {
        let mut by_rule = ByRule::default();
        let then = Instant::now();
        by_rule.withdrawn("a", "old.test", 2, REMEMBER, then);
        by_rule.withdrawn("a", "recent.test", 3, REMEMBER, then + REMEMBER);
        assert_eq!(by_rule.withdrawn.len(), 2, "within `remember`: kept");
        let later = then + REMEMBER + Duration::from_secs(1);
        by_rule.withdrawn("b", "new.test", 4, REMEMBER, later);
        // Bounded: the one older than `remember` is gone.
        let mut left: Vec<_> = by_rule.withdrawn.keys().map(|(_, p)| &**p).collect();
        left.sort();
        assert_eq!(left, ["new.test", "recent.test"]);
        // An answer decided before a forgotten withdrawal cannot be told
        // apart any more: whatever its rule, it feeds nothing.
        assert!(!by_rule.may_feed(&rule("a", "old.test"), 1));
        assert!(!by_rule.may_feed(&rule("c", "unrelated.test"), 1));
        // From the forgotten one's set on, only what is remembered counts.
        assert!(by_rule.may_feed(&rule("a", "old.test"), 2));
        assert!(!by_rule.may_feed(&rule("a", "recent.test"), 2));
        assert!(by_rule.may_feed(&rule("a", "recent.test"), 3));
    }
}
