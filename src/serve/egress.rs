//! A connection attempt the allowlist does not cover, as the fence reads it
//! from the ruleset's NFLOG group: which policy governs it, what allowdns
//! handed the address out for, which entry covers the address on another
//! port; then the alert, the audit record and the counter, as for a denied
//! lookup.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use hickory_server::proto::rr::Name;

use crate::fence::handed::Handed;
use crate::fence::nflog::{Attempt, Proto, Reason, Report};
use crate::observe::alert::{Action, Egress};
use crate::observe::attribution::{Attribution, Need, Proto as AttributionProto, Why};
use crate::observe::audit::schema::{EgressDenied, RecordsLost};
use crate::observe::audit::{Event, EventLine};
use crate::observe::metrics::{self, METRICS};
use crate::policy::firewall::DenyAction;
use crate::policy::{Policy, Ports};
use crate::serve::service::Service;

/// The receiver of one namespace's attempts.
pub struct EgressReport(pub Arc<Service>);

impl Report for EgressReport {
    fn attempt(&mut self, attempt: Attempt) {
        self.0.egress(&attempt);
    }

    fn lost(&mut self, count: u64) {
        self.0.egress_lost(count);
    }
}

/// `any port`, or `443/tcp, 8443/tcp`.
fn ports_text(ports: &Ports) -> String {
    if ports.any || ports.listed.is_empty() {
        return "any port".into();
    }
    let listed: Vec<String> = ports
        .listed
        .iter()
        .map(|(p, port)| format!("{port}/{}", p.as_str()))
        .collect();
    listed.join(", ")
}

/// Whether `handed` came from learn or monitor mode's catch-all (its
/// pattern, in parentheses, is no name a policy can list).
fn outside_allowlist(handed: &Handed) -> bool {
    handed.rule.starts_with('(')
}

