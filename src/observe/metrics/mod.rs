//! Prometheus metrics: the process-wide counters (here), their text
//! exposition (render.rs) and the `/metrics` endpoint (http.rs).
//!
//! Counting is a relaxed atomic add into fixed arrays; no lock, map lookup
//! or allocation per query. Agents get a slot when their policy set is
//! loaded (`assign_slots`), so the hot path indexes by a small integer, and counters
//! survive reloads because a name keeps its slot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::observe::alert::AlertStats;
use crate::observe::audit::Decision;
use crate::observe::delivery::DeliveryStats;
use crate::sync::lock;

mod http;
mod render;

pub use http::{bind, serve};

/// Agents with their own series; further agents share the last slot.
pub const MAX_AGENTS: usize = 256;
/// Slot 0 counts queries from clients no policy governs.
pub const NO_AGENT: u16 = 0;
const DECISIONS: [Decision; 4] = [
    Decision::Allow,
    Decision::Deny,
    Decision::WouldDeny,
    Decision::Refused,
];
const QTYPES: [RecordType; 13] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::HTTPS,
    RecordType::SVCB,
    RecordType::CNAME,
    RecordType::MX,
    RecordType::TXT,
    RecordType::SRV,
    RecordType::PTR,
    RecordType::NS,
    RecordType::SOA,
    RecordType::CAA,
    RecordType::ANY,
];
/// Index of the "other" qtype bucket.
const OTHER_QTYPE: usize = QTYPES.len();
/// The exfiltration marks, as the audit log spells them (docs/exfiltration.md).
pub const EXFIL_MARKS: [&str; 4] = ["soft", "budget", "qtype", "tunnel"];
/// What happened to a connection outside the allowlist, as the audit log spells it.
pub const EGRESS_ACTIONS: [&str; 2] = ["blocked", "logged"];
/// Upper bounds of the latency buckets, in µs (the last bucket is +Inf).
const BUCKETS_US: [u64; 15] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

pub struct Histogram {
    /// Per-bucket (not cumulative) counts; the last is +Inf.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS_US.len() + 1],
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }
}

/// Response codes 0..=23 (through BADCOOKIE) have their own series.
const RCODES: usize = 25;

/// Shards of the per-query counters: each serving thread adds into its own,
/// so two cores never fight over one cache line per query.
const SHARDS: usize = 8;

#[repr(align(128))]
struct Shard {
    /// [agent slot][decision][qtype]
    queries: [[[AtomicU64; QTYPES.len() + 1]; DECISIONS.len()]; MAX_AGENTS],
    /// By the rcode's 12-bit value; codes above 23 share the last slot.
    rcodes: [AtomicU64; RCODES],
    /// From the question arriving to the reply being encoded.
    latency: Histogram,
    cache_hits: AtomicU64,
}

impl Shard {
    const fn new() -> Self {
        Shard {
            queries: [const {
                [const { [const { AtomicU64::new(0) }; QTYPES.len() + 1] }; DECISIONS.len()]
            }; MAX_AGENTS],
            rcodes: [const { AtomicU64::new(0) }; RCODES],
            latency: Histogram::new(),
            cache_hits: AtomicU64::new(0),
        }
    }
}

thread_local! {
    /// This thread's shard, handed out round robin.
    static SHARD: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Relaxed) as usize % SHARDS
    };
}

