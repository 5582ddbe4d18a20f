//! What the report counts, in one pass over the log, each map capped so a
//! flood of unique names, domains or destinations cannot grow memory
//! without bound: past its cap a map counts instead of listing.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{
    MAX_BUCKETS, MAX_DENIED_DOMAINS, MAX_DESTINATIONS, MAX_EVENTS, MAX_NAMES, MAX_NAMES_PER_DOMAIN,
    MAX_TEXT,
};
use crate::observe::audit::schema::{Decision, EgressDenied, Event, OwnerFields, QueryRecord};
use crate::policy;

/// Series of the timeline, by index.
pub(super) const ALLOW: usize = 0;
pub(super) const DENY: usize = 1;
pub(super) const WOULD_DENY: usize = 2;
pub(super) const REFUSED: usize = 3;
pub(super) const BLOCKED: usize = 4;
pub(super) const LOGGED: usize = 5;
pub(super) const SERIES: usize = 6;

pub(super) fn series(decision: Decision) -> usize {
    match decision {
        Decision::Allow => ALLOW,
        Decision::Deny => DENY,
        Decision::WouldDeny => WOULD_DENY,
        Decision::Refused => REFUSED,
    }
}

/// A map that stops taking new keys at `cap`; what a new key would have
/// counted goes to `more`.
#[derive(Debug)]
pub(super) struct Capped<K, V> {
    pub(super) map: HashMap<K, V>,
    cap: usize,
    /// Records of keys that did not fit.
    pub(super) more: u64,
}

impl<K: Hash + Eq, V> Capped<K, V> {
    pub(super) fn new(cap: usize) -> Self {
        Capped {
            map: HashMap::new(),
            cap,
            more: 0,
        }
    }

    /// The value for `key`, made if there is room; `None` (and counted)
    /// when the map is full.
    pub(super) fn slot<Q>(&mut self, key: &Q, make: impl FnOnce() -> V) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if self.map.contains_key(key) {
            return self.map.get_mut(key);
        }
        if self.map.len() >= self.cap {
            self.more += 1;
            return None;
        }
        Some(self.map.entry(key.to_owned()).or_insert_with(make))
    }

    /// Entries, largest `weight` first, ties by key for a stable page.
    pub(super) fn sorted_by(&self, weight: impl Fn(&V) -> u64) -> Vec<(&K, &V)>
    where
        K: Ord,
    {
        let mut all: Vec<(&K, &V)> = self.map.iter().collect();
        all.sort_by(|a, b| weight(b.1).cmp(&weight(a.1)).then(a.0.cmp(b.0)));
        all
    }
}

/// How often, and when first and last.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seen {
    pub(super) count: u64,
    pub(super) first: SystemTime,
    pub(super) last: SystemTime,
}

impl Seen {
    pub(super) fn new(ts: SystemTime) -> Seen {
        Seen {
            count: 0,
            first: ts,
            last: ts,
        }
    }

    pub(super) fn add(&mut self, ts: SystemTime) {
        self.count += 1;
        self.first = self.first.min(ts);
        self.last = self.last.max(ts);
    }
}

/// Lookups per time bucket. Buckets widen (each width a multiple of the
/// one before) whenever the log spans more than [`MAX_BUCKETS`] of them,
/// so the chart has at most that many bars whatever the span.
#[derive(Debug, Default)]
pub(super) struct Timeline {
    step: usize,
    pub(super) buckets: BTreeMap<u64, [u64; SERIES]>,
}

/// Bucket widths in seconds, each a multiple of the one before.
const WIDTHS: [u64; 18] = [
    1,
    5,
    10,
    30,
    60,
    300,
    600,
    1800,
    3600,
    10_800,
    21_600,
    43_200,
    86_400,
    604_800,
    2_419_200,
    29_030_400,
    290_304_000,
    2_903_040_000,
];

impl Timeline {
    pub(super) fn width(&self) -> u64 {
        WIDTHS[self.step]
    }

    pub(super) fn add(&mut self, ts: SystemTime, series: usize) {
        let secs = epoch_secs(ts);
        self.buckets.entry(secs / self.width()).or_default()[series] += 1;
        while self.spanned() > MAX_BUCKETS as u64 && self.step + 1 < WIDTHS.len() {
            let factor = WIDTHS[self.step + 1] / WIDTHS[self.step];
            self.step += 1;
            let old = std::mem::take(&mut self.buckets);
            for (index, counts) in old {
                let merged = self.buckets.entry(index / factor).or_default();
                for (m, c) in merged.iter_mut().zip(counts) {
                    *m += c;
                }
            }
        }
    }

