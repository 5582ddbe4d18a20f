//! The answer cache: one entry per (agent, name, type) upstream exchange.
//!
//! TTLs count down: a hit hands out each record's TTL minus the entry's age,
//! and an entry is gone once its shortest TTL has run out. Negative answers are
//! kept for the SOA's negative TTL (RFC 2308).
//!
//! Floods. A cache that evicts an arbitrary key when full lets one agent's
//! flood of one-off names evict every agent's hot entries. So:
//! - **Each agent has a partition of its own** (keyed by its policy's
//!   [`PolicyId`], stable for a name while the process runs, with no cap on
//!   the number of agents), so whatever an agent floods with, unique names
//!   or a few repeated ones, it can only evict its own entries. `max_entries`
//!   is split evenly among the agents that have cached something: a
//!   partition is made on an agent's first answer and the others shrink to
//!   the new share then (at most once per agent). An even
//!   split rather than one pool with quotas: in a shared pool an agent's
//!   inserts still pick victims among everyone's entries, and weights would
//!   need a policy field nobody has asked for.
//! - **Within a partition, eviction is scan resistant**: quick_cache's
//!   S3-FIFO-like policy (a CLOCK-Pro variant) admits new entries to a small
//!   cold queue and drops them from there unless they are asked for again, so
//!   a scan of one-off names churns the cold queue and leaves hot entries be.
//! - **Expired entries go first**: a lookup that meets one removes it, and a
//!   nearly full partition drops all its expired entries (at most once per
//!   [`SWEEP_EVERY`]) before the S3-FIFO has to pick a live victim.
//!   quick_cache evicts per shard, so in a small partition one shard can
//!   fill, and pick a live victim, before the whole is nearly full.
//!
//! A side effect: agents cannot learn from hit timing what another asked.
//!
//! An entry also holds the answer the full path last sent from it, ready to
//! send again ([`crate::serve::fast`]): it lives and goes with the entry.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};

use crate::policy::name::{PolicyId, PolicyIdMap, QueryKey};
use crate::policy::zones::Step;
use crate::serve::fast::Ready;
use crate::sync::lock;

/// How often a full partition may be swept for expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// An entry's key: the question's [`QueryKey`] and type.
#[derive(Clone, PartialEq, Eq)]
struct Key {
    name: QueryKey,
    qtype: RecordType,
}

/// A lookup's key, borrowed from the question: no copy of the name per hit.
struct Asked<'a> {
    name: &'a str,
    qtype: RecordType,
}

// Both hash as (name, type), so a borrowed key finds an owned one.
impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.name.as_str().hash(h);
        self.qtype.hash(h);
    }
}

impl Hash for Asked<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.name.hash(h);
        self.qtype.hash(h);
    }
}

impl quick_cache::Equivalent<Key> for Asked<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.qtype == key.qtype && self.name == key.name.as_str()
    }
}

type Partitions = PolicyIdMap<Arc<Partition>>;

/// Cache policy from the config.
#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    /// For all agents together; each gets an even share.
    pub max_entries: usize,
    /// Floor and ceiling applied to how long an entry is kept.
    pub min_ttl: u32,
    pub max_ttl: u32,
}

pub struct Cache {
    /// One per policy, made on its first insert. Read on every lookup, written
    /// once per agent: a snapshot swapped whole, so reads take no lock.
    parts: ArcSwap<Partitions>,
    /// Serializes making partitions and resizing them.
    made: Mutex<()>,
    epoch: Instant,
    limits: CacheLimits,
}

struct Partition {
    entries: quick_cache::sync::Cache<Key, Arc<Entry>>,
    /// Seconds after `epoch` before which this partition is not swept again.
    next_sweep: AtomicU64,
}

/// A step's records are kept as wire bytes, not hickory `Record`s: a
/// one-address answer takes about 50 bytes so, against 272 for the `Record`
/// alone, and the cache is most of allowdns's memory under a flood of
/// allowed names (docs/performance.md). Decoded again only on a full-path
/// hit; the fast path sends its own ready bytes.
struct Entry {
    rcode: ResponseCode,
    /// How many of `records` are answers; the rest are authority.
    answers: u16,
    records: Box<[u8]>,
    stored: Instant,
    /// Seconds the entry lives, already clamped.
    lifetime: u32,
    /// The reply last sent from it, kept ready to send.
    ready: ArcSwapOption<Ready>,
}

