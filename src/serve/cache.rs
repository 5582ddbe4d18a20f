//! The answer cache: one entry per (agent, name, type) upstream exchange.
//!
//! TTLs count down: a hit hands out each record's TTL minus the entry's age,
//! and an entry is gone once its shortest TTL has run out. Negative answers are
//! kept for the SOA's negative TTL (RFC 2308).
//!
//! Floods. When full, the cache used to evict an arbitrary key, so one agent's
//! flood of one-off names evicted every agent's hot entries. Now:
//! - **Each agent has a partition of its own** (keyed by its metrics slot,
//!   stable for a name while the process runs), so whatever an agent floods
//!   with, unique names or a few repeated ones, it can only evict its own
//!   entries. `max_entries` is split evenly among the agents that have cached
//!   something: a partition is made on an agent's first answer and the others
//!   shrink to the new share then (at most once per agent). Agents past the
//!   metrics table (254) share its last slot, as their metrics do. An even
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
//!
//! A side effect: agents cannot learn from hit timing what another asked.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, Name, RData, RecordType};

use crate::observe::metrics::MAX_AGENTS;
use crate::serve::upstream::Step;

/// How often a full partition may be swept for expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

type Key = (LowerName, RecordType);

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
    /// One per agent slot, made on the agent's first insert.
    parts: Box<[OnceLock<Partition>]>,
    /// How many partitions exist; the lock serializes making and resizing them.
    made: Mutex<usize>,
    epoch: Instant,
    limits: CacheLimits,
}

struct Partition {
    entries: quick_cache::sync::Cache<Key, Arc<Entry>>,
    /// Seconds after `epoch` before which this partition is not swept again.
    next_sweep: AtomicU64,
}

struct Entry {
    step: Step,
    stored: Instant,
    /// Seconds the entry lives, already clamped.
    lifetime: u32,
}

impl Entry {
    fn live_at(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored).as_secs() < u64::from(self.lifetime)
    }
}

impl Cache {
    pub fn new(limits: CacheLimits) -> Self {
        Self {
            parts: (0..MAX_AGENTS).map(|_| OnceLock::new()).collect(),
            made: Mutex::new(0),
            epoch: Instant::now(),
            limits,
        }
    }

    fn partition(&self, agent: u16) -> &OnceLock<Partition> {
        &self.parts[usize::from(agent).min(self.parts.len() - 1)]
    }

    /// The agent's partition, made (and the others shrunk) on first use.
    fn partition_or_make(&self, agent: u16) -> &Partition {
        let slot = self.partition(agent);
        if let Some(part) = slot.get() {
            return part;
        }
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(part) = slot.get() {
            return part;
        }
        *made += 1;
        let share = (self.limits.max_entries / *made).max(1);
        for other in self.parts.iter().filter_map(OnceLock::get) {
            other.entries.set_capacity(share as u64);
        }
        slot.get_or_init(|| Partition {
            entries: quick_cache::sync::Cache::new(share),
            next_sweep: AtomicU64::new(0),
        })
    }

    /// A fresh copy of the agent's cached step with TTLs counted down, if still live.
    pub fn get(&self, agent: u16, name: &Name, qtype: RecordType) -> Option<Step> {
        let part = self.partition(agent).get()?;
        let key = (LowerName::new(name), qtype);
        let entry = part.entries.get(&key)?;
        let age = entry.stored.elapsed().as_secs();
        if age >= u64::from(entry.lifetime) {
            // Expired: make room now rather than let it wait for eviction.
            part.entries.remove_if(&key, |e| Arc::ptr_eq(e, &entry));
            return None;
        }
        let mut step = entry.step.clone();
        for r in step.answers.iter_mut().chain(step.authority.iter_mut()) {
            r.ttl = r.ttl.saturating_sub(age as u32).max(1);
        }
        Some(step)
    }

    /// Stores a step in the agent's partition; SERVFAIL and friends are never cached.
    pub fn insert(&self, agent: u16, name: &Name, qtype: RecordType, step: &Step) {
        let Some(lifetime) = self.lifetime(step) else {
            return;
        };
        let part = self.partition_or_make(agent);
        let now = Instant::now();
        part.sweep_if_full(self.epoch, now);
        part.entries.insert(
            (LowerName::new(name), qtype),
            Arc::new(Entry {
                step: step.clone(),
                stored: now,
                lifetime,
            }),
        );
    }