    /// Buckets from the first to the last, empty ones included.
    pub(super) fn spanned(&self) -> u64 {
        match (
            self.buckets.first_key_value(),
            self.buckets.last_key_value(),
        ) {
            (Some((first, _)), Some((last, _))) => last - first + 1,
            _ => 0,
        }
    }
}

pub(super) fn epoch_secs(ts: SystemTime) -> u64 {
    ts.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One looked-up name.
#[derive(Debug)]
pub(super) struct NameStat {
    pub(super) seen: Seen,
    pub(super) decisions: [u64; 4],
    /// The first rule that matched it.
    pub(super) rule: Option<String>,
}

/// One rule that matched.
#[derive(Debug)]
pub(super) struct RuleStat {
    pub(super) seen: Seen,
    /// The first few names it matched.
    pub(super) names: Vec<String>,
}

/// Rule examples kept per rule.
const RULE_EXAMPLES: usize = 3;

/// Denied (and would-deny) lookups under one registrable domain.
#[derive(Debug)]
pub(super) struct DomainStat {
    pub(super) seen: Seen,
    pub(super) denied: u64,
    pub(super) would_deny: u64,
    pub(super) names: Capped<String, DeniedName>,
    /// The first process named as asking, if attribution was on.
    pub(super) process: Option<String>,
}

#[derive(Debug)]
pub(super) struct DeniedName {
    pub(super) seen: Seen,
    pub(super) denied: u64,
    pub(super) would_deny: u64,
}

/// One kind of connection outside the allowlist.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct EgressKey {
    pub(super) agent: Option<String>,
    pub(super) action: String,
    pub(super) addr: String,
    pub(super) port: Option<u16>,
    pub(super) proto: String,
}

#[derive(Debug)]
pub(super) struct EgressStat {
    pub(super) seen: Seen,
    pub(super) resolved: Option<String>,
    pub(super) reason: Option<String>,
    pub(super) rule: Option<String>,
    pub(super) process: Option<String>,
}

/// A point on the timeline: a grant, reload, expiry or loss.
#[derive(Debug)]
pub(super) struct Marker {
    pub(super) ts: SystemTime,
    /// `reload`, `grant`, `expiry`, `loss`: the CSS class and the legend.
    pub(super) kind: &'static str,
    pub(super) event: &'static str,
    pub(super) text: String,
}

/// Everything the page shows, counted from the records that pass the
/// `--agent` and `--since` filters.
#[derive(Debug)]
pub(super) struct Tally {
    pub(super) records: u64,
    pub(super) decisions: [u64; 4],
    pub(super) span: Option<(SystemTime, SystemTime)>,
    pub(super) timeline: Timeline,
    pub(super) agents: Capped<String, [u64; 4]>,
    pub(super) names: Capped<String, NameStat>,
    pub(super) rules: Capped<String, RuleStat>,
    pub(super) denied: Capped<String, DomainStat>,
    pub(super) egress: Capped<EgressKey, EgressStat>,
    pub(super) egress_total: [u64; 2],
    /// (mark, name) → lookups marked.
    pub(super) exfil: Capped<(String, String), Seen>,
    pub(super) exfil_total: u64,
    /// (name, address) → answers stripped of it.
    pub(super) stripped: Capped<(String, IpAddr), Seen>,
    pub(super) stripped_total: u64,
    pub(super) markers: Vec<Marker>,
    pub(super) more_markers: u64,
    /// Records the writer reported lost (`audit_records_lost`).
    pub(super) lost: u64,
    /// Blocked-connection reports lost (`egress_records_lost`).
    pub(super) egress_lost: u64,
    /// Lines left out by `--since` and `--agent`.
    pub(super) before_since: u64,
    pub(super) other_agents: u64,
    /// Events this version does not know, from a newer writer.
    pub(super) unknown_events: u64,
    /// Under `--since`, names before it too: `suggest` reads the whole log.
    pub(super) all_names: Capped<String, ()>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            records: 0,
            decisions: [0; 4],
            span: None,
            timeline: Timeline::default(),
            agents: Capped::new(super::MAX_AGENTS),
            names: Capped::new(MAX_NAMES),
            rules: Capped::new(MAX_NAMES),
            denied: Capped::new(MAX_DENIED_DOMAINS),
            egress: Capped::new(MAX_DESTINATIONS),
            egress_total: [0; 2],
            exfil: Capped::new(MAX_DESTINATIONS),
            exfil_total: 0,
            stripped: Capped::new(MAX_DESTINATIONS),
            stripped_total: 0,
            markers: Vec::new(),
            more_markers: 0,
            lost: 0,
            egress_lost: 0,
            before_since: 0,
            other_agents: 0,
            unknown_events: 0,
            all_names: Capped::new(MAX_NAMES),
        }
    }
}