impl Entry {
    /// `None` if a record does not encode (it is then not cached).
    fn new(step: &Step, stored: Instant, lifetime: u32) -> Option<Entry> {
        let mut records = Vec::new();
        let mut encoder = BinEncoder::new(&mut records);
        for r in step.answers.iter().chain(&step.authority) {
            r.emit(&mut encoder).ok()?;
        }
        Some(Entry {
            rcode: step.rcode,
            answers: u16::try_from(step.answers.len()).ok()?,
            records: records.into_boxed_slice(),
            stored,
            lifetime,
            ready: ArcSwapOption::empty(),
        })
    }

    /// The step back, each TTL less `age` seconds (and at least 1).
    fn step(&self, age: u32) -> Option<Step> {
        let read = |decoder: &mut BinDecoder| -> Option<Record> {
            let mut r = Record::read(decoder).ok()?;
            r.ttl = r.ttl.saturating_sub(age).max(1);
            Some(r)
        };
        let mut decoder = BinDecoder::new(&self.records);
        let answers = (0..self.answers)
            .map(|_| read(&mut decoder))
            .collect::<Option<Vec<_>>>()?;
        let mut authority = Vec::new();
        while !decoder.is_empty() {
            authority.push(read(&mut decoder)?);
        }
        Some(Step {
            rcode: self.rcode,
            answers,
            authority,
        })
    }

    fn live_at(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored).as_secs() < u64::from(self.lifetime)
    }
}

impl Cache {
    pub fn new(limits: CacheLimits) -> Self {
        Self {
            parts: ArcSwap::default(),
            made: Mutex::new(()),
            epoch: Instant::now(),
            limits,
        }
    }

    fn partition(&self, agent: PolicyId) -> Option<Arc<Partition>> {
        self.parts.load().get(&agent).cloned()
    }

    /// The agent's partition, made (and the others shrunk) on first use.
    fn partition_or_make(&self, agent: PolicyId) -> Arc<Partition> {
        if let Some(part) = self.partition(agent) {
            return part;
        }
        let _made = lock(&self.made);
        let parts = self.parts.load_full();
        if let Some(part) = parts.get(&agent) {
            return part.clone();
        }
        let share = (self.limits.max_entries / (parts.len() + 1)).max(1);
        for other in parts.values() {
            other.entries.set_capacity(share as u64);
        }
        let part = Arc::new(Partition {
            entries: quick_cache::sync::Cache::new(share),
            next_sweep: AtomicU64::new(0),
        });
        let mut grown = Partitions::clone(&parts);
        grown.insert(agent, part.clone());
        self.parts.store(Arc::new(grown));
        part
    }

    /// Drops the partitions of policies no longer loaded (after a reload) and
    /// gives their room to the others: ids have no cap, so partitions of
    /// agents that went must not pile up and shrink everyone's share.
    pub fn retain(&self, keep: impl Fn(PolicyId) -> bool) {
        let _made = lock(&self.made);
        let parts = self.parts.load_full();
        let kept: Partitions = parts
            .iter()
            .filter(|(id, _)| keep(**id))
            .map(|(id, part)| (*id, part.clone()))
            .collect();
        if kept.len() == parts.len() {
            return;
        }
        let share = (self.limits.max_entries / kept.len().max(1)).max(1);
        for part in kept.values() {
            part.entries.set_capacity(share as u64);
        }
        self.parts.store(Arc::new(kept));
    }

    /// A fresh copy of the agent's cached step with TTLs counted down, if still live.
    pub fn get(&self, agent: PolicyId, name: &QueryKey, qtype: RecordType) -> Option<Step> {
        let parts = self.parts.load();
        let part = parts.get(&agent)?;
        let key = Asked {
            name: name.as_str(),
            qtype,
        };
        let entry = part.entries.get(&key)?;
        let age = entry.stored.elapsed().as_secs();
        if age >= u64::from(entry.lifetime) {
            // Expired: make room now rather than let it wait for eviction.
            part.entries.remove_if(&key, |e| Arc::ptr_eq(e, &entry));
            return None;
        }
        entry.step(age as u32)
    }

