//! The audit log's schema: one type per line the log can hold, the query
//! record and every event. Writers build these and readers (`suggest`, the
//! tests) parse them; docs/manual.md "## Audit log" documents them, and
//! tests/it/audit_schema.rs checks that table against these types.
//!
//! The query record alone is written by a hand-written formatter
//! (`format.rs`, once per query); a test there checks it agrees with
//! [`QueryRecord`] byte for byte.

use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// What policy said about a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    /// Learn mode: outside the allowlist, resolved anyway.
    WouldDeny,
    /// Not served: no policy governs the client, or the request is not a
    /// question allowdns answers (bad format, opcode, class or type).
    Refused,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::WouldDeny => "would_deny",
            Decision::Refused => "refused",
        }
    }
}

/// One query record, one line per query whatever the decision. Fields in
/// the order they are written. `ts`, `client` and `decision` are required;
/// other missing fields read as empty, so hand-edited logs still load in
/// `suggest`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryRecord {
    /// When the query arrived: RFC 3339 UTC, microseconds.
    pub ts: String,
    /// `ip:port` of the querier: who asked.
    pub client: String,
    /// `udp` or `tcp`.
    #[serde(default)]
    pub transport: String,
    /// The governing policy's agent; `None` when no policy governs the client.
    pub agent: Option<String>,
    /// Lower case A-labels, no trailing dot; `None` for a malformed request.
    pub qname: Option<String>,
    /// `A`, `AAAA`, …; `None` for a malformed request.
    pub qtype: Option<String>,
    pub decision: Decision,
    /// The pattern that matched, to see why a name was allowed.
    pub rule: Option<String>,
    /// Allowed only through `allowed_dynamic_resolution`.
    #[serde(default)]
    pub dynamic: bool,
    /// The rcode answered, as dig spells it.
    #[serde(default)]
    pub rcode: String,
    /// What was answered, the CNAME chain included: what the fence was fed.
    #[serde(default)]
    pub answers: Vec<Answer>,
    /// Special-purpose addresses taken out of the answer; written only when
    /// some were, so lines stay short.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stripped: Vec<IpAddr>,
    /// Time waiting on the upstream, or `None` (local zone, cache, denial).
    pub upstream_ms: Option<Millis>,
    /// Exfiltration mark (`soft`, `budget`, `qtype`); written only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exfil: Option<String>,
    /// The process that asked: denials only (and lookups monitor mode logs).
    #[serde(flatten)]
    pub owner: OwnerFields,
}

/// The process behind a socket (docs/attribution.md); every field is
/// written only when known, so records that are not attributed stay as
/// they were. Found: `pid` … `parents`; not found: `owner_unknown` alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OwnerFields {
    /// PID as the client sees it (in its own PID namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// PID as allowdns sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_pid: Option<u32>,
    /// The kernel's short process name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The executable's path; empty when it cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// The command line, arguments joined by spaces, control characters escaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Parent processes, nearest first, up to the PID namespace's init or
    /// the first process of the client's network namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parents: Option<Vec<ParentRecord>>,
    /// Why the owner is not known: `exited`, `no permission`, `other host`,
    /// `over budget`, `lookup failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_unknown: Option<String>,
}

/// One parent process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParentRecord {
    pub pid: u32,
    pub host_pid: u32,
    pub cmdline: String,
}

/// One answer record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub ttl: u32,
    /// The record data in master-file form (an address for A/AAAA).
    pub data: String,
}

/// Milliseconds, written with 3 decimals (microsecond precision), as the
/// hot-path formatter writes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Millis(pub f64);

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.0.is_finite() {
            return s.serialize_none();
        }
        let raw = serde_json::value::RawValue::from_string(format!("{:.3}", self.0))
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        f64::deserialize(d).map(Millis)
    }
}

/// Any line that is not a query record: when, and what happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventLine {
    /// RFC 3339 UTC, microseconds.
    pub ts: String,
    #[serde(flatten)]
    pub event: Event,
}

impl EventLine {
    /// The event, stamped now.
    pub fn now(event: Event) -> EventLine {
        EventLine::at(SystemTime::now(), event)
    }

    pub fn at(ts: SystemTime, event: Event) -> EventLine {
        EventLine {
            ts: humantime::format_rfc3339_micros(ts).to_string(),
            event,
        }
    }