/// `text` cut to [`MAX_TEXT`] bytes at a character boundary.
pub(super) fn clip(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_string();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Who asked, as the attribution fields name it.
fn process(owner: &OwnerFields) -> Option<String> {
    let pid = owner.pid.map(|p| format!("PID {p}: ")).unwrap_or_default();
    if let Some(cmdline) = owner.cmdline.as_deref().filter(|c| !c.is_empty()) {
        return Some(clip(&format!("{pid}{cmdline}")));
    }
    if let Some(comm) = owner.comm.as_deref() {
        return Some(clip(&format!("{pid}{comm}")));
    }
    owner
        .owner_unknown
        .as_deref()
        .map(|why| clip(&format!("unknown ({why})")))
}

impl Tally {
    fn widen(&mut self, ts: SystemTime) {
        self.span = Some(match self.span {
            None => (ts, ts),
            Some((first, last)) => (first.min(ts), last.max(ts)),
        });
    }

    pub(super) fn record(&mut self, r: &QueryRecord, ts: SystemTime) {
        let series = series(r.decision);
        self.records += 1;
        self.decisions[series] += 1;
        self.widen(ts);
        self.timeline.add(ts, series);
        if let Some(agent) = &r.agent
            && let Some(counts) = self.agents.slot(agent.as_str(), || [0; 4])
        {
            counts[series] += 1;
        }
        let Some(qname) = r.qname.as_deref() else {
            return;
        };
        if let Some(name) = self.names.slot(qname, || NameStat {
            seen: Seen::new(ts),
            decisions: [0; 4],
            rule: r.rule.clone(),
        }) {
            name.seen.add(ts);
            name.decisions[series] += 1;
        }
        if let Some(rule) = r.rule.as_deref()
            && let Some(stat) = self.rules.slot(rule, || RuleStat {
                seen: Seen::new(ts),
                names: Vec::new(),
            })
        {
            stat.seen.add(ts);
            if stat.names.len() < RULE_EXAMPLES && !stat.names.iter().any(|n| n == qname) {
                stat.names.push(qname.to_string());
            }
        }
        if series == DENY || series == WOULD_DENY {
            self.denied_lookup(r, qname, ts, series);
        }
        if let Some(mark) = &r.exfil {
            self.exfil_total += 1;
            if let Some(seen) = self
                .exfil
                .slot(&(mark.clone(), qname.to_string()), || Seen::new(ts))
            {
                seen.add(ts);
            }
        }
        for addr in &r.stripped {
            self.stripped_total += 1;
            if let Some(seen) = self
                .stripped
                .slot(&(qname.to_string(), *addr), || Seen::new(ts))
            {
                seen.add(ts);
            }
        }
    }

    fn denied_lookup(&mut self, r: &QueryRecord, qname: &str, ts: SystemTime, series: usize) {
        let domain = policy::registrable_domain(qname).unwrap_or(qname);
        let Some(stat) = self.denied.slot(domain, || DomainStat {
            seen: Seen::new(ts),
            denied: 0,
            would_deny: 0,
            names: Capped::new(MAX_NAMES_PER_DOMAIN),
            process: None,
        }) else {
            return;
        };
        stat.seen.add(ts);
        let denied = (series == DENY) as u64;
        let would = (series == WOULD_DENY) as u64;
        stat.denied += denied;
        stat.would_deny += would;
        if stat.process.is_none() {
            stat.process = process(&r.owner);
        }
        if let Some(name) = stat.names.slot(qname, || DeniedName {
            seen: Seen::new(ts),
            denied: 0,
            would_deny: 0,
        }) {
            name.seen.add(ts);
            name.denied += denied;
            name.would_deny += would;
        }
    }

    pub(super) fn egress(&mut self, e: &EgressDenied, ts: SystemTime) {
        let series = if e.action == "logged" {
            LOGGED
        } else {
            BLOCKED
        };
        self.egress_total[series - BLOCKED] += 1;
        self.widen(ts);
        self.timeline.add(ts, series);
        let key = EgressKey {
            agent: e.agent.clone(),
            action: e.action.clone(),
            addr: e.addr.clone(),
            port: e.port,
            proto: e.proto.clone(),
        };
        if let Some(stat) = self.egress.slot(&key, || EgressStat {
            seen: Seen::new(ts),
            resolved: e.resolved.clone(),
            reason: e.reason.clone(),
            rule: e.rule.clone(),
            process: None,
        }) {
            stat.seen.add(ts);
            if stat.process.is_none() {
                stat.process = process(&e.owner);
            }
        }
    }

    /// An event line other than `egress_denied`.
    pub(super) fn event(&mut self, event: &Event, ts: SystemTime) {
        let (kind, name, text) = match event {
            Event::AuditRecordsLost(lost) => {
                self.lost += lost.count;
                (
                    "loss",
                    "audit_records_lost",
                    format!(
                        "{} audit records lost{}",
                        lost.count,
                        lost.cause
                            .as_deref()
                            .map(|c| format!(" ({c})"))
                            .unwrap_or_default()
                    ),
                )
            }
            Event::EgressRecordsLost(lost) => {
                self.egress_lost += lost.count;
                (
                    "loss",
                    "egress_records_lost",
                    format!("{} blocked-connection reports lost", lost.count),
                )
            }
            Event::Reload(r) => (
                "reload",
                "reload",
                format!("reload: {} ({} zones)", r.changes.join("; "), r.zones),
            ),
            Event::ReloadFailed(r) => (
                "reload",
                "reload_failed",
                format!("reload refused: {}", r.errors.join("; ")),
            ),
            Event::Grant(g)
            | Event::GrantExpired(g)
            | Event::GrantRevoked(g)
            | Event::GrantRefused(g)
            | Event::GrantDropped(g) => {
                let (kind, name, what) = match event {
                    Event::Grant(_) => ("grant", "grant", "granted"),
                    Event::GrantExpired(_) => ("expiry", "grant_expired", "grant expired"),
                    Event::GrantRevoked(_) => ("expiry", "grant_revoked", "grant revoked"),
                    Event::GrantRefused(_) => ("expiry", "grant_refused", "grant refused"),
                    _ => ("expiry", "grant_dropped", "grant dropped"),
                };
                let g = &g.terms;
                let uid = g.uid.map(|u| format!(", uid {u}")).unwrap_or_default();
                (
                    kind,
                    name,
                    format!(
                        "{what}: agent {} may resolve {} until {} ({}{uid})",
                        g.agent, g.pattern, g.expires, g.reason
                    ),
                )
            }
            Event::FenceWithdrawn(w) => (
                "expiry",
                "fence_withdrawn",
                format!(
                    "fence: {} withdrawn from {} ({}{}): {}",
                    w.addr,
                    w.target,
                    w.agent.as_deref().unwrap_or("no agent"),
                    w.name
                        .as_deref()
                        .map(|n| format!(", {n}"))
                        .unwrap_or_default(),
                    w.reason
                ),
            ),
            Event::EntryExpired(e) => (
                "expiry",
                "entry_expired",
                format!(
                    "policy entry expired: agent {}, {} in {}",
                    e.agent, e.entry, e.file
                ),
            ),
            Event::EgressDenied(e) => return self.egress(e, ts),
        };
        self.widen(ts);
        if self.markers.len() < MAX_EVENTS {
            self.markers.push(Marker {
                ts,
                kind,
                event: name,
                text: clip(&text),
            });
        } else {
            self.more_markers += 1;
        }
    }
}

/// The agent an event is about, where it names one.
pub(super) fn event_agent(event: &Event) -> Option<&str> {
    match event {
        Event::Grant(g)
        | Event::GrantExpired(g)
        | Event::GrantRevoked(g)
        | Event::GrantRefused(g)
        | Event::GrantDropped(g) => Some(&g.terms.agent),
        Event::EntryExpired(e) => Some(&e.agent),
        Event::EgressDenied(e) => Some(e.agent.as_deref().unwrap_or("")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_timeline_widens_to_at_most_max_buckets() {
        let start = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let mut timeline = Timeline::default();
        // A second apart for a minute: one-second bars.
        for s in 0..60 {
            timeline.add(start + Duration::from_secs(s), ALLOW);
        }
        assert_eq!((timeline.width(), timeline.spanned()), (1, 60));
        // Then a year: the bars widen, nothing is lost.
        for day in 0..365 {
            timeline.add(start + Duration::from_secs(day * 86_400), DENY);
        }
        assert!(
            timeline.spanned() <= MAX_BUCKETS as u64,
            "{}",
            timeline.spanned()
        );
        let counted: u64 = timeline.buckets.values().map(|c| c[ALLOW] + c[DENY]).sum();
        assert_eq!(counted, 60 + 365);
        // A stray record centuries away still leaves a bounded chart.
        timeline.add(start + Duration::from_secs(200 * 365 * 86_400), DENY);
        assert!(timeline.spanned() <= MAX_BUCKETS as u64);
    }

    #[test]
    fn a_full_map_counts_what_does_not_fit() {
        let mut map: Capped<String, u64> = Capped::new(2);
        for name in ["a", "b", "c", "a", "d"] {
            if let Some(n) = map.slot(name, || 0) {
                *n += 1;
            }
        }
        assert_eq!(map.map.len(), 2);
        assert_eq!((map.map["a"], map.map["b"], map.more), (2, 1, 2));
    }
}
