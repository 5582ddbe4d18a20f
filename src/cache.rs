//! The answer cache: one entry per (name, type) upstream exchange.
//!
//! TTLs count down: a hit hands out each record's TTL minus the entry's age,
//! and an entry is gone once its shortest TTL has run out. Negative answers are
//! kept for the SOA's negative TTL (RFC 2308). The cache is sharded and bounded;
//! when a shard is full an arbitrary entry makes room, so memory stays flat
//! under a flood of unique allowed names.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, Name, RData, RecordType};

use crate::upstream::Step;

const SHARDS: usize = 16;

type Key = (LowerName, RecordType);
type Shard = Mutex<HashMap<Key, Entry>>;

/// Cache policy from the config.
#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    pub max_entries: usize,
    /// Floor and ceiling applied to how long an entry is kept.
    pub min_ttl: u32,
    pub max_ttl: u32,
}

pub struct Cache {
    shards: Box<[Shard]>,
    hasher: RandomState,
    limits: CacheLimits,
}

struct Entry {
    step: Arc<Step>,
    stored: Instant,
    /// Seconds the entry lives, already clamped.
    lifetime: u32,
}

impl Cache {
    pub fn new(limits: CacheLimits) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            limits,
        }
    }

    fn shard(&self, key: &Key) -> &Shard {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// A fresh copy of the cached step with TTLs counted down, if still live.
    pub fn get(&self, name: &Name, qtype: RecordType) -> Option<Step> {
        let key = (LowerName::new(name), qtype);
        let (step, age) = {
            let shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
            let entry = shard.get(&key)?;
            let age = entry.stored.elapsed().as_secs();
            if age >= u64::from(entry.lifetime) {
                return None;
            }
            (entry.step.clone(), age as u32)
        };
        let mut step = Step::clone(&step);
        for r in step.answers.iter_mut().chain(step.authority.iter_mut()) {
            r.ttl = r.ttl.saturating_sub(age).max(1);
        }
        Some(step)
    }

    /// Stores a step; SERVFAIL and friends are never cached.
    pub fn insert(&self, name: &Name, qtype: RecordType, step: &Step) {
        let Some(lifetime) = self.lifetime(step) else {
            return;
        };
        let key = (LowerName::new(name), qtype);
        let limit = (self.limits.max_entries / SHARDS).max(1);
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= limit && !shard.contains_key(&key) {
            let victim = shard.keys().next().cloned();
            if let Some(victim) = victim {
                shard.remove(&victim);
            }
        }
        shard.insert(
            key,
            Entry {
                step: Arc::new(step.clone()),
                stored: Instant::now(),
                lifetime,
            },
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