/// Every counter allowdns exports.
pub struct Metrics {
    /// Per-query counters, one shard per serving thread.
    shards: [Shard; SHARDS],
    pub cache_misses: AtomicU64,
    pub upstream_queries: AtomicU64,
    pub upstream_errors: AtomicU64,
    /// Datagrams on upstream sockets that answered nothing in flight there.
    pub upstream_dropped: AtomicU64,
    /// Upstream answers whose name was not in the case asked (DNS 0x20).
    pub upstream_case_changed: AtomicU64,
    pub upstream_latency: Histogram,
    /// Netlink batches sent to nftables, and the elements in them.
    pub nft_updates: AtomicU64,
    pub nft_elements: AtomicU64,
    pub nft_failures: AtomicU64,
    pub audit_lost: AtomicU64,
    /// Held denials finished without their lookup: the lookups queue was full.
    pub attribution_queue_full: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Answers stripped of special-purpose addresses, per agent slot:
    /// security events, rare, so unsharded.
    stripped: [AtomicU64; MAX_AGENTS],
    /// Exfiltration marks per agent slot, by [`EXFIL_MARKS`].
    exfil: [[AtomicU64; EXFIL_MARKS.len()]; MAX_AGENTS],
    /// Connection attempts outside the allowlist per agent slot, by
    /// [`EGRESS_ACTIONS`].
    egress: [[AtomicU64; EGRESS_ACTIONS.len()]; MAX_AGENTS],
    /// Blocked-connection reports lost (NFLOG sequence gaps), and overruns.
    pub egress_lost: AtomicU64,
    pub egress_overruns: AtomicU64,
    /// The transports' own counters (see [`Transports`]).
    pub transports: Transports,
    /// Agent names by slot; written at policy load, read when rendering.
    agents: Mutex<Vec<Arc<str>>>,
    /// The alerting side's own counters, read when rendering.
    alerts: Mutex<Option<AlertSources>>,
}