    /// The line as written, without the newline.
    pub fn to_json(&self) -> String {
        // Nothing here can fail to serialize: no maps, string keys only.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Every event, by its `event` field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Records the writer could not write (buffer full, disk full).
    AuditRecordsLost(RecordsLost),
    /// A reload put new policies in force.
    Reload(Reload),
    /// A reload was refused; the previous policies stay in force.
    ReloadFailed(ReloadFailed),
    /// A temporary exception was granted (written before it takes effect).
    Grant(GrantLife),
    /// A grant reached its end.
    GrantExpired(GrantLife),
    /// A grant was ended early through the control socket.
    GrantRevoked(GrantLife),
    /// A grant whose `grant` line could not be confirmed: it never took effect.
    GrantRefused(GrantLife),
    /// A grant dropped because a reload removed its agent's policy.
    GrantDropped(GrantLife),
    /// A policy file entry's `expires` passed.
    EntryExpired(EntryExpired),
    /// On start, an element a previous run left in a set that the policy
    /// in force does not allow was deleted.
    FenceWithdrawn(FenceWithdrawn),
    /// A connection outside the allowlist: dropped, or in monitor mode
    /// passed and logged. One per new flow.
    EgressDenied(Box<EgressDenied>),
    /// Blocked-connection reports the kernel could not hand to allowdns.
    EgressRecordsLost(RecordsLost),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordsLost {
    /// How many records are missing from the log here.
    pub count: u64,
    /// Why writing failed, while it did (the I/O error); absent for overflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reload {
    /// What changed, one line per agent (added, removed, entries).
    pub changes: Vec<String>,
    /// Local zones in force after the reload.
    pub zones: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReloadFailed {
    /// Every error, `file:line: message`, the first one first.
    pub errors: Vec<String>,
}

/// What a grant allows, why, when and by whom: the part of it that the
/// audit log and control replies write alike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrantTerms {
    pub agent: String,
    /// The pattern granted, canonical, as a policy rule holds it.
    pub pattern: String,
    /// Why it was granted: required.
    pub reason: String,
    /// RFC 3339 UTC, seconds.
    pub granted_at: String,
    /// RFC 3339 UTC, seconds.
    pub expires: String,
    /// Who granted it (the control socket peer's uid).
    pub uid: Option<u32>,
}

/// A grant at one point of its life; every grant event carries all of it,
/// so one line tells the whole story.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrantLife {
    #[serde(flatten)]
    pub terms: GrantTerms,
    /// Who revoked it, once revoked.
    pub revoked_by: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryExpired {
    pub agent: String,
    /// The entry as the policy holds it (pattern or network).
    pub entry: String,
    /// The policy file it is written in, to find and remove it.
    pub file: String,
    /// RFC 3339 UTC, seconds.
    pub expires: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FenceWithdrawn {
    /// The agent and name the element's label gives; `None` without one.
    pub agent: Option<String>,
    pub name: Option<String>,
    pub addr: String,
    /// The table and namespace it was in.
    pub target: String,
    pub reason: String,
}

/// One connection attempt the allowlist does not cover, with what allowdns
/// knows of its destination and of the process that made it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EgressDenied {
    /// The governing policy's agent; `None` when none governs the source.
    pub agent: Option<String>,
    /// `blocked`, or `logged` in monitor mode.
    pub action: String,
    /// `ip:port` the attempt came from (port 0 without ports).
    pub client: String,
    /// The destination address.
    pub addr: String,
    /// The destination port; absent for protocols without ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `sctp`, … or `proto-N`.
    pub proto: String,
    /// The name allowdns handed this address out for, if it did.
    pub resolved: Option<String>,
    /// The agent it was handed out to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_agent: Option<String>,
    /// The ports that name's rule allows (`any`, `443/tcp`, …); absent for
    /// learn and monitor mode's catch-all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ports: Option<String>,
    /// The allowlist entry covering the address on other ports, if any.
    pub rule: Option<String>,
    /// The ports that entry allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_ports: Option<String>,
    /// Denied before the sets, in every mode: `dns elsewhere`,
    /// `special-purpose` or `forged source`; absent for the final rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The namespace the attempt was logged in; absent for allowdns's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The process that connected (TCP and UDP), when attribution is on.
    #[serde(flatten)]
    pub owner: OwnerFields,
}

impl Event {
    /// One fully populated instance of every event, for the tests that
    /// check the docs against the schema. A new event goes here too (the
    /// test compares this list with the variants serde knows).
    pub fn examples() -> Vec<Event> {
        let grant = GrantLife {
            terms: GrantTerms {
                agent: "agent".into(),
                pattern: "*.example.com".into(),
                reason: "why".into(),
                granted_at: "2026-01-01T00:00:00Z".into(),
                expires: "2026-01-01T01:00:00Z".into(),
                uid: Some(1000),
            },
            revoked_by: Some(0),
        };
        vec![
            Event::AuditRecordsLost(RecordsLost {
                count: 1,
                cause: Some("No space left on device (os error 28)".into()),
            }),
            Event::Reload(Reload {
                changes: vec!["agent: +1 entries".into()],
                zones: 1,
            }),
            Event::ReloadFailed(ReloadFailed {
                errors: vec!["error: p.yaml:1: bad".into()],
            }),
            Event::Grant(grant.clone()),
            Event::GrantExpired(grant.clone()),
            Event::GrantRevoked(grant.clone()),
            Event::GrantRefused(grant.clone()),
            Event::GrantDropped(grant),
            Event::EntryExpired(EntryExpired {
                agent: "agent".into(),
                entry: "example.com".into(),
                file: "/etc/allowdns/p.yaml".into(),
                expires: "2026-01-01T00:00:00Z".into(),
            }),
            Event::FenceWithdrawn(FenceWithdrawn {
                agent: Some("agent".into()),
                name: Some("old.example.com".into()),
                addr: "192.0.2.1".into(),
                target: "table inet allowdns in netns /run/netns/agent".into(),
                reason: "the policy no longer allows old.example.com".into(),
            }),
            Event::EgressDenied(Box::new(EgressDenied {
                agent: Some("agent".into()),
                action: "blocked".into(),
                client: "10.0.0.2:40000".into(),
                addr: "192.0.2.1".into(),
                port: Some(22),
                proto: "tcp".into(),
                resolved: Some("api.example.com".into()),
                resolved_agent: Some("agent".into()),
                resolved_ports: Some("443/tcp".into()),
                rule: Some("api.example.com".into()),
                rule_ports: Some("443/tcp".into()),
                reason: Some("special-purpose".into()),
                netns: Some("/run/netns/agent".into()),
                owner: OwnerFields::example(
                    "python3",
                    "/usr/bin/python3.12",
                    "python3 /opt/agent/main.py",
                    "sh -c python3 /opt/agent/main.py",
                ),
            })),
            Event::EgressRecordsLost(RecordsLost {
                count: 3,
                cause: Some("NFLOG receive buffer overrun".into()),
            }),
        ]
    }
}

impl OwnerFields {
    /// Every field set, for the examples: `comm` (`exe`) running `cmdline`
    /// under a parent running `parent`.
    fn example(comm: &str, exe: &str, cmdline: &str, parent: &str) -> OwnerFields {
        OwnerFields {
            pid: Some(7),
            host_pid: Some(412233),
            comm: Some(comm.into()),
            exe: Some(exe.into()),
            cmdline: Some(cmdline.into()),
            parents: Some(vec![ParentRecord {
                pid: 1,
                host_pid: 412230,
                cmdline: parent.into(),
            }]),
            owner_unknown: Some("exited".into()),
        }
    }
}

impl QueryRecord {
    /// A fully populated record (every optional field set), for the tests.
    pub fn example() -> QueryRecord {
        QueryRecord {
            ts: "2026-01-01T00:00:00.000000Z".into(),
            client: "10.0.0.1:5353".into(),
            transport: "udp".into(),
            agent: Some("agent".into()),
            qname: Some("www.example.com".into()),
            qtype: Some("A".into()),
            decision: Decision::Allow,
            rule: Some("*.example.com".into()),
            dynamic: false,
            rcode: "NOERROR".into(),
            answers: vec![Answer {
                name: "www.example.com".into(),
                rtype: "A".into(),
                ttl: 60,
                data: "192.0.2.1".into(),
            }],
            stripped: vec![IpAddr::from([10, 9, 9, 9])],
            upstream_ms: Some(Millis(1.5)),
            exfil: Some("soft".into()),
            owner: OwnerFields::example(
                "getent",
                "/usr/bin/getent",
                "getent hosts denied.example",
                "python3 /opt/agent/main.py",
            ),
        }
    }
}
