//! Resolving an allowed name: local zone, else cache, else upstream, one hop
//! at a time, chasing the CNAME chain until it ends in the asked-for type.
//!
//! The query name was what the policy judged; CNAME targets are followed
//! without being listed, because CDNs put the real host behind them. Upstreams
//! that are only authoritative return just the first CNAME, so the chain is
//! chased here rather than trusted to be complete.

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::cache::Cache;
use crate::upstream::{Step, Upstream, UpstreamError};
use crate::zones::Zones;

/// Longest CNAME chain followed (RFC 1034 gives no bound; peers use 8 to 16).
const MAX_CHAIN: usize = 12;

/// Where the final answer came from.
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
    /// Time spent waiting on upstream exchanges; `None` if none was made.
    pub upstream_time: Option<Duration>,
    /// Where the last hop came from.
    pub source: Source,
}

pub struct Resolver {
    upstream: Upstream,
    cache: Cache,
}

impl Resolver {
    pub fn new(upstream: Upstream, cache: Cache) -> Self {
        Self { upstream, cache }
    }

    pub async fn resolve(
        &self,
        zones: &Zones,
        name: &Name,
        qtype: RecordType,
    ) -> Result<Resolution, UpstreamError> {
        let mut out = Resolution {
            rcode: ResponseCode::NoError,
            answers: Vec::new(),
            authority: Vec::new(),
            authoritative: true,
            upstream_time: None,
            source: Source::Local,
        };
        let mut target = name.clone();
        let mut visited: Vec<Name> = Vec::new();
        for _ in 0..MAX_CHAIN {
            let (step, source) = self
                .hop(zones, &target, qtype, &mut out.upstream_time)
                .await?;
            out.source = source;
            out.authoritative &= source == Source::Local;
            out.rcode = step.rcode;
            out.authority = step.authority;
            for r in step.answers {
                if !out.answers.contains(&r) {
                    out.answers.push(r);
                }
            }
            if qtype == RecordType::CNAME
                || qtype == RecordType::ANY
                || out.rcode != ResponseCode::NoError
            {
                break;
            }
            visited.push(target.clone());
            let end = chain_end(&out.answers, &target);
            let complete = out
                .answers
                .iter()
                .any(|r| r.name == end && r.record_type() == qtype);
            if end == target || complete || visited.contains(&end) {
                break;
            }
            // The chain stops at a name whose records were not in the answer: ask for it.
            out.authority.clear();
            target = end;
        }
        Ok(out)
    }

    async fn hop(
        &self,
        zones: &Zones,
        name: &Name,
        qtype: RecordType,
        upstream_time: &mut Option<Duration>,
    ) -> Result<(Step, Source), UpstreamError> {
        if let Some(step) = zones.lookup(name, qtype) {
            return Ok((step, Source::Local));
        }
        if let Some(step) = self.cache.get(name, qtype) {
            return Ok((step, Source::Cache));
        }
        let started = Instant::now();
        let result = self.upstream.query(name, qtype).await;
        *upstream_time = Some(upstream_time.unwrap_or_default() + started.elapsed());
        let step = result?;
        self.cache.insert(name, qtype, &step);
        Ok((step, Source::Upstream))
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
