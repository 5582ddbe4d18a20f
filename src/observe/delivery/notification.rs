//! What is sent: one notification about an agent's denied lookups, stripped
//! answers or exfiltration marks, as the JSON body every sink carries and the
//! human `text` line inside it.

use std::net::IpAddr;
use std::time::SystemTime;

use serde::Serialize;

use super::threshold::{Kind, Raised, What};
use crate::observe::audit::{display_name, type_name};

/// Names listed in the human `text` (the JSON lists up to 20).
const TEXT_NAMES: usize = 5;

/// One notification, shared by every sink; each renders its own body
/// because `dropped` is per sink.
#[derive(Debug)]
pub struct Notification {
    /// Same in every attempt and every sink, so a receiver can drop a retry
    /// of what it already got (an answer lost after the request arrived).
    pub id: String,
    /// What the notification is about; its `event` field.
    pub kind: Kind,
    pub agent: String,
    pub count: u64,
    pub threshold: u32,
    pub window_secs: u64,
    pub repeat: bool,
    pub first_ts: String,
    pub last_ts: String,
    pub clients: Vec<String>,
    pub names: Vec<NameCount>,
    pub unlisted: u64,
    /// What happened (marks, stripped addresses); empty for denials.
    pub what: Vec<WhatCount>,
    /// This machine's name: several resolvers may feed one relay.
    pub host: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct NameCount {
    pub qname: String,
    pub qtype: String,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct WhatCount {
    /// An exfiltration mark (soft, budget, qtype) or a stripped address.
    pub what: String,
    pub count: u64,
}

/// The JSON body, field order as documented in docs/manual.md.
#[derive(Serialize)]
struct Body<'a> {
    event: &'static str,
    id: &'a str,
    text: String,
    agent: &'a str,
    count: u64,
    threshold: u32,
    window_secs: u64,
    repeat: bool,
    first_ts: &'a str,
    last_ts: &'a str,
    clients: &'a [String],
    names: &'a [NameCount],
    unlisted: u64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    what: &'a [WhatCount],
    host: Option<&'a str>,
    dropped: u64,
}

impl Notification {
    pub fn new(id: String, raised: Raised, host: Option<String>) -> Notification {
        let Raised {
            kind,
            threshold,
            agent,
            batch,
            repeat,
        } = raised;
        let ts = |t: Option<SystemTime>| {
            humantime::format_rfc3339_seconds(t.unwrap_or_else(SystemTime::now)).to_string()
        };
        Notification {
            id,
            kind,
            agent: agent.to_string(),
            count: batch.count,
            threshold: threshold.count,
            window_secs: threshold.window.as_secs(),
            repeat,
            first_ts: ts(batch.first),
            last_ts: ts(batch.last),
            clients: batch.clients.iter().map(IpAddr::to_string).collect(),
            names: batch
                .names
                .iter()
                // A connection to an address never handed out has no name.
                .filter(|(name, _, _)| !name.is_root())
                .map(|(name, qtype, count)| NameCount {
                    qname: display_name(name),
                    qtype: type_name(*qtype).into_owned(),
                    count: *count,
                })
                .collect(),
            unlisted: batch.unlisted,
            what: batch
                .what
                .iter()
                .map(|(what, count)| WhatCount {
                    what: match what {
                        What::Address(ip) => match crate::policy::special::special(*ip) {
                            Some(why) => format!("{ip} ({why})"),
                            None => ip.to_string(),
                        },
                        What::Mark(_) | What::Destination(..) => what.to_string(),
                    },
                    count: *count,
                })
                .collect(),
            host,
        }
    }