    /// The answer kept ready for this question, while its entry lives.
    pub fn ready(&self, agent: PolicyId, name: &QueryKey, qtype: RecordType) -> Option<Arc<Ready>> {
        let parts = self.parts.load();
        let key = Asked {
            name: name.as_str(),
            qtype,
        };
        let entry = parts.get(&agent)?.entries.get(&key)?;
        if !entry.live_at(Instant::now()) {
            return None;
        }
        entry.ready.load_full()
    }

    /// Keeps `ready` with the live entry for this question, if there is one.
    pub fn keep_ready(&self, agent: PolicyId, name: &QueryKey, qtype: RecordType, ready: Ready) {
        let parts = self.parts.load();
        let key = Asked {
            name: name.as_str(),
            qtype,
        };
        if let Some(entry) = parts.get(&agent).and_then(|p| p.entries.peek(&key)) {
            entry.ready.store(Some(Arc::new(ready)));
        }
    }

    /// Stores a step in the agent's partition for at least `floor` seconds
    /// (within the configured ceiling); SERVFAIL and friends are never cached.
    pub fn insert(
        &self,
        agent: PolicyId,
        name: &QueryKey,
        qtype: RecordType,
        step: &Step,
        floor: u32,
    ) {
        let Some(lifetime) = self.lifetime(step, floor) else {
            return;
        };
        let now = Instant::now();
        let Some(entry) = Entry::new(step, now, lifetime) else {
            return;
        };
        let part = self.partition_or_make(agent);
        part.sweep_if_full(self.epoch, now);
        part.entries.insert(
            Key {
                name: name.clone(),
                qtype,
            },
            Arc::new(entry),
        );
    }

    fn lifetime(&self, step: &Step, floor: u32) -> Option<u32> {
        let ttl = match step.rcode {
            ResponseCode::NoError if !step.answers.is_empty() => {
                step.answers.iter().map(|r| r.ttl).min()?
            }
            ResponseCode::NoError | ResponseCode::NXDomain => step
                .authority
                .iter()
                .find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                    _ => None,
                })
                .unwrap_or(0),
            _ => return None,
        };
        let ttl = ttl
            .max(floor)
            .clamp(self.limits.min_ttl, self.limits.max_ttl);
        (ttl > 0).then_some(ttl)
    }
}

