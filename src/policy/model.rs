//! The compiled model of one agent's policy: name rules ([`Rule`]), address
//! rules ([`AddressRule`]), their [`Ports`], and the [`Policy`] that holds
//! them with its name index. Built by [`super::compile`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

use super::exfil_limits;
use super::firewall::FirewallConfig;
use super::matcher::Matcher;
use super::merge::RuleBuilder;

/// Transport protocol of a port-restricted destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Where traffic to a destination may go: any port, or only the listed ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ports {
    /// True once any entry for the destination names no port.
    pub any: bool,
    /// (protocol, port) pairs the firewall enforces when `any` is false.
    pub listed: Vec<(Protocol, u16)>,
}

/// One allowlist rule for names.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The canonical pattern, as written to the audit log's `rule` field.
    pub pattern: Arc<str>,
    /// Allowed only through `allowed_dynamic_resolution`: answered, but flagged.
    pub dynamic: bool,
    /// Ports from `expected_outbound`, for the firewall.
    pub ports: Ports,
    /// After this the rule allows nothing (`expires:` or a grant's end).
    pub expires: Option<SystemTime>,
    /// Set for run-time grants: the reason given, for the audit log.
    pub grant: Option<Arc<str>>,
    /// Query types answered (`qtypes:`); `None`: the default for the
    /// pattern (see [`super::qtypes::qtype_allowed`]).
    pub qtypes: Option<Arc<[hickory_proto::rr::RecordType]>>,
    /// What the query path needs to know about `pattern`, worked out once
    /// when the rule is built rather than by scanning it per question.
    pub facts: PatternFacts,
}

/// Facts about a rule's pattern that depend on the pattern alone, so they
/// are computed at load time ([`PatternFacts::of`]) and read per question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatternFacts {
    /// The pattern holds `*` or `?`: it answers only address types unless
    /// its entry lists `qtypes`, and a new name under it is charged to the
    /// exfiltration budget.
    pub wildcard: bool,
    /// Labels in the pattern's fixed suffix, those after its last `*` or
    /// `?` (`*.github.io`: 2, `*`: 0; 0 for an exact name). The budget
    /// pools names whose registrable domain has more labels than this.
    pub fixed_labels: u8,
}

impl PatternFacts {
    /// The facts of a canonical pattern.
    pub fn of(pattern: &str) -> Self {
        let Some(at) = pattern.rfind(['*', '?']) else {
            return PatternFacts {
                wildcard: false,
                fixed_labels: 0,
            };
        };
        let fixed = pattern[at..].split_once('.').map_or("", |(_, rest)| rest);
        let labels = if fixed.is_empty() {
            0
        } else {
            fixed.split('.').count()
        };
        PatternFacts {
            wildcard: true,
            // A name has at most 127 labels.
            fixed_labels: u8::try_from(labels).unwrap_or(u8::MAX),
        }
    }
}

impl Rule {
    /// False once the rule has expired. Expired rules are also dropped from
    /// the index when they expire; this check closes the gap until then.
    pub fn live(&self) -> bool {
        self.expires.is_none_or(|at| SystemTime::now() < at)
    }

    fn live_at(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|at| now < at)
    }
}

/// An IP or CIDR destination, fed to the firewall without DNS.
#[derive(Clone, Debug)]
pub struct AddressRule {
    pub net: IpNet,
    pub ports: Ports,
    /// After this the range leaves the firewall sets.
    pub expires: Option<SystemTime>,
}

