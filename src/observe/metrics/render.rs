//! The Prometheus text exposition of the counters.

// Hand-written, not a Prometheus crate: the counters are fixed arrays
// indexed by agent slot (no label map or lock per query); not benchmarked.
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::*;
use crate::sync::lock;
use nix::libc;
use nix::sys::socket::getsockopt;
use nix::{getsockopt_impl, sockopt_impl};

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let agents = lock(&self.agents).clone();
        let label = |slot: usize| -> String {
            match slot {
                0 => "(none)".into(),
                s if s == MAX_AGENTS - 1 && agents.len() + 1 >= MAX_AGENTS => "(other)".into(),
                s => agents.get(s - 1).map_or("(unknown)".into(), |a| escape(a)),
            }
        };
        let sum = |f: &dyn Fn(&Shard) -> &AtomicU64| -> u64 {
            self.shards.iter().map(|s| f(s).load(Relaxed)).sum()
        };
        let mut m = Metric::counter(
            &mut out,
            "allowdns_queries_total",
            "Questions answered, by agent, policy decision and query type.",
        );
        for slot in 0..(agents.len() + 1).min(MAX_AGENTS) {
            for (d, decision) in DECISIONS.iter().enumerate() {
                for q in 0..=QTYPES.len() {
                    let n = sum(&|s| &s.queries[slot][d][q]);
                    if n == 0 {
                        continue;
                    }
                    let qtype = QTYPES.get(q).map_or("OTHER".to_string(), |t| t.to_string());
                    let labels = format!(
                        "agent=\"{}\",decision=\"{}\",qtype=\"{qtype}\"",
                        label(slot),
                        decision.as_str()
                    );
                    m.sample(&labels, n);
                }
            }
        }
        let mut m = Metric::counter(
            &mut out,
            "allowdns_responses_total",
            "Replies sent, by response code.",
        );
        for r in 0..RCODES {
            let n = sum(&|s| &s.rcodes[r]);
            if n > 0 {
                m.sample(&format!("rcode=\"{}\"", rcode_label(r)), n);
            }
        }
        Metric::new(
            &mut out,
            "allowdns_query_duration_seconds",
            "histogram",
            "Time from a question's arrival to its reply.",
        )
        .histogram(self.shards.iter().map(|s| &s.latency));
        Metric::counter(
            &mut out,
            "allowdns_cache_hits_total",
            "Allowed questions answered from the cache (each CNAME hop counts).",
        )
        .sample("", sum(&|s| &s.cache_hits));
        let counters: [(&str, &str, &AtomicU64); 12] = [
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
                "allowdns_upstream_dropped_total",
                "Upstream datagrams dropped: from another address or port, an ID not in flight, or another question.",
                &self.upstream_dropped,
            ),
            (
                "allowdns_upstream_case_changed_total",
                "Upstream answers whose name was not in the random case asked (DNS 0x20); each question was asked again in lower case.",
                &self.upstream_case_changed,
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
                "allowdns_attribution_queue_full_total",
                "UDP denials audited as over budget without looking up their asker: the lookups queue was full.",
                &self.attribution_queue_full,
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
            Metric::counter(&mut out, name, help).sample("", value.load(Relaxed));
        }
        // Every known agent gets its series, zeros included: a rate over a
        // security counter must not wait for the first event to exist.
        let agent_slots = (agents.len() + 1).min(MAX_AGENTS);
        let mut m = Metric::counter(
            &mut out,
            "allowdns_stripped_addresses_total",
            "Answers stripped of special-purpose addresses, by agent.",
        );
        for slot in 0..agent_slots {
            let n = self.stripped[slot].load(Relaxed);
            if slot > 0 || n > 0 {
                m.sample(&format!("agent=\"{}\"", label(slot)), n);
            }
        }
        // Per agent and one more label: (name, help, label, its values, count).
        type Count<'c> = &'c dyn Fn(usize, usize) -> u64;
        let by_agent: [(&str, &str, &str, &[&str], Count); 2] = [
            (
                "allowdns_exfil_total",
                "Questions marked by the exfiltration budget, by agent and mark (soft, budget, qtype).",
                "mark",
                &EXFIL_MARKS,
                &|slot, i| self.exfil[slot][i].load(Relaxed),
            ),
            (
                "allowdns_egress_total",
                "Connection attempts outside the allowlist, by agent and action (blocked, logged).",
                "action",
                &EGRESS_ACTIONS,
                &|slot, i| self.egress[slot][i].load(Relaxed),
            ),
        ];
        for (name, help, key, values, count) in by_agent {
            let mut m = Metric::counter(&mut out, name, help);
            for slot in 0..agent_slots {
                for (i, value) in values.iter().enumerate() {
                    let n = count(slot, i);
                    if slot > 0 || n > 0 {
                        m.sample(&format!("agent=\"{}\",{key}=\"{value}\"", label(slot)), n);
                    }
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
            Metric::counter(&mut out, name, help).sample("", value.load(Relaxed));
        }
        if let Some((stats, sinks)) = &*lock(&self.alerts) {
            let mut m = Metric::counter(
                &mut out,
                "allowdns_alerts_total",
                "Alerts raised: stderr alert blocks, and threshold notifications.",
            );
            m.sample("kind=\"stderr\"", stats.stderr_alerts.load(Relaxed));
            m.sample("kind=\"notification\"", stats.notifications.load(Relaxed));
            let mut m = Metric::counter(
                &mut out,
                "allowdns_alert_deliveries_total",
                "Notification delivery outcomes per sink.",
            );
            for (sink, s) in sinks {
                for (outcome, n) in [
                    ("sent", &s.sent),
                    ("failed_attempt", &s.failed_attempts),
                    ("given_up", &s.given_up),
                    ("dropped", &s.dropped),
                ] {
                    let labels = format!("sink=\"{sink}\",outcome=\"{outcome}\"");
                    m.sample(&labels, n.load(Relaxed));
                }
            }
        }
        Metric::new(
            &mut out,
            "allowdns_upstream_duration_seconds",
            "histogram",
            "Upstream exchange time.",
        )
        .histogram(std::iter::once(&self.upstream_latency));
        self.transports.render(&mut out);
        out
    }
}

