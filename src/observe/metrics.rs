//! Prometheus metrics: process-wide counters, and the `/metrics` endpoint.
//!
//! Counting is a relaxed atomic add into fixed arrays; no lock, map lookup
//! or allocation per query. Agents get a slot when their policy set is
//! loaded (`assign_slots`), so the hot path indexes by a small integer, and counters
//! survive reloads because a name keeps its slot.

// Hand-written, not a Prometheus crate: counters are fixed arrays indexed by agent slot, one relaxed add per query with no label map or lock, and one GET /metrics needs no HTTP stack to harden; no benchmark compares them.
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::observe::alert::AlertStats;
use crate::observe::audit::Decision;
use crate::observe::delivery::DeliveryStats;

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

    /// Writes the sum of `parts` (one histogram split across shards).
    fn render<'h>(
        out: &mut String,
        name: &str,
        parts: impl Iterator<Item = &'h Histogram> + Clone,
    ) {
        let mut total = 0;
        for i in 0..=BUCKETS_US.len() {
            total += parts
                .clone()
                .map(|h| h.buckets[i].load(Relaxed))
                .sum::<u64>();
            let le = BUCKETS_US
                .get(i)
                .map_or("+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {total}");
        }
        let sum_ns: u64 = parts.map(|h| h.sum_ns.load(Relaxed)).sum();
        let _ = writeln!(out, "{name}_sum {}", sum_ns as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {total}");
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
    pub upstream_latency: Histogram,
    /// Netlink batches sent to nftables, and the elements in them.
    pub nft_updates: AtomicU64,
    pub nft_elements: AtomicU64,
    pub nft_failures: AtomicU64,
    pub audit_lost: AtomicU64,
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
            upstream_latency: Histogram::new(),
            nft_updates: AtomicU64::new(0),
            nft_elements: AtomicU64::new(0),
            nft_failures: AtomicU64::new(0),
            audit_lost: AtomicU64::new(0),
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

    /// A message dropped without a reply (too short, or a response).
    pub fn dropped(&self, why: Dropped) {
        let counter = match why {
            Dropped::Short => &self.transports.dropped_short,
            Dropped::Response => &self.transports.dropped_responses,
        };
        counter.fetch_add(1, Relaxed);
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
        *self.alerts.lock().unwrap_or_else(|p| p.into_inner()) = Some((stats, sinks));
    }

    /// The slot for an agent's series; the same name always gets the same slot.
    pub fn slot_for(&self, agent: &str) -> u16 {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let agents = self
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let label = |slot: usize| -> String {
            match slot {
                0 => "(none)".into(),
                s if s == MAX_AGENTS - 1 && agents.len() + 1 >= MAX_AGENTS => "(other)".into(),
                s => agents.get(s - 1).map_or("(unknown)".into(), |a| escape(a)),
            }
        };
        head(
            &mut out,
            "allowdns_queries_total",
            "counter",
            "Questions answered, by agent, policy decision and query type.",
        );
        let sum = |f: &dyn Fn(&Shard) -> &AtomicU64| -> u64 {
            self.shards.iter().map(|s| f(s).load(Relaxed)).sum()
        };
        for slot in 0..(agents.len() + 1).min(MAX_AGENTS) {
            for (d, decision) in DECISIONS.iter().enumerate() {
                for q in 0..=QTYPES.len() {
                    let n = sum(&|s| &s.queries[slot][d][q]);
                    if n == 0 {
                        continue;
                    }
                    let qtype = QTYPES.get(q).map_or("OTHER".to_string(), |t| t.to_string());
                    let _ = writeln!(
                        out,
                        "allowdns_queries_total{{agent=\"{}\",decision=\"{}\",qtype=\"{qtype}\"}} {n}",
                        label(slot),
                        decision.as_str(),
                    );
                }
            }
        }
        head(
            &mut out,
            "allowdns_responses_total",
            "counter",
            "Replies sent, by response code.",
        );
        for r in 0..RCODES {
            let n = sum(&|s| &s.rcodes[r]);
            if n > 0 {
                let name = rcode_label(r);
                let _ = writeln!(out, "allowdns_responses_total{{rcode=\"{name}\"}} {n}");
            }
        }
        head(
            &mut out,
            "allowdns_query_duration_seconds",
            "histogram",
            "Time from a question's arrival to its reply.",
        );
        Histogram::render(
            &mut out,
            "allowdns_query_duration_seconds",
            self.shards.iter().map(|s| &s.latency),
        );
        head(
            &mut out,
            "allowdns_cache_hits_total",
            "counter",
            "Allowed questions answered from the cache (each CNAME hop counts).",
        );
        let _ = writeln!(out, "allowdns_cache_hits_total {}", sum(&|s| &s.cache_hits));
        let counters: [(&str, &str, &AtomicU64); 9] = [
            (
                "allowdns_cache_misses_total",
                "Allowed questions the cache could not answer.",
                &self.cache_misses,
            ),
            (
                "allowdns_upstream_queries_total",
                "Questions sent upstream (each CNAME hop counts).",
                &self.upstream_queries,
            ),
            (
                "allowdns_upstream_errors_total",
                "Upstream exchanges that failed or timed out.",
                &self.upstream_errors,
            ),
            (
                "allowdns_nft_updates_total",
                "Netlink batches sent to nftables sets.",
                &self.nft_updates,
            ),
            (
                "allowdns_nft_elements_total",
                "Set elements added or refreshed.",
                &self.nft_elements,
            ),
            (
                "allowdns_nft_failures_total",
                "nftables updates that failed (each answered SERVFAIL).",
                &self.nft_failures,
            ),
            (
                "allowdns_audit_records_lost_total",
                "Audit records that could not be written.",
                &self.audit_lost,
            ),
            (
                "allowdns_reloads_total",
                "Successful reloads.",
                &self.reloads,
            ),
            (
                "allowdns_reload_failures_total",
                "Reloads rejected (the old set stayed in force).",
                &self.reload_failures,
            ),
        ];
        for (name, help, value) in counters {
            head(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Relaxed));
        }
        // Every known agent gets its series, zeros included: a rate over a
        // security counter must not wait for the first event to exist.
        let agent_slots = (agents.len() + 1).min(MAX_AGENTS);
        head(
            &mut out,
            "allowdns_stripped_addresses_total",
            "counter",
            "Answers stripped of special-purpose addresses, by agent.",
        );
        for slot in 0..agent_slots {
            let n = self.stripped[slot].load(Relaxed);
            if slot > 0 || n > 0 {
                let _ = writeln!(
                    out,
                    "allowdns_stripped_addresses_total{{agent=\"{}\"}} {n}",
                    label(slot)
                );
            }
        }
        head(
            &mut out,
            "allowdns_exfil_total",
            "counter",
            "Questions marked by the exfiltration budget, by agent and mark (soft, budget, qtype).",
        );
        for slot in 0..agent_slots {
            for (m, mark) in EXFIL_MARKS.iter().enumerate() {
                let n = self.exfil[slot][m].load(Relaxed);
                if slot > 0 || n > 0 {
                    let _ = writeln!(
                        out,
                        "allowdns_exfil_total{{agent=\"{}\",mark=\"{mark}\"}} {n}",
                        label(slot)
                    );
                }
            }
        }
        head(
            &mut out,
            "allowdns_egress_total",
            "counter",
            "Connection attempts outside the allowlist, by agent and action (blocked, logged).",
        );
        for slot in 0..agent_slots {
            for (a, action) in EGRESS_ACTIONS.iter().enumerate() {
                let n = self.egress[slot][a].load(Relaxed);
                if slot > 0 || n > 0 {
                    let _ = writeln!(
                        out,
                        "allowdns_egress_total{{agent=\"{}\",action=\"{action}\"}} {n}",
                        label(slot)
                    );
                }
            }
        }
        for (name, help, value) in [
            (
                "allowdns_egress_records_lost_total",
                "Blocked-connection reports the kernel could not hand over (NFLOG).",
                &self.egress_lost,
            ),
            (
                "allowdns_egress_overruns_total",
                "Overruns of the NFLOG socket (ENOBUFS).",
                &self.egress_overruns,
            ),
        ] {
            head(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Relaxed));
        }
        if let Some((stats, sinks)) = &*self.alerts.lock().unwrap_or_else(|p| p.into_inner()) {
            head(
                &mut out,
                "allowdns_alerts_total",
                "counter",
                "Alerts raised: stderr alert blocks, and threshold notifications.",
            );
            let _ = writeln!(
                out,
                "allowdns_alerts_total{{kind=\"stderr\"}} {}",
                stats.stderr_alerts.load(Relaxed)
            );
            let _ = writeln!(
                out,
                "allowdns_alerts_total{{kind=\"notification\"}} {}",
                stats.notifications.load(Relaxed)
            );
            head(
                &mut out,
                "allowdns_alert_deliveries_total",
                "counter",
                "Notification delivery outcomes per sink.",
            );
            for (sink, s) in sinks {
                for (outcome, n) in [
                    ("sent", &s.sent),
                    ("failed_attempt", &s.failed_attempts),
                    ("given_up", &s.given_up),
                    ("dropped", &s.dropped),
                ] {
                    let _ = writeln!(
                        out,
                        "allowdns_alert_deliveries_total{{sink=\"{sink}\",outcome=\"{outcome}\"}} {}",
                        n.load(Relaxed)
                    );
                }
            }
        }
        head(
            &mut out,
            "allowdns_upstream_duration_seconds",
            "histogram",
            "Upstream exchange time.",
        );
        Histogram::render(
            &mut out,
            "allowdns_upstream_duration_seconds",
            std::iter::once(&self.upstream_latency),
        );
        self.transports.render(&mut out);
        out
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
}