    /// The human line, for relays that show only `text` (Slack, Telegram).
    pub fn text(&self, dropped: u64) -> String {
        let on = self
            .host
            .as_deref()
            .map(|h| format!(" on {h}"))
            .unwrap_or_default();
        let going = if self.repeat { ", still going" } else { "" };
        let (agent, count, secs) = (&self.agent, self.count, self.window_secs);
        let mut text = match self.kind {
            Kind::Denied => format!(
                "[!] allowdns{on}: agent {agent} made {count} denied DNS lookups within {secs} s (threshold: more than {}){going}",
                self.threshold,
            ),
            Kind::Stripped => format!(
                "[!] allowdns{on}: agent {agent} got {count} answer(s) stripped of special-purpose addresses within {secs} s{going}"
            ),
            Kind::Exfil => format!(
                "[!] allowdns{on}: agent {agent} had {count} lookup(s) marked by the exfiltration budget within {secs} s{going}"
            ),
            Kind::Egress => format!(
                "[!] allowdns{on}: agent {agent} made {count} connection attempt(s) outside the allowlist within {secs} s (threshold: more than {}){going}",
                self.threshold,
            ),
        };
        if !self.clients.is_empty() {
            text.push_str(&format!(" from {}", self.clients.join(", ")));
        }
        let shown: Vec<String> = self
            .names
            .iter()
            .take(TEXT_NAMES)
            .map(|n| match n.count {
                1 => format!("{} {}", n.qname, n.qtype),
                c => format!("{} {} x{c}", n.qname, n.qtype),
            })
            .collect();
        let (shown, shown_count): (Vec<String>, u64) = match self.kind {
            // Connections list their destinations; the names they were resolved for follow.
            Kind::Egress => (
                self.what
                    .iter()
                    .take(TEXT_NAMES)
                    .map(|w| match w.count {
                        1 => w.what.clone(),
                        c => format!("{} x{c}", w.what),
                    })
                    .collect(),
                self.what.iter().take(TEXT_NAMES).map(|w| w.count).sum(),
            ),
            _ => (
                shown,
                self.names.iter().take(TEXT_NAMES).map(|n| n.count).sum(),
            ),
        };
        text.push_str(&format!(": {}", shown.join(", ")));
        let more = self.count.saturating_sub(shown_count);
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
        if self.kind != Kind::Egress && !self.what.is_empty() {
            let what: Vec<String> = self
                .what
                .iter()
                .map(|w| match w.count {
                    1 => w.what.clone(),
                    c => format!("{} x{c}", w.what),
                })
                .collect();
            text.push_str(&format!(
                " ({}: {})",
                match self.kind {
                    Kind::Exfil => "marks",
                    _ => "stripped",
                },
                what.join(", ")
            ));
        }
        text.push_str(". The audit log has each one.");
        if dropped > 0 {
            text.push_str(&format!(
                " ({dropped} earlier notification(s) could not be delivered.)"
            ));
        }
        text
    }

    /// The JSON object a sink sends.
    pub fn body(&self, dropped: u64) -> String {
        let body = Body {
            event: self.kind.event(),
            id: &self.id,
            text: self.text(dropped),
            agent: &self.agent,
            count: self.count,
            threshold: self.threshold,
            window_secs: self.window_secs,
            repeat: self.repeat,
            first_ts: &self.first_ts,
            last_ts: &self.last_ts,
            clients: &self.clients,
            names: &self.names,
            unlisted: self.unlisted,
            what: &self.what,
            host: self.host.as_deref(),
            dropped,
        };
        serde_json::to_string(&body).unwrap_or_else(|e| {
            let event = self.kind.event();
            format!("{{\"event\":\"{event}\",\"error\":\"{e}\"}}")
        })
    }
}

/// This machine's name, if the kernel says.
pub fn hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::threshold::{Batch, Lookup, Threshold};
    use super::*;
    use hickory_proto::rr::{Name, RecordType};
    use std::time::Duration;