type AlertSources = (Arc<AlertStats>, Vec<(&'static str, Arc<DeliveryStats>)>);

pub static METRICS: Metrics = Metrics::new();

impl Metrics {
    const fn new() -> Self {
        Metrics {
            shards: [const { Shard::new() }; SHARDS],
            cache_misses: AtomicU64::new(0),
            upstream_queries: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            upstream_dropped: AtomicU64::new(0),
            upstream_case_changed: AtomicU64::new(0),
            upstream_latency: Histogram::new(),
            nft_updates: AtomicU64::new(0),
            nft_elements: AtomicU64::new(0),
            nft_failures: AtomicU64::new(0),
            audit_lost: AtomicU64::new(0),
            attribution_queue_full: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            stripped: [const { AtomicU64::new(0) }; MAX_AGENTS],
            exfil: [const { [const { AtomicU64::new(0) }; EXFIL_MARKS.len()] }; MAX_AGENTS],
            egress: [const { [const { AtomicU64::new(0) }; EGRESS_ACTIONS.len()] }; MAX_AGENTS],
            egress_lost: AtomicU64::new(0),
            egress_overruns: AtomicU64::new(0),
            transports: Transports::new(),
            agents: Mutex::new(Vec::new()),
            alerts: Mutex::new(None),
        }
    }

    /// One answered query.
    pub fn query(
        &self,
        slot: u16,
        decision: Decision,
        qtype: Option<RecordType>,
        rcode: ResponseCode,
        took: Duration,
    ) {
        let d = DECISIONS.iter().position(|&x| x == decision).unwrap_or(3);
        let q = qtype
            .and_then(|t| QTYPES.iter().position(|&x| x == t))
            .unwrap_or(OTHER_QTYPE);
        let slot = usize::from(slot).min(MAX_AGENTS - 1);
        let r = usize::from(u16::from(rcode)).min(RCODES - 1);
        let shard = self.shard();
        shard.queries[slot][d][q].fetch_add(1, Relaxed);
        shard.rcodes[r].fetch_add(1, Relaxed);
        shard.latency.observe(took);
    }

    /// An answer the fence stripped special-purpose addresses from.
    pub fn stripped(&self, slot: u16) {
        let slot = usize::from(slot).min(MAX_AGENTS - 1);
        self.stripped[slot].fetch_add(1, Relaxed);
    }

    /// A connection attempt outside the allowlist (`blocked` or `logged`).
    pub fn egress(&self, slot: u16, action: &str) {
        let slot = usize::from(slot).min(MAX_AGENTS - 1);
        if let Some(a) = EGRESS_ACTIONS.iter().position(|&x| x == action) {
            self.egress[slot][a].fetch_add(1, Relaxed);
        }
    }

    /// An audit record marked by the exfiltration budget (`soft`, `budget`
    /// or `qtype`, as in the audit field); an unknown mark is not counted.
    pub fn exfil(&self, slot: u16, mark: &str) {
        let slot = usize::from(slot).min(MAX_AGENTS - 1);
        if let Some(m) = EXFIL_MARKS.iter().position(|&x| x == mark) {
            self.exfil[slot][m].fetch_add(1, Relaxed);
        }
    }

    /// A message dropped without a reply: too short to have an ID.
    pub fn dropped_short(&self) {
        self.transports.dropped_short.fetch_add(1, Relaxed);
    }

    /// A message dropped without a reply: a response (QR=1).
    pub fn dropped_response(&self) {
        self.transports.dropped_responses.fetch_add(1, Relaxed);
    }

    /// An allowed question (or CNAME hop) answered from the cache.
    pub fn cache_hit(&self) {
        self.shard().cache_hits.fetch_add(1, Relaxed);
    }

    fn shard(&self) -> &Shard {
        &self.shards[SHARD.with(|i| *i)]
    }

    /// Exports the counters of the running alerting and delivery threads.
    pub fn watch_alerts(
        &self,
        stats: Arc<AlertStats>,
        sinks: Vec<(&'static str, Arc<DeliveryStats>)>,
    ) {
        *lock(&self.alerts) = Some((stats, sinks));
    }

    /// The slot for an agent's series; the same name always gets the same slot.
    pub fn slot_for(&self, agent: &str) -> u16 {
        let mut agents = lock(&self.agents);
        if let Some(i) = agents.iter().position(|a| &**a == agent) {
            return (i + 1) as u16;
        }
        if agents.len() + 1 >= MAX_AGENTS {
            return (MAX_AGENTS - 1) as u16;
        }
        agents.push(agent.into());
        agents.len() as u16
    }

    /// Gives each policy of a freshly loaded set its agent's slot (the same
    /// name keeps its slot across reloads). Done by the loader, not by
    /// `policy/`, so a policy stays data; the slot only labels metrics.
    pub fn assign_slots(&self, set: &mut crate::policy::PolicySet) {
        for policy in &mut set.policies {
            let slot = self.slot_for(&policy.agent);
            match std::sync::Arc::get_mut(policy) {
                Some(policy) => policy.metrics_slot = slot,
                // A fresh set is not shared yet; if it were, its queries
                // would only be counted under no agent.
                None => {
                    tracing::error!(agent = %policy.agent, "metrics slot not assigned: policy already shared")
                }
            }
        }
    }
}

/// What the transports count besides answered queries.
pub struct Transports {
    pub dropped_short: AtomicU64,
    pub dropped_responses: AtomicU64,
    pub tcp_accepted: AtomicU64,
    /// Connections closed at once because the connection bound was reached.
    pub tcp_rejected: AtomicU64,
    pub tcp_open: AtomicU64,
    /// The UDP listeners (duplicates of their descriptors): the questions
    /// the kernel dropped on their full receive queues are read from them
    /// at each scrape, whichever namespace they were bound in.
    pub udp_listeners: Mutex<Vec<std::os::fd::OwnedFd>>,
}

impl Transports {
    const fn new() -> Self {
        Transports {
            dropped_short: AtomicU64::new(0),
            dropped_responses: AtomicU64::new(0),
            tcp_accepted: AtomicU64::new(0),
            tcp_rejected: AtomicU64::new(0),
            tcp_open: AtomicU64::new(0),
            udp_listeners: Mutex::new(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::render::{Metric, rcode_label};
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        Metric::new(&mut out, "x", "histogram", "help").histogram(std::iter::once(&h));
        assert!(out.contains("x_bucket{le=\"0.00005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.001\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn rcode_labels_use_the_full_code_and_are_distinct() {
        assert_eq!(rcode_label(0), "NOERROR");
        assert_eq!(rcode_label(16), "BADVERS");
        assert_eq!(rcode_label(RCODES - 1), "OTHER");
        let labels: std::collections::HashSet<_> = (0..RCODES).map(rcode_label).collect();
        assert_eq!(labels.len(), RCODES, "{labels:?}");
    }
}