    fn lifetime(&self, step: &Step) -> Option<u32> {
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
        let ttl = ttl.clamp(self.limits.min_ttl, self.limits.max_ttl);
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
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::A;

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

    fn name(n: impl std::fmt::Display) -> Name {
        Name::from_ascii(format!("{n}.test.")).unwrap()
    }

    fn cache(max_entries: usize) -> Cache {
        Cache::new(CacheLimits {
            max_entries,
            min_ttl: 0,
            max_ttl: 86400,
        })
    }

    #[test]
    fn a_unique_name_flood_keeps_hot_entries() {
        let cache = cache(1000);
        for i in 0..50 {
            cache.insert(1, &name(format!("hot{i}")), RecordType::A, &step(300));
        }
        for _ in 0..3 {
            for i in 0..50 {
                assert!(
                    cache
                        .get(1, &name(format!("hot{i}")), RecordType::A)
                        .is_some()
                );
            }
        }
        for i in 0..100_000 {
            cache.insert(1, &name(format!("flood{i}")), RecordType::A, &step(300));
        }
        let kept = (0..50)
            .filter(|i| {
                cache
                    .get(1, &name(format!("hot{i}")), RecordType::A)
                    .is_some()
            })
            .count();
        assert_eq!(kept, 50, "hot entries evicted by a scan");
    }

    #[test]
    fn an_agent_cannot_evict_another() {
        let cache = cache(1000);
        cache.insert(1, &name("a"), RecordType::A, &step(300));
        // Agent 2 floods with unique names, then with a few repeated ones.
        for i in 0..20_000 {
            cache.insert(2, &name(i), RecordType::A, &step(300));
        }
        for _ in 0..100 {
            for i in 0..2000 {
                let n = name(format!("r{i}"));
                if cache.get(2, &n, RecordType::A).is_none() {
                    cache.insert(2, &n, RecordType::A, &step(300));
                }
            }
        }
        assert!(cache.get(1, &name("a"), RecordType::A).is_some());
        // Agent 1's entry is not visible to agent 2.
        assert!(cache.get(2, &name("a"), RecordType::A).is_none());
    }

    #[test]
    fn shares_are_even_and_bounded() {
        let cache = cache(1000);
        for agent in 1..=4u16 {
            for i in 0..5000 {
                cache.insert(agent, &name(i), RecordType::A, &step(300));
            }
        }
        let total: usize = cache
            .parts
            .iter()
            .filter_map(OnceLock::get)
            .map(|p| p.entries.len())
            .sum();
        assert!(total <= 1000 + 64, "{total} entries for a budget of 1000");
        for agent in 1..=4u16 {
            let len = cache.partition(agent).get().unwrap().entries.len();
            assert!(len > 200, "agent {agent} holds {len}");
        }
    }

    #[test]
    fn expired_entries_are_dropped_before_live_ones() {
        let cache = cache(100);
        let part = cache.partition_or_make(1);
        let old = Instant::now() - Duration::from_secs(10);
        for i in 0..90 {
            part.entries.insert(
                (LowerName::new(&name(format!("old{i}"))), RecordType::A),
                Arc::new(Entry {
                    step: step(5),
                    stored: old,
                    lifetime: 5,
                }),
            );
            // Once hot, so only their expiry marks them as victims.
            let key = (LowerName::new(&name(format!("old{i}"))), RecordType::A);
            part.entries.get(&key);
            part.entries.get(&key);
        }
        for i in 0..10 {
            cache.insert(1, &name(format!("live{i}")), RecordType::A, &step(300));
        }
        for i in 0..50 {
            cache.insert(1, &name(format!("new{i}")), RecordType::A, &step(300));
        }
        let live = (0..10)
            .filter(|i| {
                cache
                    .get(1, &name(format!("live{i}")), RecordType::A)
                    .is_some()
            })
            .count();
        assert_eq!(
            live, 10,
            "a live entry was evicted while expired ones were kept"
        );
    }

    #[test]
    fn ttls_count_down_and_entries_expire() {
        let cache = cache(100);
        let part = cache.partition_or_make(1);
        part.entries.insert(
            (LowerName::new(&name("aged")), RecordType::A),
            Arc::new(Entry {
                step: step(60),
                stored: Instant::now() - Duration::from_secs(20),
                lifetime: 60,
            }),
        );
        let hit = cache.get(1, &name("aged"), RecordType::A).unwrap();
        assert!(
            (39..=40).contains(&hit.answers[0].ttl),
            "{}",
            hit.answers[0].ttl
        );
        part.entries.insert(
            (LowerName::new(&name("gone")), RecordType::A),
            Arc::new(Entry {
                step: step(60),
                stored: Instant::now() - Duration::from_secs(61),
                lifetime: 60,
            }),
        );
        assert!(cache.get(1, &name("gone"), RecordType::A).is_none());
        assert_eq!(part.entries.len(), 1);
    }
}