impl Transports {
    const fn new() -> Self {
        Transports {
            dropped_short: AtomicU64::new(0),
            dropped_responses: AtomicU64::new(0),
            tcp_accepted: AtomicU64::new(0),
            tcp_rejected: AtomicU64::new(0),
            tcp_open: AtomicU64::new(0),
        }
    }

    fn render(&self, out: &mut String) {
        head(
            out,
            "allowdns_dropped_messages_total",
            "counter",
            "Messages dropped without a reply: shorter than a header, or responses (QR=1).",
        );
        for (reason, n) in [
            ("short", &self.dropped_short),
            ("response", &self.dropped_responses),
        ] {
            let n = n.load(Relaxed);
            let _ = writeln!(
                out,
                "allowdns_dropped_messages_total{{reason=\"{reason}\"}} {n}"
            );
        }
        head(
            out,
            "allowdns_tcp_connections_total",
            "counter",
            "TCP connections accepted, and those closed at once over the connection bound.",
        );
        for (outcome, n) in [
            ("accepted", &self.tcp_accepted),
            ("rejected", &self.tcp_rejected),
        ] {
            let n = n.load(Relaxed);
            let _ = writeln!(
                out,
                "allowdns_tcp_connections_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        head(
            out,
            "allowdns_tcp_connections_open",
            "gauge",
            "TCP connections open now.",
        );
        let _ = writeln!(
            out,
            "allowdns_tcp_connections_open {}",
            self.tcp_open.load(Relaxed)
        );
    }
}

/// The label for an rcode slot: the full 12-bit code, not just the header's
/// low 4 bits (else BADVERS would read as NOERROR).
fn rcode_label(slot: usize) -> String {
    match slot {
        // 16 is BADSIG only in TSIG replies, which allowdns never sends.
        16 => "BADVERS".into(),
        s if s >= RCODES - 1 => "OTHER".into(),
        s => crate::observe::audit::rcode_name(<ResponseCode as From<u16>>::from(s as u16)),
    }
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Binds the metrics listener (before the resolver reports ready).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("metrics on {addr}: {e}")))
}

