//! Resolving an allowed name: local zone, else cache, else upstream, one hop
//! at a time, chasing the CNAME chain until it ends in the asked-for type.
//!
//! The query name was what the policy judged; CNAME targets are followed
//! without being listed, because CDNs put the real host behind them. Upstreams
//! that are only authoritative return just the first CNAME, so the chain is
//! chased here rather than trusted to be complete.
//!
//! [`Resolver::resolve_now`] answers from memory only (no await), which is how
//! most queries are served; [`Resolver::resolve`] may ask the upstream.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::observe::metrics::METRICS;
use crate::policy::PolicySet;
use crate::policy::name::{PolicyId, QueryKey};
use crate::policy::zones::Step;
use crate::policy::zones::Zones;
use crate::serve::cache::Cache;
use crate::serve::upstream::{Upstream, UpstreamError};
use crate::state::{ANSWER_DEADLINE, PerAgent};
use crate::sync::lock;

/// Longest CNAME chain followed (RFC 1034 gives no bound; peers use 8 to 16).
const MAX_CHAIN: usize = 12;

/// Where a hop's answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Local,
    Cache,
    Upstream,
}

/// The assembled answer to a client's question.
#[derive(Debug)]
pub struct Resolution {
    pub rcode: ResponseCode,
    /// The full chain: CNAMEs in order, then the records of the asked type.
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    /// Every hop was from a local zone.
    pub authoritative: bool,
    /// Every hop was from the cache.
    pub cached: bool,
    /// Time spent waiting on upstream exchanges; `None` if none was made.
    pub upstream_time: Option<Duration>,
}

pub struct Resolver {
    upstream: Arc<Upstream>,
    cache: Cache,
    /// Upstream questions in flight, by policy, name key and type: the same
    /// question asked again meanwhile waits for the same answer. Per
    /// policy, as the cache is: agents learn nothing from each other.
    in_flight: Arc<Mutex<HashMap<FlightKey, Flight>>>,
}

type FlightKey = (PolicyId, QueryKey, RecordType);
type Flight = Shared<BoxFuture<'static, Result<Step, UpstreamError>>>;

impl Resolver {
    pub fn new(upstream: Upstream, cache: Cache) -> Self {
        Self {
            upstream: Arc::new(upstream),
            cache,
            in_flight: Arc::default(),
        }
    }