impl Transports {
    fn render(&self, out: &mut String) {
        for (name, help, samples) in [
            (
                "allowdns_dropped_messages_total",
                "Messages dropped without a reply: shorter than a header, or responses (QR=1).",
                [
                    ("reason=\"short\"", &self.dropped_short),
                    ("reason=\"response\"", &self.dropped_responses),
                ],
            ),
            (
                "allowdns_tcp_connections_total",
                "TCP connections accepted, and those closed at once over the connection bound.",
                [
                    ("outcome=\"accepted\"", &self.tcp_accepted),
                    ("outcome=\"rejected\"", &self.tcp_rejected),
                ],
            ),
        ] {
            let mut m = Metric::counter(out, name, help);
            for (labels, value) in samples {
                m.sample(labels, value.load(Relaxed));
            }
        }
        Metric::new(
            out,
            "allowdns_tcp_connections_open",
            "gauge",
            "TCP connections open now.",
        )
        .sample("", self.tcp_open.load(Relaxed));
        let listeners = lock(&self.udp_listeners);
        if !listeners.is_empty() {
            let drops: u64 = listeners
                .iter()
                .filter_map(|s| getsockopt(s, MemInfo).ok())
                .map(|m| u64::from(m[SK_MEMINFO_DROPS]))
                .sum();
            Metric::counter(
                out,
                "allowdns_udp_receive_drops_total",
                "Questions the kernel dropped at a UDP listener's socket, its receive queue full (never read, never audited).",
            )
            .sample("", drops);
        }
    }
}

// A socket's memory counters (`SO_MEMINFO`): per socket, so they are right
// for a listener bound in another namespace (the kennel's), where
// /proc/net/udp would not show it.
sockopt_impl!(MemInfo, GetOnly, libc::SOL_SOCKET, SO_MEMINFO, [u32; 9]);
/// libc does not export it; 55 in the generic and x86 `asm/socket.h`
/// (mips, sparc and parisc number it otherwise).
const SO_MEMINFO: libc::c_int = 55;
const SK_MEMINFO_DROPS: usize = 8;

/// One metric family: its HELP and TYPE lines once, then its samples.
pub(super) struct Metric<'o> {
    out: &'o mut String,
    name: &'o str,
}

impl<'o> Metric<'o> {
    pub(super) fn new(out: &'o mut String, name: &'o str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Metric { out, name }
    }

    fn counter(out: &'o mut String, name: &'o str, help: &str) -> Self {
        Metric::new(out, name, "counter", help)
    }

    /// One sample; `labels` without braces, empty for none.
    fn sample(&mut self, labels: &str, value: impl std::fmt::Display) {
        let name = self.name;
        let _ = match labels {
            "" => writeln!(self.out, "{name} {value}"),
            labels => writeln!(self.out, "{name}{{{labels}}} {value}"),
        };
    }

    /// The sum of `parts` (one histogram split across shards).
    pub(super) fn histogram<'h>(self, parts: impl Iterator<Item = &'h Histogram> + Clone) {
        let mut total = 0;
        for i in 0..=BUCKETS_US.len() {
            total += parts
                .clone()
                .map(|h| h.buckets[i].load(Relaxed))
                .sum::<u64>();
            let le = BUCKETS_US
                .get(i)
                .map_or("+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
            let name = self.name;
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{le}\"}} {total}");
        }
        let sum_ns: u64 = parts.map(|h| h.sum_ns.load(Relaxed)).sum();
        let name = self.name;
        let _ = writeln!(self.out, "{name}_sum {}", sum_ns as f64 / 1e9);
        let _ = writeln!(self.out, "{name}_count {total}");
    }
}

/// The label for an rcode slot: the full 12-bit code, not just the header's
/// low 4 bits (else BADVERS would read as NOERROR).
pub(super) fn rcode_label(slot: usize) -> String {
    match slot {
        // 16 is BADSIG only in TSIG replies, which allowdns never sends.
        16 => "BADVERS".into(),
        s if s >= RCODES - 1 => "OTHER".into(),
        s => crate::observe::audit::rcode_name(<ResponseCode as From<u16>>::from(s as u16))
            .into_owned(),
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