/// Scrapes answered at once; a request beyond this gets 503.
const MAX_SCRAPES: usize = 8;
/// Connections waiting for their request; beyond this the oldest is dropped
/// (see [`crate::observe::idle`]), so idle clients cannot lock out a scrape.
const MAX_WAITING: usize = 64;
/// The whole exchange (request in, reply out) must finish within this.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(5);
/// Longest request head read.
const MAX_REQUEST: usize = 8192;

/// Serves `GET /metrics` until `shutdown`. Plain HTTP/1.1, one request per
/// connection: enough for Prometheus, and no HTTP stack to harden.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_SCRAPES));
    let waiting = crate::observe::idle::Waiting::new(MAX_WAITING);
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Idle or slow clients must neither pile up tasks and sockets nor
        // hold the slots a real scrape needs.
        let ticket = waiting.enter();
        let permits = permits.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SCRAPE_DEADLINE, async move {
                let mut stream = stream;
                let head = tokio::select! {
                    _ = ticket.evicted() => return Ok(()),
                    head = read_head(&mut stream) => head?,
                };
                drop(ticket);
                let Ok(_permit) = permits.try_acquire_owned() else {
                    return reply(&mut stream, "503 Service Unavailable", "busy\n".into()).await;
                };
                respond(&mut stream, &head).await
            })
            .await;
        });
    }
}

async fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

async fn respond(stream: &mut TcpStream, buf: &[u8]) -> io::Result<()> {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", METRICS.render()),
        (Some("GET"), _) => ("404 Not Found", "try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", String::new()),
    };
    reply(stream, status, body).await
}

async fn reply(stream: &mut TcpStream, status: &str, body: String) -> io::Result<()> {
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

/// Why a message gets no reply at all (it is counted instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than a header: there is no ID to answer to.
    Short,
    /// QR=1, a response: answering those would make allowdns a reflector.
    Response,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        Histogram::render(&mut out, "x", std::iter::once(&h));
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