impl Service {
    /// Judges, alerts, audits and counts one attempt.
    pub fn egress(&self, attempt: &Attempt) {
        let in_force = self.state.snapshot();
        let netns = attempt.netns.as_deref().map(|p| p.as_path());
        let here = |p: &&Arc<Policy>| {
            p.firewall
                .as_ref()
                .is_some_and(|f| f.netns.as_deref() == netns)
        };
        let ip = attempt.dst.ip();
        // A forged source is the agent's own invention: it names no policy,
        // and all forgeries share one alert window.
        let forged = attempt.reason == Reason::Forged;
        let window = if forged {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            attempt.src.ip()
        };
        let policy = (!forged)
            .then(|| in_force.policies.for_client(attempt.src.ip()))
            .flatten()
            .filter(here)
            .or_else(|| in_force.policies.policies.iter().find(here))
            .map(|p| &**p);
        let action = if attempt.reason == Reason::Unlisted && policy.is_some_and(|p| p.monitor) {
            Action::Logged
        } else {
            Action::Blocked
        };
        let handed = self.firewall.as_ref().and_then(|f| {
            f.handed
                .lookup(ip, policy.map(|p| &*p.agent), Instant::now())
        });
        let catch_all = handed.as_ref().is_some_and(outside_allowlist);
        // An entry that covers the address: then only the port (or the
        // element's time) was wrong.
        let covering: Option<(String, String)> = policy
            .and_then(|p| {
                p.addresses
                    .iter()
                    .find(|a| a.net.contains(&ip))
                    .map(|a| (a.net.to_string(), ports_text(&a.ports)))
            })
            .or_else(|| {
                handed
                    .as_ref()
                    .filter(|h| !catch_all && Some(&*h.agent) == policy.map(|p| &*p.agent))
                    .map(|h| (h.rule.to_string(), ports_text(&h.ports)))
            });
        let resolved = match &handed {
            Some(h) if catch_all => format!(
                "resolved: {}, handed to agent {} outside the allowlist",
                h.name, h.agent
            ),
            Some(h) => format!(
                "resolved: {}, handed to agent {} for {}",
                h.name,
                h.agent,
                ports_text(&h.ports)
            ),
            None => "never handed out".into(),
        };
        let rule = match attempt.reason {
            Reason::Dns => Some("NONE - DNS goes to allowdns only.".to_string()),
            Reason::Forged => Some(format!(
                "NONE - DNS from {}, not an address of the namespace (a forged source).",
                attempt.src.ip()
            )),
            Reason::Special => Some(
                "NONE - special-purpose range the policy does not open (docs/special-addresses.md)."
                    .to_string(),
            ),
            Reason::Unlisted => covering.as_ref().map(|(entry, ports)| match &**ports {
                "any port" => {
                    format!("{entry} - allows any port (its firewall element had expired)")
                }
                ports => format!("{entry} - allows {ports} only"),
            }),
        };
        // TCP and UDP sockets only; the SYN's or datagram's 5-tuple is the socket's.
        let owner = self.attribution.as_ref().and_then(|a| {
            let proto = match attempt.proto {
                Proto::TCP => AttributionProto::Tcp,
                Proto::UDP => AttributionProto::Udp,
                _ => return None,
            };
            let need = if self.alerts.would_alert_egress(window) {
                Need::Alert
            } else {
                Need::Record
            };
            let agent = policy.map_or("", |p| &*p.agent);
            Some(a.lookup((netns, agent), proto, attempt.src, attempt.dst, need))
        });
        // A rejected SYN's reset closes the socket, often before it is looked
        // up: say so rather than that its process exited.
        let reset = attempt.proto == Proto::TCP
            && action == Action::Blocked
            && policy
                .and_then(|p| p.firewall.as_ref())
                .is_none_or(|f| f.deny_action == DenyAction::Reject);
        let owner = owner.map(|o| match o {
            Attribution::Unknown(Why::Exited) if reset => Attribution::Unknown(Why::Reset),
            o => o,
        });
        let agent: Arc<str> = policy.map_or_else(|| "(no policy)".into(), |p| p.agent.clone());
        let port = attempt.proto.has_ports().then_some(attempt.dst.port());
        let record = EgressDenied {
            agent: policy.map(|p| p.agent.to_string()),
            action: action.as_str().into(),
            client: attempt.src.to_string(),
            addr: ip.to_string(),
            port,
            proto: attempt.proto.name(),
            resolved: handed.as_ref().map(|h| h.name.clone()),
            resolved_agent: handed.as_ref().map(|h| h.agent.to_string()),
            resolved_ports: handed
                .as_ref()
                .filter(|_| !catch_all)
                .map(|h| ports_text(&h.ports)),
            rule: covering.as_ref().map(|(e, _)| e.clone()),
            rule_ports: covering.as_ref().map(|(_, p)| p.clone()),
            reason: attempt.reason.as_str().map(Into::into),
            netns: netns.map(|p| p.display().to_string()),
            owner: owner.as_ref().map(|o| o.fields()).unwrap_or_default(),
        };
        self.audit.event(&EventLine::at(
            attempt.ts,
            Event::EgressDenied(Box::new(record)),
        ));
        METRICS.egress(
            policy.map_or(metrics::NO_AGENT, |p| p.metrics_slot),
            action.as_str(),
        );
        self.alerts.egress(Egress {
            ts: attempt.ts,
            agent,
            client: attempt.src,
            window,
            destination: attempt.destination(),
            dst: (ip, port.unwrap_or(0), attempt.proto.0),
            resolved,
            resolved_name: handed.as_ref().and_then(|h| Name::from_ascii(&h.name).ok()),
            rule,
            action,
            owner,
        });
    }

    /// Reports the kernel could not hand over: `count` from a sequence
    /// gap, 0 for an overrun (its count follows with the next report).
    pub fn egress_lost(&self, count: u64) {
        let cause = if count == 0 {
            METRICS
                .egress_overruns
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            "NFLOG receive buffer overrun (ENOBUFS); the count follows"
        } else {
            METRICS
                .egress_lost
                .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
            "NFLOG receive buffer overrun (ENOBUFS)"
        };
        tracing::warn!(count, "blocked-connection reports lost: {cause}");
        self.audit
            .event(&EventLine::now(Event::EgressRecordsLost(RecordsLost {
                count,
                cause: Some(cause.into()),
            })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Protocol;

    #[test]
    fn ports_read_as_the_policy_writes_them() {
        assert_eq!(ports_text(&Ports::default()), "any port");
        let ports = Ports {
            any: false,
            listed: vec![(Protocol::Tcp, 443), (Protocol::Udp, 443)],
        };
        assert_eq!(ports_text(&ports), "443/tcp, 443/udp");
    }
}