impl Partition {
    /// Drops every expired entry once the partition is nearly full, so they
    /// are the first to make room; one sweep per [`SWEEP_EVERY`] at most.
    fn sweep_if_full(&self, epoch: Instant, now: Instant) {
        let capacity = self.entries.capacity();
        if self.entries.weight() < capacity - capacity / 8 {
            return;
        }
        let at = now.saturating_duration_since(epoch).as_secs();
        let next = self.next_sweep.load(Relaxed);
        if at < next
            || self
                .next_sweep
                .compare_exchange(next, at + SWEEP_EVERY.as_secs(), Relaxed, Relaxed)
                .is_err()
        {
            return;
        }
        self.entries.retain(|_, e| e.live_at(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, Record};

    fn step(ttl: u32) -> Step {
        Step {
            rcode: ResponseCode::NoError,
            answers: vec![Record::from_rdata(
                Name::from_ascii("x.test.").unwrap(),
                ttl,
                RData::A(A::new(192, 0, 2, 1)),
            )],
            authority: Vec::new(),
        }
    }

    fn name(n: impl std::fmt::Display) -> QueryKey {
        QueryKey::of(&Name::from_ascii(format!("{n}.test.")).unwrap()).unwrap()
    }

    fn agent(n: u16) -> PolicyId {
        PolicyId(u64::from(n))
    }

    fn key(name: QueryKey) -> Key {
        Key {
            name,
            qtype: RecordType::A,
        }
    }

    fn cache(max_entries: usize) -> Cache {
        Cache::new(CacheLimits {
            max_entries,
            min_ttl: 0,
            max_ttl: 86400,
        })
    }

    /// Caches `{prefix}0` .. `{prefix}{n-1}` for agent 1, TTL 300.
    fn fill(cache: &Cache, prefix: &str, n: usize) {
        for i in 0..n {
            let key = name(format!("{prefix}{i}"));
            cache.insert(agent(1), &key, RecordType::A, &step(300), 0);
        }
    }

    /// How many of what `fill(prefix, n)` cached agent 1 still gets.
    fn held(cache: &Cache, prefix: &str, n: usize) -> usize {
        (0..n)
            .filter(|i| {
                let key = name(format!("{prefix}{i}"));
                cache.get(agent(1), &key, RecordType::A).is_some()
            })
            .count()
    }

    #[test]
    fn a_unique_name_flood_keeps_hot_entries() {
        let cache = cache(1000);
        fill(&cache, "hot", 50);
        for _ in 0..3 {
            assert_eq!(held(&cache, "hot", 50), 50);
        }
        fill(&cache, "flood", 100_000);
        assert_eq!(held(&cache, "hot", 50), 50, "hot entries evicted by a scan");
    }

    #[test]
    fn an_agent_cannot_evict_another() {
        let cache = cache(1000);
        cache.insert(agent(1), &name("a"), RecordType::A, &step(300), 0);
        // Agent 2 floods with unique names, then with a few repeated ones.
        for i in 0..20_000 {
            cache.insert(agent(2), &name(i), RecordType::A, &step(300), 0);
        }
        for _ in 0..100 {
            for i in 0..2000 {
                let n = name(format!("r{i}"));
                if cache.get(agent(2), &n, RecordType::A).is_none() {
                    cache.insert(agent(2), &n, RecordType::A, &step(300), 0);
                }
            }
        }
        assert!(cache.get(agent(1), &name("a"), RecordType::A).is_some());
        // Agent 1's entry is not visible to agent 2.
        assert!(cache.get(agent(2), &name("a"), RecordType::A).is_none());
    }

    #[test]
    fn agents_past_the_metrics_table_still_have_partitions_of_their_own() {
        // 300 agents, as a loader would see them; #299 and #300 share the
        // metrics table's last slot, but not a partition.
        let cache = cache(30_000);
        let ids: Vec<PolicyId> = (1..=300)
            .map(|i| PolicyId::of(&format!("agent-{i}")))
            .collect();
        for id in &ids {
            cache.insert(*id, &name("warm"), RecordType::A, &step(300), 0);
        }
        let (a299, a300) = (ids[298], ids[299]);
        cache.insert(a299, &name("hot"), RecordType::A, &step(300), 0);
        for i in 0..20_000 {
            cache.insert(a300, &name(i), RecordType::A, &step(300), 0);
        }
        assert!(cache.get(a299, &name("hot"), RecordType::A).is_some());
        assert!(cache.get(a300, &name("hot"), RecordType::A).is_none());
        assert_eq!(cache.parts.load().len(), 300);
    }

    #[test]
    fn partitions_of_agents_that_went_are_dropped_and_their_room_shared() {
        let cache = cache(1000);
        for n in 1..=4u16 {
            cache.insert(agent(n), &name("x"), RecordType::A, &step(300), 0);
        }
        let capacity = || cache.partition(agent(1)).unwrap().entries.capacity();
        let quarter = capacity();
        cache.retain(|id| id == agent(1) || id == agent(2));
        assert!(cache.partition(agent(3)).is_none());
        assert!(
            capacity() >= 2 * quarter - 8,
            "{quarter} then {}",
            capacity()
        );
        assert!(cache.get(agent(2), &name("x"), RecordType::A).is_some());
    }

    #[test]
    fn shares_are_even_and_bounded() {
        let cache = cache(1000);
        for n in 1..=4u16 {
            for i in 0..5000 {
                cache.insert(agent(n), &name(i), RecordType::A, &step(300), 0);
            }
        }
        let total: usize = cache.parts.load().values().map(|p| p.entries.len()).sum();
        assert!(total <= 1000 + 64, "{total} entries for a budget of 1000");
        for n in 1..=4u16 {
            let len = cache.partition(agent(n)).unwrap().entries.len();
            assert!(len > 200, "agent {n} holds {len}");
        }
    }

    #[test]
    fn expired_entries_are_dropped_before_live_ones() {
        // quick_cache evicts per shard; at this size no shard fills before
        // the partition as a whole is nearly full (at 100, one now and then
        // did, and evicted live entries before the sweep began).
        const CAPACITY: usize = 10_000;
        let cache = cache(CAPACITY);
        let part = cache.partition_or_make(agent(1));
        let old = Instant::now() - Duration::from_secs(10);
        for i in 0..CAPACITY * 9 / 10 {
            part.entries.insert(
                key(name(format!("old{i}"))),
                Arc::new(Entry::new(&step(5), old, 5).unwrap()),
            );
            // Once hot, so only their expiry marks them as victims.
            let old = key(name(format!("old{i}")));
            part.entries.get(&old);
            part.entries.get(&old);
        }
        let live = CAPACITY / 10;
        fill(&cache, "live", live);
        // Past capacity unless the expired go.
        fill(&cache, "new", CAPACITY / 20);
        assert_eq!(
            held(&cache, "live", live),
            live,
            "a live entry was evicted while expired ones were kept"
        );
    }

    #[test]
    fn a_floor_holds_ttl_0_answers() {
        let cache = cache(100);
        cache.insert(agent(1), &name("zero"), RecordType::A, &step(0), 0);
        assert!(cache.get(agent(1), &name("zero"), RecordType::A).is_none());
        cache.insert(agent(1), &name("zero"), RecordType::A, &step(0), 30);
        assert!(cache.get(agent(1), &name("zero"), RecordType::A).is_some());
    }

    #[test]
    fn ttls_count_down_and_entries_expire() {
        let cache = cache(100);
        let part = cache.partition_or_make(agent(1));
        part.entries.insert(
            key(name("aged")),
            Arc::new(Entry::new(&step(60), Instant::now() - Duration::from_secs(20), 60).unwrap()),
        );
        let hit = cache.get(agent(1), &name("aged"), RecordType::A).unwrap();
        assert!(
            (39..=40).contains(&hit.answers[0].ttl),
            "{}",
            hit.answers[0].ttl
        );
        part.entries.insert(
            key(name("gone")),
            Arc::new(Entry::new(&step(60), Instant::now() - Duration::from_secs(61), 60).unwrap()),
        );
        assert!(cache.get(agent(1), &name("gone"), RecordType::A).is_none());
        assert_eq!(part.entries.len(), 1);
    }

    #[test]
    fn entries_give_back_every_record_as_stored() {
        use hickory_proto::rr::rdata::{AAAA, CNAME, MX, SOA, TXT};
        let n = |s: &str| Name::from_ascii(s).unwrap();
        let rec = |owner: &str, ttl, data| Record::from_rdata(n(owner), ttl, data);
        let soa = SOA::new(n("ns.test."), n("h.test."), 7, 3600, 600, 86400, 300);
        let steps = [
            Step {
                rcode: ResponseCode::NoError,
                answers: vec![
                    rec("WWW.Test.", 300, RData::CNAME(CNAME(n("Edge.CDN.test.")))),
                    rec("edge.cdn.test.", 60, RData::A(A::new(192, 0, 2, 1))),
                    rec(
                        "edge.cdn.test.",
                        60,
                        RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                    ),
                    rec(
                        "edge.cdn.test.",
                        60,
                        RData::TXT(TXT::new(vec!["v=1".into(), "x".repeat(255)])),
                    ),
                    rec(
                        "edge.cdn.test.",
                        60,
                        RData::MX(MX::new(10, n("MAIL.cdn.test."))),
                    ),
                ],
                authority: Vec::new(),
            },
            Step {
                rcode: ResponseCode::NXDomain,
                answers: Vec::new(),
                authority: vec![rec("test.", 300, RData::SOA(soa))],
            },
        ];
        for step in steps {
            let entry = Entry::new(&step, Instant::now(), 60).unwrap();
            let back = entry.step(0).unwrap();
            assert_eq!(back, step);
            // Names compare without case; the spelling must come back too.
            let spelled = |s: &Step| -> Vec<String> {
                s.answers
                    .iter()
                    .chain(&s.authority)
                    .map(|r| format!("{} {}", r.name, r.data))
                    .collect()
            };
            assert_eq!(spelled(&back), spelled(&step));
            let aged = entry.step(100).unwrap();
            let ttls: Vec<u32> = aged
                .answers
                .iter()
                .chain(&aged.authority)
                .map(|r| r.ttl)
                .collect();
            let want: Vec<u32> = step
                .answers
                .iter()
                .chain(&step.authority)
                .map(|r| r.ttl.saturating_sub(100).max(1))
                .collect();
            assert_eq!(ttls, want);
        }
    }
}