/// One agent's validated, compiled policy.
#[derive(Debug)]
pub struct Policy {
    /// `agent_name`, shown in alerts and audit records.
    pub agent: Arc<str>,
    /// The file it came from, for messages.
    pub source: PathBuf,
    /// Source networks it governs; empty means every client.
    pub clients: Vec<IpNet>,
    /// Name rules, indexed by [`RuleId`].
    pub rules: Vec<Rule>,
    /// Address destinations.
    pub addresses: Vec<AddressRule>,
    /// Where handed-out addresses are fed; `None` disables feeding.
    pub firewall: Option<FirewallConfig>,
    /// `mode: learn`: the catch-all rule unlisted names resolve under.
    pub learn: Option<Rule>,
    /// `mode: monitor`: `learn` is set too, but what it resolves is not fed
    /// (the ruleset's monitor set passes it), and everything outside the
    /// allowlist is alerted.
    pub monitor: bool,
    /// What the query path keys this agent's cache, merged questions and
    /// upstream share by (see [`crate::policy::name::PolicyId`]).
    pub id: crate::policy::name::PolicyId,
    /// Index of the agent's series in the metrics; 0 until the loader
    /// assigns it (`ops::startup`), so `policy/` needs no metrics table.
    pub metrics_slot: u16,
    /// The exfiltration budget under wildcards (`exfil:`).
    pub exfil: exfil_limits::Limits,
    pub(super) matcher: Matcher,
    /// The file's name entries one by one, before merging: `effective`
    /// rebuilds from these, so a merged rule's longer-lived source comes
    /// back alone once the shorter-lived one expires.
    pub(super) entries: Arc<[Rule]>,
    /// The file's address entries one by one, likewise.
    pub(super) address_entries: Arc<[AddressRule]>,
    /// Special-purpose ranges name entries opt in to (`private:`).
    pub private: Arc<[crate::policy::private::Private]>,
    /// Ports opened to inbound connections (`inbound:`), for the ruleset.
    pub inbound: Vec<(Protocol, u16)>,
}

impl Policy {
    /// The rule allowing a canonical query key, if any.
    pub fn rule_for(&self, key: &str) -> Option<&Rule> {
        self.matcher.lookup(key).map(|id| &self.rules[id as usize])
    }

    /// The file's name entries as written, one per entry (`rules` holds
    /// them merged by pattern).
    pub fn entries(&self) -> &[Rule] {
        &self.entries
    }

    /// The file's address entries as written, one per entry.
    pub fn address_entries(&self) -> &[AddressRule] {
        &self.address_entries
    }

    /// Every expiry of this policy, entries and merged rules alike.
    pub(super) fn expiries(&self) -> impl Iterator<Item = SystemTime> + '_ {
        let rules = self.rules.iter().chain(self.entries.iter());
        let addresses = self.addresses.iter().chain(self.address_entries.iter());
        rules
            .filter_map(|r| r.expires)
            .chain(addresses.filter_map(|a| a.expires))
    }

    /// The earliest time a rule or range of this policy expires, past ones
    /// included; timers use [`Policy::next_expiry_after`].
    #[cfg(test)]
    pub(super) fn next_expiry(&self) -> Option<SystemTime> {
        self.expiries().min()
    }

    /// The earliest expiry strictly after `now`, so a timer woken by an
    /// entry that already expired does not fire again at once.
    pub fn next_expiry_after(&self, now: SystemTime) -> Option<SystemTime> {
        self.expiries().filter(|&at| at > now).min()
    }

    /// This policy as in force at `now`: expired entries dropped, `grants`
    /// added. The index is rebuilt from the entries as written, so a
    /// wildcard that an expired exact entry shadowed takes over again, and
    /// a merged rule falls back to its longer-lived source.
    pub fn effective(&self, grants: &[Rule], now: SystemTime) -> Policy {
        let mut builder = RuleBuilder::default();
        for rule in self.entries.iter().chain(grants).filter(|r| r.live_at(now)) {
            builder.rule(rule.clone());
        }
        for address in self.address_entries.iter() {
            if address.expires.is_none_or(|at| now < at) {
                builder.address_rule(address.clone());
            }
        }
        Policy {
            agent: self.agent.clone(),
            source: self.source.clone(),
            clients: self.clients.clone(),
            rules: builder.rules,
            addresses: builder.addresses,
            firewall: self.firewall.clone(),
            learn: self.learn.clone(),
            monitor: self.monitor,
            id: self.id,
            metrics_slot: self.metrics_slot,
            exfil: self.exfil,
            matcher: builder.matcher,
            entries: self.entries.clone(),
            address_entries: self.address_entries.clone(),
            private: self.private.clone(),
            inbound: self.inbound.clone(),
        }
    }
}