    /// Where allowed names that no local zone holds are resolved.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// The answer cache, which also keeps answers ready to send.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Asks the upstream, or joins the identical question already asked.
    /// The exchange runs as its own task, so it ends (and leaves the map)
    /// even if every waiter gives up.
    async fn ask(
        &self,
        agent: PolicyId,
        target: &Name,
        target_key: &QueryKey,
        qtype: RecordType,
    ) -> Result<Step, UpstreamError> {
        let key = (agent, target_key.clone(), qtype);
        let flight = {
            let mut flights = lock(&self.in_flight);
            flights
                .entry(key.clone())
                .or_insert_with(|| {
                    let (upstream, flights) = (self.upstream.clone(), self.in_flight.clone());
                    let name = target.clone();
                    let task = tokio::spawn(async move {
                        let started = Instant::now();
                        let asked =
                            tokio::time::timeout(ANSWER_DEADLINE, upstream.query(&name, qtype));
                        let result = match asked.await {
                            Ok(result) => result,
                            Err(_) => Err(UpstreamError::Timeout {
                                name,
                                qtype,
                                after: ANSWER_DEADLINE,
                            }),
                        };
                        METRICS.upstream_queries.fetch_add(1, Relaxed);
                        METRICS.upstream_latency.observe(started.elapsed());
                        if result.is_err() {
                            METRICS.upstream_errors.fetch_add(1, Relaxed);
                        }
                        lock(&flights).remove(&key);
                        result
                    });
                    let name = target.clone();
                    async move {
                        task.await.unwrap_or_else(|e| {
                            Err(UpstreamError::Task {
                                name,
                                qtype,
                                reason: e.to_string(),
                            })
                        })
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        flight.await
    }

    /// The answer if every hop is in a local zone or the cache; never waits.
    /// `key` is `name`'s key; `agent` the asking policy: each has its own cache.
    pub fn resolve_now(
        &self,
        zones: &Zones,
        key: &QueryKey,
        name: &Name,
        qtype: RecordType,
        agent: PolicyId,
    ) -> Option<Resolution> {
        let mut chase = Chase::new(key, name, qtype);
        loop {
            let (step, source) = self.in_memory(zones, &chase, agent)?;
            if chase.add(step, source) {
                return Some(chase.finish(name));
            }
        }
    }

    /// The answer, asking the upstream for hops that memory does not hold.
    /// Each hop fetched is held at least `floor` seconds: its records' TTLs
    /// are raised to it, for the cache, the client and the fence alike.
    pub async fn resolve(
        &self,
        zones: &Zones,
        key: &QueryKey,
        name: &Name,
        qtype: RecordType,
        agent: PolicyId,
        floor: u32,
    ) -> Result<Resolution, UpstreamError> {
        let mut chase = Chase::new(key, name, qtype);
        loop {
            let (step, source) = match self.in_memory(zones, &chase, agent) {
                Some(hit) => hit,
                None => {
                    let started = Instant::now();
                    let result = self
                        .ask(agent, &chase.target, &chase.target_key, qtype)
                        .await;
                    let took = started.elapsed();
                    let spent = chase.out.upstream_time.unwrap_or_default() + took;
                    chase.out.upstream_time = Some(spent);
                    METRICS.cache_misses.fetch_add(1, Relaxed);
                    let mut step = result?;
                    for r in &mut step.answers {
                        r.ttl = r.ttl.max(floor);
                    }
                    self.cache
                        .insert(agent, &chase.target_key, qtype, &step, floor);
                    (step, Source::Upstream)
                }
            };
            if chase.add(step, source) {
                return Ok(chase.finish(name));
            }
        }
    }

    /// The question name decided the policy; CNAME targets are followed
    /// wherever they lead, local zones included (the CDN case).
    fn in_memory(&self, zones: &Zones, chase: &Chase, agent: PolicyId) -> Option<(Step, Source)> {
        let key = &chase.target_key;
        if let Some(step) = zones.lookup(key, &chase.target, chase.qtype) {
            return Some((step, Source::Local));
        }
        let hit = self.cache.get(agent, key, chase.qtype)?;
        METRICS.cache_hit();
        Some((hit, Source::Cache))
    }
}

/// The state of one CNAME chase.
struct Chase<'k> {
    qtype: RecordType,
    /// The name the next hop asks about.
    target: Name,
    /// Its key: the question's own for the first hop, then each CNAME
    /// target's, computed once per hop.
    target_key: Cow<'k, QueryKey>,
    hops: usize,
    out: Resolution,
}

impl<'k> Chase<'k> {
    fn new(key: &'k QueryKey, name: &Name, qtype: RecordType) -> Self {
        Chase {
            qtype,
            target: name.clone(),
            target_key: Cow::Borrowed(key),
            hops: 0,
            out: Resolution {
                rcode: ResponseCode::NoError,
                answers: Vec::new(),
                authority: Vec::new(),
                authoritative: true,
                cached: true,
                upstream_time: None,
            },
        }
    }

    /// Adds one hop's answer. True when the answer is complete; otherwise
    /// `target` is the name the chain stopped at, to be asked next.
    fn add(&mut self, step: Step, source: Source) -> bool {
        self.hops += 1;
        self.out.authoritative &= source == Source::Local;
        self.out.cached &= source == Source::Cache;
        self.out.rcode = step.rcode;
        self.out.authority = step.authority;
        for r in step.answers {
            if !self.out.answers.contains(&r) {
                self.out.answers.push(r);
            }
        }
        if matches!(self.qtype, RecordType::CNAME | RecordType::ANY)
            || self.out.rcode != ResponseCode::NoError
            || self.hops >= MAX_CHAIN
        {
            return true;
        }
        let end = chain_end(&self.out.answers, &self.target);
        let complete = self
            .out
            .answers
            .iter()
            .any(|r| r.name == end && r.record_type() == self.qtype);
        if end == self.target || complete {
            return true;
        }
        // The chain stops at a name whose records were not in the answer: ask for it.
        self.out.authority.clear();
        self.target_key = Cow::Owned(QueryKey::of_any(&end));
        self.target = end;
        false
    }
}

impl Chase<'_> {
    /// The resolution, keeping only records on the chain from `question`:
    /// its CNAMEs in order, then records of the asked type owned by a name on
    /// the chain. Anything else an upstream put in its answer section (records
    /// for unrelated names) is dropped, so it is neither relayed nor fed to
    /// the firewall.
    fn finish(mut self, question: &Name) -> Resolution {
        let answers = std::mem::take(&mut self.out.answers);
        let mut chain = vec![question.clone()];
        let mut kept = Vec::with_capacity(answers.len());
        let mut at = question.clone();
        for _ in 0..MAX_CHAIN {
            let next = answers
                .iter()
                .find(|r| r.name == at && r.record_type() == RecordType::CNAME);
            let Some(record) = next else { break };
            kept.push(record.clone());
            let RData::CNAME(target) = &record.data else {
                break;
            };
            if chain.contains(&target.0) {
                break;
            }
            chain.push(target.0.clone());
            at = target.0.clone();
        }
        for r in answers {
            let type_ok = self.qtype == RecordType::ANY || r.record_type() == self.qtype;
            if r.record_type() != RecordType::CNAME
                && type_ok
                && chain.contains(&r.name)
                && !kept.contains(&r)
            {
                kept.push(r);
            }
        }
        self.out.answers = kept;
        self.out
    }
}

/// Follows CNAMEs from `start` through `answers`; returns the last name reached.
fn chain_end(answers: &[Record], start: &Name) -> Name {
    let mut at = start.clone();
    for _ in 0..MAX_CHAIN {
        let next = answers.iter().find_map(|r| match &r.data {
            RData::CNAME(cname) if r.name == at => Some(cname.0.clone()),
            _ => None,
        });
        match next {
            Some(next) if next != at => at = next,
            _ => break,
        }
    }
    at
}

/// The cache partitions of agents a reload removed go with them.
impl PerAgent for Resolver {
    fn agents_changed(&self, files: &PolicySet) {
        let ids: HashSet<PolicyId> = files.policies.iter().map(|p| p.id).collect();
        self.cache.retain(|id| ids.contains(&id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, CNAME};

    fn a(name: &str, ip: [u8; 4]) -> Record {
        Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            60,
            RData::A(A::new(ip[0], ip[1], ip[2], ip[3])),
        )
    }

    fn cname(name: &str, target: &str) -> Record {
        Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            60,
            RData::CNAME(CNAME(Name::from_ascii(target).unwrap())),
        )
    }

    #[test]
    fn only_records_on_the_chain_are_kept() {
        let question = Name::from_ascii("www.allowed.test.").unwrap();
        let key = QueryKey::of(&question).unwrap();
        let mut chase = Chase::new(&key, &question, RecordType::A);
        let step = Step {
            rcode: ResponseCode::NoError,
            answers: vec![
                a("evil.example.", [6, 6, 6, 6]),
                cname("www.allowed.test.", "edge.cdn.test."),
                a("edge.cdn.test.", [192, 0, 2, 7]),
                a("other.cdn.test.", [6, 6, 6, 7]),
                cname("unrelated.test.", "evil.example."),
            ],
            authority: Vec::new(),
        };
        assert!(chase.add(step, Source::Upstream));
        let out = chase.finish(&question);
        let names: Vec<String> = out.answers.iter().map(|r| r.name.to_ascii()).collect();
        assert_eq!(names, vec!["www.allowed.test.", "edge.cdn.test."]);
    }
}