    pub(in super::super) fn raised(agent: &str) -> Raised {
        let mut batch = Batch::new();
        let lookups = [
            ("sketchy-mirror.example.com", RecordType::A),
            ("x1.tunnel.example", RecordType::TXT),
            ("x1.tunnel.example", RecordType::TXT),
        ];
        for (i, (name, qtype)) in lookups.into_iter().enumerate() {
            batch.add(&Lookup {
                ts: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i as u64),
                client: "10.200.1.2".parse().unwrap(),
                qname: Name::from_ascii(name).unwrap(),
                qtype,
                what: Vec::new(),
            });
        }
        Raised {
            kind: Kind::Denied,
            threshold: THRESHOLD,
            agent: agent.into(),
            batch,
            repeat: false,
        }
    }

    pub(in super::super) const THRESHOLD: Threshold = Threshold {
        count: 2,
        window: Duration::from_secs(300),
    };

    #[test]
    fn the_body_describes_itself() {
        let n = Notification::new(
            "box-812-1700000000000-7".into(),
            raised("travel_agent_v1"),
            Some("box".into()),
        );
        let v: serde_json::Value = serde_json::from_str(&n.body(4)).unwrap();
        assert_eq!(v["event"], "allowdns.denied_lookups");
        assert_eq!(v["id"], "box-812-1700000000000-7");
        assert_eq!(v["agent"], "travel_agent_v1");
        assert_eq!(v["count"], 3);
        assert_eq!(v["threshold"], 2);
        assert_eq!(v["window_secs"], 300);
        assert_eq!(v["first_ts"], "2023-11-14T22:13:20Z");
        assert_eq!(v["last_ts"], "2023-11-14T22:13:22Z");
        assert_eq!(v["clients"], serde_json::json!(["10.200.1.2"]));
        assert_eq!(
            v["names"],
            serde_json::json!([
                {"qname": "sketchy-mirror.example.com", "qtype": "A", "count": 1},
                {"qname": "x1.tunnel.example", "qtype": "TXT", "count": 2},
            ])
        );
        assert_eq!(v["dropped"], 4);
        assert_eq!(v["host"], "box");
        assert_eq!(
            v["text"],
            "[!] allowdns on box: agent travel_agent_v1 made 3 denied DNS lookups within 300 s \
             (threshold: more than 2) from 10.200.1.2: sketchy-mirror.example.com A, \
             x1.tunnel.example TXT x2. The audit log has each one. \
             (4 earlier notification(s) could not be delivered.)"
        );
    }

    #[test]
    fn a_security_event_names_its_kind_and_what_happened() {
        let mut batch = Batch::new();
        for (i, mark) in ["soft", "budget", "budget"].into_iter().enumerate() {
            batch.add(&Lookup {
                ts: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i as u64),
                client: "10.200.1.2".parse().unwrap(),
                qname: Name::from_ascii(format!("n{i}.t.cdn.test")).unwrap(),
                qtype: RecordType::A,
                what: vec![What::Mark(mark)],
            });
        }
        let raised = Raised {
            kind: Kind::Exfil,
            threshold: Threshold {
                count: 0,
                window: Duration::from_secs(60),
            },
            agent: "a".into(),
            batch,
            repeat: true,
        };
        let n = Notification::new("id".into(), raised, None);
        let v: serde_json::Value = serde_json::from_str(&n.body(0)).unwrap();
        assert_eq!(v["event"], "allowdns.exfiltration");
        assert_eq!(v["threshold"], 0);
        assert_eq!(
            v["what"],
            serde_json::json!([{"what": "soft", "count": 1}, {"what": "budget", "count": 2}])
        );
        assert_eq!(
            v["text"],
            "[!] allowdns: agent a had 3 lookup(s) marked by the exfiltration budget within 60 s, \
             still going from 10.200.1.2: n0.t.cdn.test A, n1.t.cdn.test A, n2.t.cdn.test A \
             (marks: soft, budget x2). The audit log has each one."
        );
        // A denial's body has no `what`: its format is unchanged.
        let denial = Notification::new("id".into(), raised_denial(), None);
        assert!(!denial.body(0).contains("\"what\""));
    }

    fn raised_denial() -> Raised {
        raised("travel_agent_v1")
    }
}
