//! Policies: the on-disk format ([`file`]), its validation into a [`Policy`],
//! and the compiled name index ([`matcher`]).
//!
//! Loading never stops at the first problem: every error and over-broad
//! pattern across all files is collected with file, line and field.

pub mod doh;
pub mod exfil_limits;
pub mod file;
pub mod firewall;
pub mod matcher;
pub mod name;
pub mod private;
pub mod qtypes;
pub mod special;
pub mod zones;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::diagnostics::{Diagnostics, locate, yaml_error};
use crate::policy::firewall::{Family, FirewallConfig};
use file::{PolicyFileV1, SUPPORTED_VERSIONS};
use matcher::{Matcher, PatternKind, RuleId, classify};

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

impl Ports {
    /// Same permissions, whatever the order or duplicates of `listed`.
    fn same_as(&self, other: &Ports) -> bool {
        match (self.any, other.any) {
            (true, true) => true,
            (false, false) => {
                self.listed.iter().all(|p| other.listed.contains(p))
                    && other.listed.iter().all(|p| self.listed.contains(p))
            }
            _ => false,
        }
    }

    fn union(&mut self, other: &Ports) {
        self.any |= other.any;
        for pair in &other.listed {
            self.add(Some(*pair));
        }
    }

    fn add(&mut self, entry: Option<(Protocol, u16)>) {
        match entry {
            None => self.any = true,
            Some(pair) if !self.listed.contains(&pair) => self.listed.push(pair),
            Some(_) => {}
        }
    }
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
    /// pattern (see [`qtypes::qtype_allowed`]).
    pub qtypes: Option<Arc<[hickory_proto::rr::RecordType]>>,
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
    /// Index of the agent's series in [`crate::observe::metrics`].
    pub metrics_slot: u16,
    /// The exfiltration budget under wildcards (`exfil:`).
    pub exfil: exfil_limits::Limits,
    matcher: Matcher,
    /// The file's name entries one by one, before merging: `effective`
    /// rebuilds from these, so a merged rule's longer-lived source comes
    /// back alone once the shorter-lived one expires.
    entries: Arc<[Rule]>,
    /// The file's address entries one by one, likewise.
    address_entries: Arc<[AddressRule]>,
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
    fn expiries(&self) -> impl Iterator<Item = SystemTime> + '_ {
        let rules = self.rules.iter().chain(self.entries.iter());
        let addresses = self.addresses.iter().chain(self.address_entries.iter());
        rules
            .filter_map(|r| r.expires)
            .chain(addresses.filter_map(|a| a.expires))
    }

    /// The earliest time a rule or range of this policy expires, past ones
    /// included; timers use [`Policy::next_expiry_after`].
    #[cfg(test)]
    fn next_expiry(&self) -> Option<SystemTime> {
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

/// All loaded policies and the index from client address to policy.
#[derive(Debug, Default)]
pub struct PolicySet {
    pub policies: Vec<Arc<Policy>>,
    /// (network, policy index), longest prefix first.
    by_client: Vec<(IpNet, usize)>,
    /// The one policy without `clients`, when it is the only policy.
    catch_all: Option<usize>,
}

impl PolicySet {
    /// The policy governing a client, or `None` (the client is refused).
    pub fn for_client(&self, ip: IpAddr) -> Option<&Arc<Policy>> {
        let ip = ip.to_canonical();
        self.by_client
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|&(_, i)| &self.policies[i])
            .or_else(|| self.catch_all.map(|i| &self.policies[i]))
    }

    /// The set in force at `now`: each policy with its expired entries
    /// dropped and its agent's grants added. Untouched policies are shared.
    pub fn effective(&self, grants: &HashMap<Arc<str>, Vec<Rule>>, now: SystemTime) -> Self {
        let policies = self
            .policies
            .iter()
            .map(|p| {
                let extra = grants.get(&p.agent).map_or(&[][..], Vec::as_slice);
                if extra.is_empty() && p.expiries().next().is_none() {
                    p.clone()
                } else {
                    Arc::new(p.effective(extra, now))
                }
            })
            .collect();
        Self::index(policies)
    }

    /// The earliest expiry across all policies strictly after `now`.
    pub fn next_expiry_after(&self, now: SystemTime) -> Option<SystemTime> {
        self.policies
            .iter()
            .filter_map(|p| p.next_expiry_after(now))
            .min()
    }

    /// The policy for an agent name.
    pub fn by_agent(&self, agent: &str) -> Option<&Arc<Policy>> {
        self.policies.iter().find(|p| &*p.agent == agent)
    }

    fn index(policies: Vec<Arc<Policy>>) -> Self {
        let mut by_client: Vec<(IpNet, usize)> = policies
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.clients.iter().map(move |net| (*net, i)))
            .collect();
        by_client.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        let catch_all = match policies.as_slice() {
            [only] if only.clients.is_empty() => Some(0),
            _ => None,
        };
        Self {
            policies,
            by_client,
            catch_all,
        }
    }
}

/// Expands files and directories (their `*.yaml`/`*.yml`, sorted) into files.
pub fn expand_paths(paths: &[PathBuf], diags: &mut Diagnostics) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.extension()
                                .is_some_and(|ext| ext == "yaml" || ext == "yml")
                        })
                        .collect();
                    found.sort();
                    if found.is_empty() {
                        diags.error(path, None, None, "directory holds no *.yaml policy files");
                    }
                    files.extend(found);
                }
                Err(e) => diags.error(path, None, None, format!("cannot read directory: {e}")),
            }
        } else {
            files.push(path.clone());
        }
    }
    files
}

/// Loads and validates every policy file; `None` when any error was found.
pub fn load(paths: &[PathBuf], diags: &mut Diagnostics) -> Option<PolicySet> {
    let files = expand_paths(paths, diags);
    if files.is_empty() && !diags.has_errors() {
        diags.error(Path::new("<policies>"), None, None, "no policy files given");
    }
    let (mut policies, mut sources) = (Vec::new(), Vec::new());
    for file in &files {
        if let Some(source) = crate::input::read_yaml(file, "cannot read policy", diags)
            && let Some(policy) = compile_source(file, &source, diags)
        {
            policies.push(policy);
            sources.push(source);
        }
    }
    check_across_files(&policies, &sources, diags);
    if diags.has_errors() {
        return None;
    }
    Some(PolicySet::index(
        policies.into_iter().map(Arc::new).collect(),
    ))
}

/// Shortest prefixes `check` accepts silently: a /8 is the largest block an
/// IPv4 registry hands out, a /32 a whole IPv6 provider allocation.
const BROAD_V4: u8 = 8;
const BROAD_V6: u8 = 32;

/// Why an address destination opens far more than one service, if it does.
fn over_broad_net(net: &IpNet) -> Option<String> {
    let (len, limit, family) = match net {
        IpNet::V4(n) => (n.prefix_len(), BROAD_V4, "IPv4"),
        IpNet::V6(n) => (n.prefix_len(), BROAD_V6, "IPv6"),
    };
    if len == 0 {
        Some(format!(
            "over-broad: {net} is every {family} address; the firewall would pass anything"
        ))
    } else if len < limit {
        Some(format!(
            "over-broad: {net} spans 2^{} {family} addresses (shorter than /{limit})",
            net.max_prefix_len() - len
        ))
    } else {
        None
    }
}

/// Errors that only show when several policies are loaded together.
fn check_across_files(policies: &[Policy], sources: &[String], diags: &mut Diagnostics) {
    let mut agents: HashMap<&str, &Path> = HashMap::new();
    let mut nets: HashMap<IpNet, &Path> = HashMap::new();
    for (p, source) in policies.iter().zip(sources) {
        let clients_line = locate(source, "clients", 0);
        if let Some(first) = agents.insert(&p.agent, &p.source) {
            diags.error(
                &p.source,
                locate(source, "agent_name", 0),
                Some("agent_name".into()),
                format!("agent '{}' is also defined in {}", p.agent, first.display()),
            );
        }
        if p.clients.is_empty() && policies.len() > 1 {
            diags.error(
                &p.source,
                clients_line.or_else(|| locate(source, "agent_name", 0)),
                Some("clients".into()),
                "required when more than one policy is loaded (which clients does this govern?)",
            );
        }
        for net in &p.clients {
            if let Some(first) = nets.insert(*net, &p.source) {
                diags.error(
                    &p.source,
                    locate(source, &net.to_string(), 0)
                        .or_else(|| locate(source, &net.addr().to_string(), 0))
                        .or(clients_line),
                    Some("clients".into()),
                    format!("{net} is also governed by {}", first.display()),
                );
            }
        }
    }
}

/// Parses and compiles one policy file's text.
pub fn compile_source(file: &Path, source: &str, diags: &mut Diagnostics) -> Option<Policy> {
    let raw: PolicyFileV1 = match serde_yaml::from_str(source) {
        Ok(raw) => raw,
        Err(e) => {
            yaml_error(diags, file, &e);
            salvage(file, source, diags);
            return None;
        }
    };
    let errors_before = diags.errors().count();
    let policy = compile(file, source, raw, diags);
    (diags.errors().count() == errors_before).then_some(policy)
}

/// serde stops at the first shape error (an unknown key, a wrong type); the
/// rest of the file is checked anyway, entry by entry, so one run reports
/// every error. A YAML syntax error still ends the file.
fn salvage(file: &Path, source: &str, diags: &mut Diagnostics) {
    let Some(file::Salvaged { raw, errors, kept }) = file::salvage(source) else {
        return;
    };
    let first_at = diags.items.len();
    let unnamed = errors
        .iter()
        .any(|(_, m)| m == "missing field `agent_name`");
    // The first error, already reported by serde with its own line.
    let first = diags
        .items
        .last()
        .map(|d| d.message.clone())
        .unwrap_or_default();
    for (field, message) in errors {
        let shown = if field.is_empty() {
            message.clone()
        } else {
            format!("{field}: {message}")
        };
        if first == shown || first.ends_with(&message) && first.starts_with(&field) {
            continue;
        }
        let line = if field.is_empty() {
            message
                .split('`')
                .nth(1)
                .and_then(|key| file::field_line(source, key))
        } else {
            file::field_line(source, &field)
        };
        diags.error(file, line, (!field.is_empty()).then_some(field), message);
    }
    // The semantic errors of what did deserialize; its warnings would
    // describe a file with parts missing, so they are left out.
    let before = diags.items.len();
    let _ = compile(file, source, raw, diags);
    // A missing agent_name is reported once, as missing.
    let mut i = 0;
    diags.items.retain(|d| {
        i += 1;
        i <= before
            || d.severity == crate::diagnostics::Severity::Error
                && !(unnamed && d.field.as_deref() == Some("agent_name"))
    });
    // Entries that did not deserialize were left out: give the rest their
    // index in the file back.
    for d in diags.items.iter_mut().skip(before) {
        let Some(field) = &mut d.field else { continue };
        for (key, indices) in &kept {
            let Some(rest) = field.strip_prefix(key).and_then(|r| r.strip_prefix('[')) else {
                continue;
            };
            let Some((n, tail)) = rest.split_once(']') else {
                continue;
            };
            if let Some(original) = n.parse::<usize>().ok().and_then(|n| indices.get(n)) {
                *field = format!("{key}[{original}]{tail}");
            }
        }
    }
    // After serde's own first error, the rest in file order.
    diags.items[first_at..].sort_by_key(|d| d.line.unwrap_or(usize::MAX));
}

/// Counts how often each value was seen, so `locate` finds the right line
/// when a value repeats.
#[derive(Default)]
struct Occurrences<'a>(HashMap<&'a str, usize>);

impl<'a> Occurrences<'a> {
    /// Where `value` is, found only if a message needs it: locating every
    /// entry eagerly made loading quadratic in the file size.
    fn spot<'s>(&mut self, source: &'s str, value: &'a str) -> Spot<'s, 'a> {
        let n = self.0.entry(value).or_default();
        let spot = Spot {
            source,
            value,
            nth: *n,
        };
        *n += 1;
        spot
    }
}

/// The `nth` occurrence of `value` in `source`.
struct Spot<'s, 'a> {
    source: &'s str,
    value: &'a str,
    nth: usize,
}

impl Spot<'_, '_> {
    fn line(&self) -> Option<usize> {
        locate(self.source, self.value.trim(), self.nth)
    }
}

fn compile(file: &Path, source: &str, raw: PolicyFileV1, diags: &mut Diagnostics) -> Policy {
    // Destructured whole, so a new field in the file format cannot be ignored here.
    let PolicyFileV1 {
        version,
        agent_name,
        clients,
        mode,
        expected_outbound,
        allowed_dynamic_resolution,
        firewall,
        exfil,
        inbound,
    } = raw;
    let mut seen = Occurrences::default();

    if let Some(v) = version
        && !SUPPORTED_VERSIONS.contains(&v)
    {
        diags.error(
            file,
            locate(source, "version", 0),
            Some("version".into()),
            format!("unsupported policy version {v} (this allowdns reads {SUPPORTED_VERSIONS:?})"),
        );
    }
    if agent_name.trim().is_empty() {
        diags.error(
            file,
            locate(source, "agent_name", 0),
            Some("agent_name".into()),
            "must not be empty",
        );
    }
    let learn = match mode.as_deref() {
        None | Some("enforce") => None,
        Some("learn") => {
            diags.warning(
                file,
                locate(source, "learn", 0),
                Some("mode".into()),
                "learn: names outside the allowlist are resolved and fed to the firewall \
                 (audited as would_deny); this policy observes the agent, it does not fence it",
            );
            Some(Rule {
                pattern: "(learn mode)".into(),
                dynamic: false,
                ports: Ports {
                    any: true,
                    listed: Vec::new(),
                },
                expires: None,
                grant: None,
                qtypes: None,
            })
        }
        Some(other) => {
            diags.error(
                file,
                locate(source, other, 0),
                Some("mode".into()),
                format!("unknown mode '{other}' (expected 'enforce' or 'learn')"),
            );
            None
        }
    };
    let now = SystemTime::now();

    let mut client_nets = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        match parse_net(c) {
            Ok(net) => client_nets.push(net),
            Err(e) => diags.error(
                file,
                seen.spot(source, c).line(),
                Some(format!("clients[{i}]")),
                e,
            ),
        }
    }

    let mut builder = RuleBuilder::default();
    let mut opted = Vec::new();
    for (i, entry) in expected_outbound.iter().enumerate() {
        let file::OutboundV1 {
            destination,
            port,
            protocol,
            purpose: _,
            expires,
            qtypes,
            private,
        } = entry;
        let line = seen.spot(source, destination);
        let field = |f: &str| Some(format!("expected_outbound[{i}].{f}"));
        let Some(expires) = entry_expiry(file, source, field("expires"), expires, now, diags)
        else {
            continue;
        };
        let ports = match (port, protocol.as_deref()) {
            (None, None) => None,
            (Some(port), Some(proto)) => match proto.to_ascii_lowercase().as_str() {
                "tcp" => Some((Protocol::Tcp, *port)),
                "udp" => Some((Protocol::Udp, *port)),
                _ => {
                    diags.error(
                        file,
                        line.line(),
                        field("protocol"),
                        format!("unknown protocol '{proto}' (expected TCP or UDP)"),
                    );
                    None
                }
            },
            (Some(port), None) => {
                diags.error(
                    file,
                    line.line(),
                    field("protocol"),
                    format!("port {port} needs a protocol (TCP or UDP)"),
                );
                None
            }
            (None, Some(proto)) => {
                diags.error(
                    file,
                    line.line(),
                    field("port"),
                    format!("protocol '{proto}' needs a port"),
                );
                None
            }
        };
        if *port == Some(0) {
            diags.error(file, line.line(), field("port"), "port 0 is not a port");
        }
        match classify_destination(destination) {
            Ok(Destination::Address(_)) if qtypes.is_some() => diags.error(
                file,
                line.line(),
                field("qtypes"),
                "qtypes applies to names, not addresses",
            ),
            Ok(Destination::Address(net)) => {
                if let Some(why) = over_broad_net(&net) {
                    diags.warning(file, line.line(), field("destination"), why);
                }
                private::not_for_addresses(file, &line, field("private"), private, diags);
                builder.address(net, ports, expires)
            }
            Ok(Destination::Name(key)) => {
                warn_if_broad(file, &line, field("destination"), &key, diags);
                warn_if_doh(file, &line, field("destination"), &key, diags);
                let qtypes = compile_qtypes(file, source, field("qtypes"), qtypes, diags);
                let at = (file, source, field("private"));
                private::opt_in(at, &line, &key, private, expires, &mut opted, diags);
                builder.name(key, false, ports, expires, qtypes);
            }
            Err(e) => diags.error(file, line.line(), field("destination"), e),
        }
    }
    for (i, entry) in allowed_dynamic_resolution.iter().enumerate() {
        let (pattern, expires, qtypes, private) = match entry {
            file::DynamicV1::Pattern(pattern) => (pattern, &None, &None, &[][..]),
            file::DynamicV1::Entry(file::DynamicEntryV1 {
                pattern,
                expires,
                qtypes,
                private,
            }) => (pattern, expires, qtypes, &private[..]),
        };
        let line = seen.spot(source, pattern);
        let field = Some(format!("allowed_dynamic_resolution[{i}]"));
        let expires_field = Some(format!("allowed_dynamic_resolution[{i}].expires"));
        let Some(expires) = entry_expiry(file, source, expires_field, expires, now, diags) else {
            continue;
        };
        match classify_destination(pattern) {
            Ok(Destination::Name(key)) => {
                warn_if_broad(file, &line, field.clone(), &key, diags);
                warn_if_doh(file, &line, field.clone(), &key, diags);
                let qtypes_field = Some(format!("allowed_dynamic_resolution[{i}].qtypes"));
                let qtypes = compile_qtypes(file, source, qtypes_field, qtypes, diags);
                let at = (
                    file,
                    source,
                    Some(format!("allowed_dynamic_resolution[{i}].private")),
                );
                private::opt_in(at, &line, &key, private, expires, &mut opted, diags);
                builder.name(key, true, None, expires, qtypes);
            }
            Ok(Destination::Address(_)) => diags.error(
                file,
                line.line(),
                field,
                format!("'{pattern}' is an address; list addresses under expected_outbound"),
            ),
            Err(e) => diags.error(file, line.line(), field, e),
        }
    }
    // nftables interval sets refuse overlapping ranges: catch them here, with lines.
    for (i, a) in builder.addresses.iter().enumerate() {
        for b in &builder.addresses[i + 1..] {
            let nets_overlap = a.net.contains(&b.net.network()) || b.net.contains(&a.net.network());
            let ports_overlap = a.ports.any
                || b.ports.any
                || a.ports.listed.iter().any(|p| b.ports.listed.contains(p));
            if nets_overlap && ports_overlap {
                let text = b.net.to_string();
                diags.error(
                    file,
                    locate(source, &text, 0)
                        .or_else(|| locate(source, &b.net.addr().to_string(), 0)),
                    Some("expected_outbound".into()),
                    format!(
                        "{} overlaps {} on the same ports; merge them into one entry",
                        b.net, a.net
                    ),
                );
            }
        }
    }
    if builder.rules.is_empty() && builder.addresses.is_empty() && learn.is_none() {
        diags.warning(
            file,
            None,
            None,
            "allows nothing: every lookup will be denied",
        );
    }

    let firewall = firewall.map(|f| compile_firewall(file, source, f, diags));
    let exfil = exfil_limits::compile_exfil(file, source, exfil, diags);
    let inbound = private::inbound(file, source, &inbound, diags);
    Policy {
        metrics_slot: crate::observe::metrics::METRICS.slot_for(agent_name.trim()),
        exfil,
        agent: agent_name.trim().into(),
        source: file.to_path_buf(),
        clients: client_nets,
        rules: builder.rules,
        addresses: builder.addresses,
        firewall,
        learn,
        matcher: builder.matcher,
        entries: builder.entries.into(),
        address_entries: builder.address_entries.into(),
        private: opted.into(),
        inbound,
    }
}

/// An entry's `expires`: `Some(None)` for none, `Some(Some(t))` for a future
/// time, `None` when the entry must be skipped (already expired, with a
/// warning, or malformed, with an error).
fn entry_expiry(
    file: &Path,
    source: &str,
    field: Option<String>,
    raw: &Option<String>,
    now: SystemTime,
    diags: &mut Diagnostics,
) -> Option<Option<SystemTime>> {
    let Some(raw) = raw else {
        return Some(None);
    };
    let line = || locate(source, raw, 0);
    match parse_rfc3339(raw) {
        Ok(at) if at <= now => {
            diags.warning(
                file,
                line(),
                field,
                format!("expired at {raw}; entry ignored"),
            );
            None
        }
        Ok(at) => Some(Some(at)),
        Err(e) => {
            diags.error(file, line(), field, e);
            None
        }
    }
}

/// Parses an RFC 3339 time: `YYYY-MM-DDTHH:MM:SS[.frac]` then `Z` or an
/// offset `+HH:MM`/`-HH:MM` (HH <= 23, MM <= 59). `t` and `z` may be lower
/// case, as RFC 3339 allows.
pub fn parse_rfc3339(raw: &str) -> Result<SystemTime, String> {
    let raw = raw.trim();
    let bad =
        |why: &str| format!("'{raw}' is not an RFC 3339 time (like 2026-12-31T18:00:00Z): {why}");
    let (local, east_secs) = if let Some(local) = raw.strip_suffix(['Z', 'z']) {
        (local, 0i64)
    } else {
        let (local, offset) = raw
            .len()
            .checked_sub(6)
            .and_then(|at| raw.split_at_checked(at))
            .ok_or_else(|| bad("no Z or +HH:MM offset at the end"))?;
        let b = offset.as_bytes();
        let digit = |i: usize| b[i].is_ascii_digit();
        let sign = match b[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(bad("no Z or +HH:MM offset at the end")),
        };
        if !(digit(1) && digit(2) && b[3] == b':' && digit(4) && digit(5)) {
            return Err(bad(&format!("offset '{offset}' is not +HH:MM or -HH:MM")));
        }
        let hours = i64::from((b[1] - b'0') * 10 + (b[2] - b'0'));
        let minutes = i64::from((b[4] - b'0') * 10 + (b[5] - b'0'));
        if hours > 23 || minutes > 59 {
            return Err(bad(&format!("offset '{offset}' is out of range")));
        }
        (local, sign * (hours * 3600 + minutes * 60))
    };
    // Date and time with optional fraction, nothing else: humantime alone
    // would also take a `Z` or `+00:00` here, doubling the offset.
    let b = local.as_bytes();
    let fraction_ok = match b.get(19..) {
        None | Some([]) => true,
        Some([b'.', digits @ ..]) => !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    if b.len() < 19 || !fraction_ok || !local.is_ascii() {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SS[.fraction]"));
    }
    let local = if b[10] == b't' {
        format!("{}T{}", &local[..10], &local[11..])
    } else {
        local.to_string()
    };
    let local = humantime::parse_rfc3339_weak(&local).map_err(|e| bad(&e.to_string()))?;
    let shift = std::time::Duration::from_secs(east_secs.unsigned_abs());
    // East of UTC means the same local time happened earlier in UTC.
    let utc = if east_secs >= 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    };
    utc.ok_or_else(|| bad("out of range"))
}

fn compile_firewall(
    file: &Path,
    source: &str,
    raw: file::FirewallV1,
    diags: &mut Diagnostics,
) -> FirewallConfig {
    let file::FirewallV1 {
        netns,
        family,
        table,
        set_v4,
        set_v6,
        set_v4_ports,
        set_v6_ports,
        min_ttl,
        max_ttl,
        grace,
    } = raw;
    let mut config = FirewallConfig::with_defaults();
    let mut error = |field: &str, value: &str, message: String| {
        diags.error(
            file,
            locate(source, value, 0),
            Some(format!("firewall.{field}")),
            message,
        );
    };
    if let Some(ns) = netns {
        if ns.contains('/') && !ns.starts_with('/') {
            error(
                "netns",
                &ns,
                format!("'{ns}' is neither a name under /run/netns nor an absolute path"),
            );
        }
        config.netns = Some(if ns.starts_with('/') {
            PathBuf::from(&ns)
        } else {
            Path::new("/run/netns").join(&ns)
        });
    }
    if let Some(f) = family {
        match f.as_str() {
            "inet" => config.family = Family::Inet,
            "ip" => config.family = Family::Ip,
            "ip6" => config.family = Family::Ip6,
            _ => error(
                "family",
                &f,
                format!("unknown family '{f}' (expected inet, ip or ip6)"),
            ),
        }
    }
    for (field, value, slot) in [
        ("table", table, &mut config.table),
        ("set_v4", set_v4, &mut config.set_v4),
        ("set_v6", set_v6, &mut config.set_v6),
        ("set_v4_ports", set_v4_ports, &mut config.set_v4_ports),
        ("set_v6_ports", set_v6_ports, &mut config.set_v6_ports),
    ] {
        let Some(value) = value else { continue };
        let valid = value.len() <= 64
            && value
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if valid {
            *slot = value;
        } else {
            error(
                field,
                &value,
                format!("'{value}' is not an nftables identifier (letters, digits, _ and -)"),
            );
        }
    }
    config.min_ttl = min_ttl.unwrap_or(config.min_ttl);
    config.max_ttl = max_ttl.unwrap_or(config.max_ttl);
    config.grace = grace.unwrap_or(config.grace);
    if config.min_ttl > config.max_ttl {
        error(
            "min_ttl",
            "min_ttl",
            format!(
                "min_ttl {} is above max_ttl {}",
                config.min_ttl, config.max_ttl
            ),
        );
    }
    if config.max_ttl == 0 && config.grace == 0 {
        error(
            "grace",
            "grace",
            "max_ttl and grace are both 0: elements would never live".into(),
        );
    }
    config
}

#[derive(Default)]
struct RuleBuilder {
    rules: Vec<Rule>,
    addresses: Vec<AddressRule>,
    matcher: Matcher,
    /// Every entry as given, kept only when compiling a file.
    entries: Vec<Rule>,
    address_entries: Vec<AddressRule>,
}

/// The expiry of a merge of two sources, one expiring at `a` and one at `b`
/// (`None`: never). `same_as_later` is whether the merged permissions are
/// exactly those of the later-expiring source alone: then the merge lasts
/// as long as that source. Otherwise it holds only while both sources do,
/// and the rebuild at the earlier expiry brings the later source back alone.
fn merged_expiry(
    a: Option<SystemTime>,
    b: Option<SystemTime>,
    same_as_later: impl FnOnce(bool) -> bool,
) -> Option<SystemTime> {
    // `a_later`: source a lives at least as long as b.
    let a_later = match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a >= b,
    };
    let later = if a_later { a } else { b };
    if same_as_later(a_later) {
        later
    } else {
        a.into_iter().chain(b).min()
    }
}

impl RuleBuilder {
    fn name(
        &mut self,
        key: String,
        dynamic: bool,
        ports: Option<(Protocol, u16)>,
        expires: Option<SystemTime>,
        qtypes: Option<Arc<[hickory_proto::rr::RecordType]>>,
    ) {
        let mut rule_ports = Ports::default();
        rule_ports.add(ports);
        let rule = Rule {
            pattern: key.into(),
            dynamic,
            ports: rule_ports,
            expires,
            grant: None,
            qtypes,
        };
        self.entries.push(rule.clone());
        self.rule(rule);
    }

    fn rule(&mut self, new: Rule) {
        let id = self.rules.len() as RuleId;
        let Some(existing) = self.matcher.insert(&new.pattern, id) else {
            self.rules.push(new);
            return;
        };
        // Repeated destination: merge ports, but a static entry keeps
        // precedence (a dynamic duplicate adds nothing to it).
        let rule = &mut self.rules[existing as usize];
        let old = rule.clone();
        if !new.dynamic || rule.dynamic {
            rule.ports.union(&new.ports);
        }
        let merged = &*rule;
        let same_as =
            |source: &Rule| merged.dynamic == source.dynamic && merged.ports.same_as(&source.ports);
        let expires = merged_expiry(old.expires, new.expires, |old_later| {
            same_as(if old_later { &old } else { &new })
        });
        rule.expires = expires;
        rule.qtypes = qtypes::merge_qtypes(&rule.pattern, &old.qtypes, &new.qtypes);
        if rule.grant.is_some() {
            rule.grant = new.grant;
        }
    }

    fn address(&mut self, net: IpNet, ports: Option<(Protocol, u16)>, expires: Option<SystemTime>) {
        let mut rule_ports = Ports::default();
        rule_ports.add(ports);
        let address = AddressRule {
            net,
            ports: rule_ports,
            expires,
        };
        self.address_entries.push(address.clone());
        self.address_rule(address);
    }

    fn address_rule(&mut self, new: AddressRule) {
        let Some(existing) = self.addresses.iter_mut().find(|a| a.net == new.net) else {
            self.addresses.push(new);
            return;
        };
        let old = existing.clone();
        existing.ports.union(&new.ports);
        let merged = &existing.ports;
        existing.expires = merged_expiry(old.expires, new.expires, |old_later| {
            merged.same_as(if old_later { &old.ports } else { &new.ports })
        });
    }
}

enum Destination {
    Address(IpNet),
    Name(String),
}

fn classify_destination(raw: &str) -> Result<Destination, String> {
    let trimmed = raw.trim();
    if let Ok(ip) = trimmed.parse::<IpAddr>() {
        return Ok(Destination::Address(IpNet::from(ip)));
    }
    if trimmed.contains('/') {
        return parse_net(trimmed).map(Destination::Address);
    }
    name::pattern_key(trimmed).map(Destination::Name)
}

/// Parses an IP or CIDR; host bits must be zero so the author's intent is unambiguous.
fn parse_net(raw: &str) -> Result<IpNet, String> {
    let raw = raw.trim();
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = raw
        .parse()
        .map_err(|_| format!("'{raw}' is not an IP address or CIDR"))?;
    if net.trunc() != net {
        return Err(format!(
            "'{raw}' has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Suffixes under which anyone can get names, on top of the public suffix
/// list (which has only deeper entries under some of these).
const EXTRA_PUBLIC_SUFFIXES: &[&str] = &[
    "co.uk",
    "org.uk",
    "ac.uk",
    "gov.uk",
    "com.au",
    "net.au",
    "org.au",
    "co.jp",
    "ne.jp",
    "or.jp",
    "com.br",
    "com.cn",
    "com.mx",
    "co.nz",
    "co.za",
    "co.in",
    "com.tr",
    "com.sg",
    "github.io",
    "gitlab.io",
    "herokuapp.com",
    "appspot.com",
    "blogspot.com",
    "cloudfront.net",
    "azurewebsites.net",
    "amazonaws.com",
    "s3.amazonaws.com",
    "vercel.app",
    "netlify.app",
    "pages.dev",
    "workers.dev",
    "web.app",
    "firebaseapp.com",
    "ngrok.io",
    "ngrok-free.app",
    "trycloudflare.com",
    "onrender.com",
    "fly.dev",
    "repl.co",
    "glitch.me",
    "duckdns.org",
];

/// Whether anyone can register names directly under `name` (a canonical
/// key): a TLD, a public suffix list entry (ICANN or private, like
/// `com.ar` or `r2.dev`), or one of [`EXTRA_PUBLIC_SUFFIXES`].
pub(crate) fn is_public_suffix(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    !name.contains('.')
        || EXTRA_PUBLIC_SUFFIXES.contains(&name)
        || psl::suffix(name.as_bytes())
            .is_some_and(|s| s.is_known() && s.as_bytes() == name.as_bytes())
}

/// Whether `name` is `domain` or below it (both canonical, `name` a suffix
/// of the same looked-up name).
pub fn at_or_below(name: &str, domain: &str) -> bool {
    name.strip_suffix(domain)
        .is_some_and(|head| head.is_empty() || head.ends_with('.'))
}

/// The registrable domain a canonical name is in, by the public suffix list
/// (`psl::domain_str`) and by [`is_public_suffix`] (which adds
/// suffixes such as `co.uk`), whichever is narrower. `None` when the name is
/// itself a suffix.
pub fn registrable_domain(name: &str) -> Option<&str> {
    let listed = psl::domain_str(name)?;
    if !at_or_below(name, listed) {
        return None;
    }
    let mut rest = name;
    let ours = loop {
        let (_, parent) = rest.split_once('.')?;
        if is_public_suffix(parent) {
            break rest;
        }
        rest = parent;
    };
    Some(if ours.len() > listed.len() {
        ours
    } else {
        listed
    })
}

/// `check` warns about patterns that allow names an attacker can register.
fn warn_if_broad(
    file: &Path,
    line: &Spot,
    field: Option<String>,
    key: &str,
    diags: &mut Diagnostics,
) {
    if let Some(why) = over_broad(key) {
        diags.warning(file, line.line(), field, format!("over-broad: {why}"));
    }
}

/// `check` warns about names that reach a DoH/DoT resolver: through one, the
/// agent resolves anything, past the policy.
fn warn_if_doh(
    file: &Path,
    line: &Spot,
    field: Option<String>,
    key: &str,
    diags: &mut Diagnostics,
) {
    // An over-broad pattern has its own warning; this one is for the rest.
    if let Some(endpoint) =
        doh::doh_endpoint(key).filter(|_| over_broad(key).is_none())
    {
        diags.warning(
            file,
            line.line(),
            field,
            format!(
                "'{key}' allows '{endpoint}', a public DNS-over-HTTPS/TLS resolver: \
                 the agent can resolve any name through it, past this policy"
            ),
        );
    }
}

/// An entry's `qtypes`, validated; errors name the type and its line.
fn compile_qtypes(
    file: &Path,
    source: &str,
    field: Option<String>,
    raw: &Option<Vec<String>>,
    diags: &mut Diagnostics,
) -> Option<Arc<[hickory_proto::rr::RecordType]>> {
    let list = raw.as_ref()?;
    match qtypes::parse_qtypes(list) {
        Ok(types) => Some(types),
        Err((value, why)) => {
            let line = locate(source, value.trim(), 0).or_else(|| locate(source, "qtypes", 0));
            let shown = if value.is_empty() {
                why
            } else {
                format!("'{value}': {why}")
            };
            diags.error(file, line, field, shown);
            None
        }
    }
}

/// Why a canonical pattern allows names an attacker can register, if it does.
pub fn over_broad(key: &str) -> Option<String> {
    Some(match classify(key) {
        PatternKind::Exact(name) if is_public_suffix(name) => {
            format!("'{key}' is a public suffix, not a host")
        }
        PatternKind::Suffix(suffix) if is_public_suffix(suffix) => format!(
            "'{key}' allows every name under the public suffix '{suffix}', including attackers'"
        ),
        PatternKind::Glob { bucket } if is_public_suffix(bucket) => {
            format!("'{key}' spans names anyone can register (its fixed part is only '{bucket}')")
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"agent_name: "travel_agent_v1"
expected_outbound:
  - destination: "api.company-internal.com"
    port: 443
    protocol: "TCP"
    purpose: "Internal flights API"
  - destination: "weather.service.com"
    port: 443
    protocol: "TCP"
    purpose: "Fetch destination weather"
allowed_dynamic_resolution:
  - "*.company-internal.com"   # allowed, but flagged in the log
"#;

    fn compile_str(src: &str) -> (Option<Policy>, Diagnostics) {
        let mut d = Diagnostics::default();
        let p = compile_source(Path::new("p.yaml"), src, &mut d);
        (p, d)
    }

    #[test]
    fn seed_format_loads_as_written() {
        let (p, d) = compile_str(SEED);
        let p = p.expect("seed compiles");
        assert!(!d.has_errors());
        let api = p.rule_for("api.company-internal.com").unwrap();
        assert!(!api.dynamic);
        assert_eq!(api.ports.listed, vec![(Protocol::Tcp, 443)]);
        let other = p.rule_for("x.company-internal.com").unwrap();
        assert!(other.dynamic);
        assert_eq!(&*other.pattern, "*.company-internal.com");
        assert!(p.rule_for("x.weather.service.com").is_none());
        assert!(p.rule_for("company-internal.com").is_none());
    }

    #[test]
    fn errors_name_line_and_field() {
        let src = "agent_name: a\nexpected_outbound:\n  - destination: ok.example\n  - destination: \"bad..name\"\n    port: 443\n";
        let (p, d) = compile_str(src);
        assert!(p.is_none());
        let errs: Vec<String> = d.errors().map(|e| e.to_string()).collect();
        assert!(
            errs.iter()
                .any(|e| e
                    .starts_with("error: p.yaml:4: expected_outbound[1].destination: empty label")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("expected_outbound[1].protocol: port 443 needs a protocol")),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_lines() {
        let (p, d) = compile_str("agent_name: a\nexpected_outbund: []\n");
        assert!(p.is_none());
        let e = d.errors().next().unwrap().to_string();
        assert!(e.starts_with("error: p.yaml:2"), "{e}");
        assert!(e.contains("unknown field `expected_outbund`"), "{e}");
    }

    #[test]
    fn over_broad_patterns_warn() {
        let src = "agent_name: a\nallowed_dynamic_resolution:\n  - \"*\"\n  - \"*.com\"\n  - \"*.co.uk\"\n  - \"*.example.com\"\n";
        let (p, d) = compile_str(src);
        assert!(p.is_some());
        let w: Vec<String> = d.warnings().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("p.yaml:3"), "{w:?}");
    }

    #[test]
    fn over_broad_address_destinations_warn() {
        // Distinct ports, so the ranges do not overlap.
        let src = "agent_name: a\nexpected_outbound:\n  - destination: 0.0.0.0/0\n    port: 1\n    protocol: TCP\n  - destination: \"::/0\"\n    port: 443\n    protocol: TCP\n  - destination: 64.0.0.0/2\n    port: 2\n    protocol: TCP\n  - destination: 2000::/3\n    port: 3\n    protocol: TCP\n  - destination: 10.0.0.0/8\n    port: 4\n    protocol: TCP\n  - destination: 2001:db8::/32\n    port: 5\n    protocol: TCP\n";
        let (p, d) = compile_str(src);
        assert!(p.is_some());
        let w: Vec<String> = d.warnings().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w[0].contains("p.yaml:3: expected_outbound[0].destination: over-broad: 0.0.0.0/0 is every IPv4 address"), "{w:?}");
        assert!(
            w[1].contains(":6:") && w[1].contains("::/0 is every IPv6"),
            "{w:?}"
        );
        assert!(w[2].contains("64.0.0.0/2 spans 2^30"), "{w:?}");
    }

    #[test]
    fn addresses_and_cidrs() {
        let src = "agent_name: a\nexpected_outbound:\n  - destination: 10.0.0.5\n  - destination: 10.1.0.0/16\n    port: 53\n    protocol: udp\n  - destination: 10.1.0.1/16\n";
        let (p, d) = compile_str(src);
        assert!(p.is_none());
        let e = d.errors().next().unwrap().to_string();
        assert!(
            e.contains("p.yaml:7") && e.contains("did you mean 10.1.0.0/16"),
            "{e}"
        );
    }

    #[test]
    fn overlapping_address_ranges_are_errors() {
        let src = "agent_name: a\nexpected_outbound:\n  - destination: 10.0.0.0/8\n  - destination: 10.1.0.0/16\n    port: 443\n    protocol: TCP\n  - destination: 192.0.2.0/24\n    port: 80\n    protocol: TCP\n  - destination: 192.0.2.1\n    port: 443\n    protocol: TCP\n";
        let (p, d) = compile_str(src);
        assert!(p.is_none());
        let errs: Vec<String> = d.errors().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("p.yaml:4") && errs[0].contains("10.1.0.0/16 overlaps 10.0.0.0/8"),
            "{errs:?}"
        );
    }

    #[test]
    fn client_index_prefers_longest_prefix() {
        let mut d = Diagnostics::default();
        let a = compile_source(
            Path::new("a.yaml"),
            "agent_name: a\nclients: [10.0.0.0/8]\n",
            &mut d,
        )
        .unwrap();
        let b = compile_source(
            Path::new("b.yaml"),
            "agent_name: b\nclients: [10.1.0.0/16]\n",
            &mut d,
        )
        .unwrap();
        let set = PolicySet::index(vec![Arc::new(a), Arc::new(b)]);
        assert_eq!(
            &*set.for_client("10.1.2.3".parse().unwrap()).unwrap().agent,
            "b"
        );
        assert_eq!(
            &*set.for_client("10.2.2.3".parse().unwrap()).unwrap().agent,
            "a"
        );
        assert!(set.for_client("192.168.1.1".parse().unwrap()).is_none());
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> String {
        humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(secs)).to_string()
    }

    fn compile_str(src: &str) -> Policy {
        let mut d = Diagnostics::default();
        let p = compile_source(Path::new("p.yaml"), src, &mut d);
        let errors: Vec<String> = d.errors().map(|e| e.to_string()).collect();
        p.unwrap_or_else(|| panic!("{errors:?}"))
    }

    fn time(raw: &str) -> Option<SystemTime> {
        Some(parse_rfc3339(raw).unwrap())
    }

    fn grant(pattern: &str, expires: SystemTime) -> Rule {
        Rule {
            pattern: pattern.into(),
            dynamic: false,
            ports: Ports {
                any: true,
                listed: Vec::new(),
            },
            expires: Some(expires),
            grant: Some("r".into()),
            qtypes: None,
        }
    }

    const PORT_443: &str = "agent_name: a\nexpected_outbound:\n  - destination: a.example\n    port: 443\n    protocol: TCP\n";

    #[test]
    fn a_grant_widening_a_permanent_rule_lasts_only_as_long_as_the_grant() {
        let p = compile_str(PORT_443);
        let now = SystemTime::now();
        let ends = now + Duration::from_secs(1800);
        let e = p.effective(&[grant("a.example", ends)], now);
        let rule = e.rule_for("a.example").unwrap();
        assert!(rule.ports.any);
        assert_eq!(
            rule.expires,
            Some(ends),
            "not permanent: the any-port part is the grant's"
        );
        // Once it ends, the file rule is back alone, permanent and port-bound.
        let after = p.effective(&[grant("a.example", ends)], ends + Duration::from_secs(1));
        let rule = after.rule_for("a.example").unwrap();
        assert_eq!((rule.ports.any, rule.expires), (false, None));
        assert_eq!(rule.ports.listed, [(Protocol::Tcp, 443)]);
    }

    #[test]
    fn a_grant_adding_nothing_keeps_the_permanent_rule_permanent() {
        let p = compile_str("agent_name: a\nexpected_outbound:\n  - destination: a.example\n");
        let now = SystemTime::now();
        let e = p.effective(&[grant("a.example", now + Duration::from_secs(60))], now);
        assert_eq!(e.rule_for("a.example").unwrap().expires, None);
    }

    #[test]
    fn file_duplicates_expire_with_the_source_that_widened_them() {
        let (t1, t2) = (at(600), at(1200));
        // Permanent 443 plus any-port until t1: any-port until t1.
        let p = compile_str(&format!(
            "{PORT_443}  - destination: a.example\n    expires: \"{t1}\"\n"
        ));
        let rule = p.rule_for("a.example").unwrap();
        assert!(rule.ports.any);
        assert_eq!(rule.expires, time(&t1));
        let later = p.effective(&[], time(&t1).unwrap() + Duration::from_secs(1));
        let rule = later.rule_for("a.example").unwrap();
        assert_eq!((rule.ports.any, rule.expires), (false, None));

        // 443 until t2 plus any-port until t1 < t2: any-port until t1, then 443 until t2.
        let p = compile_str(&format!(
            "agent_name: a\nexpected_outbound:\n  - destination: a.example\n    port: 443\n    protocol: TCP\n    expires: \"{t2}\"\n  - destination: a.example\n    expires: \"{t1}\"\n"
        ));
        assert_eq!(p.rule_for("a.example").unwrap().expires, time(&t1));
        let later = p.effective(&[], time(&t1).unwrap() + Duration::from_secs(1));
        let rule = later.rule_for("a.example").unwrap();
        assert_eq!((rule.ports.any, rule.expires), (false, time(&t2)));

        // Any-port until t1 and until t2: the later one covers the merge.
        let p = compile_str(&format!(
            "agent_name: a\nexpected_outbound:\n  - destination: a.example\n    expires: \"{t1}\"\n  - destination: a.example\n    expires: \"{t2}\"\n"
        ));
        assert_eq!(p.rule_for("a.example").unwrap().expires, time(&t2));

        // Same ports, one permanent: permanent.
        let p = compile_str(&format!(
            "{PORT_443}  - destination: a.example\n    port: 443\n    protocol: TCP\n    expires: \"{t1}\"\n"
        ));
        assert_eq!(p.rule_for("a.example").unwrap().expires, None);
    }

    #[test]
    fn three_sources_merge_safely() {
        let (t1, t2) = (at(600), at(1200));
        // any until t1, 443 until t2, 80 forever.
        let p = compile_str(&format!(
            "agent_name: a\nexpected_outbound:\n  - destination: a.example\n    expires: \"{t1}\"\n  - destination: a.example\n    port: 443\n    protocol: TCP\n    expires: \"{t2}\"\n  - destination: a.example\n    port: 80\n    protocol: TCP\n"
        ));
        assert_eq!(p.rule_for("a.example").unwrap().expires, time(&t1));
        let mid = p.effective(&[], time(&t1).unwrap() + Duration::from_secs(1));
        let rule = mid.rule_for("a.example").unwrap();
        assert!(!rule.ports.any && rule.ports.listed.len() == 2);
        assert_eq!(rule.expires, time(&t2));
        let end = p.effective(&[], time(&t2).unwrap() + Duration::from_secs(1));
        let rule = end.rule_for("a.example").unwrap();
        assert_eq!(rule.ports.listed, [(Protocol::Tcp, 80)]);
        assert_eq!(rule.expires, None);
    }

    #[test]
    fn an_ignored_dynamic_duplicate_keeps_the_static_expiry() {
        let t1 = at(600);
        let p = compile_str(&format!(
            "agent_name: a\nexpected_outbound:\n  - destination: a.example\n    port: 443\n    protocol: TCP\n    expires: \"{t1}\"\nallowed_dynamic_resolution:\n  - a.example\n"
        ));
        let rule = p.rule_for("a.example").unwrap();
        assert!(!rule.dynamic && !rule.ports.any);
        assert_eq!(
            rule.expires,
            time(&t1),
            "a permanent dynamic duplicate must not make it permanent"
        );
        let later = p.effective(&[], time(&t1).unwrap() + Duration::from_secs(1));
        let rule = later.rule_for("a.example").unwrap();
        assert!(rule.dynamic && rule.expires.is_none());
    }

    #[test]
    fn address_duplicates_expire_with_the_source_that_widened_them() {
        let t1 = at(600);
        let p = compile_str(&format!(
            "agent_name: a\nexpected_outbound:\n  - destination: 192.0.2.1\n    port: 443\n    protocol: TCP\n  - destination: 192.0.2.1\n    expires: \"{t1}\"\n  - destination: 192.0.2.2\n  - destination: 192.0.2.2\n    expires: \"{t1}\"\n"
        ));
        assert_eq!(p.addresses.len(), 2);
        assert!(p.addresses[0].ports.any);
        assert_eq!(p.addresses[0].expires, time(&t1));
        assert_eq!(
            p.addresses[1].expires, None,
            "any-port forever covers the merge"
        );
        assert_eq!(p.address_entries().len(), 4);
        let later = p.effective(&[], time(&t1).unwrap() + Duration::from_secs(1));
        let a = &later.addresses[0];
        assert_eq!((a.ports.any, a.expires), (false, None));
        assert_eq!(a.ports.listed, [(Protocol::Tcp, 443)]);
        assert_eq!(later.addresses.len(), 2);
    }

    #[test]
    fn next_expiry_after_skips_what_already_expired() {
        let (t1, t2) = (at(600), at(1200));
        let p = compile_str(&format!(
            "agent_name: a\nexpected_outbound:\n  - destination: a.example\n    expires: \"{t1}\"\n  - destination: 192.0.2.1\n    expires: \"{t2}\"\n"
        ));
        let (t1, t2) = (time(&t1).unwrap(), time(&t2).unwrap());
        assert_eq!(p.next_expiry_after(SystemTime::now()), Some(t1));
        // At t1 the file still holds the expired entry: the next deadline is t2, never t1 again.
        assert_eq!(p.next_expiry(), Some(t1));
        assert_eq!(p.next_expiry_after(t1), Some(t2));
        assert_eq!(p.next_expiry_after(t2), None);
        let set = PolicySet::index(vec![Arc::new(p)]);
        assert_eq!(set.next_expiry_after(t1), Some(t2));
        assert_eq!(set.next_expiry_after(t2 + Duration::from_secs(5)), None);
    }

    #[test]
    fn public_suffixes_come_from_the_list() {
        for broad in [
            "*.com.ar",
            "*.r2.dev",
            "com.ar",
            "*.com",
            "*.co.uk",
            "*.github.io",
            "*.amazonaws.com",
            "*.pages.dev",
            "*.herokuapp.com",
            "*.blogspot.com",
            "x*.r2.dev",
        ] {
            let key = name::pattern_key(broad).unwrap();
            assert!(over_broad(&key).is_some(), "{broad}");
        }
        for fine in [
            "*.example.com",
            "*.foo.com.ar",
            "*.bucket.r2.dev",
            "api.example.com",
        ] {
            let key = name::pattern_key(fine).unwrap();
            assert!(over_broad(&key).is_none(), "{fine}");
        }
    }
}

#[cfg(test)]
mod time_tests {
    use super::parse_rfc3339;

    #[test]
    fn rfc3339_lower_case_and_strict_offsets() {
        let utc = parse_rfc3339("2026-11-30T23:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-11-30t23:00:00z").unwrap(), utc);
        assert_eq!(parse_rfc3339("2026-11-30t23:00:00-00:00").unwrap(), utc);
        assert_eq!(parse_rfc3339("2026-12-01T22:59:00+23:59").unwrap(), utc);
        for bad in [
            "2026-11-30T23:00:00+99:99",
            "2026-11-30T23:00:00+24:00",
            "2026-11-30T23:00:00+23:60",
            "2026-11-30T23:00:00++1:00",
            "2026-11-30T23:00:00-0:000",
            "2026-11-30T23:00:00+0100",
            "2026-11-30T23:00:00+01:0a",
            "2026-11-30T23:00:00Z+01:00",
            "2026-11-30T23:00:00+00:00+01:00",
            "2026-11-30T23:00:00.Z",
            "2026-11-30T23:00:00.5x+01:00",
            "2026-11-30x23:00:00Z",
            "2026-11-30T23:00:00é1:00",
            "Z",
            "",
        ] {
            let e = parse_rfc3339(bad).expect_err(bad);
            assert!(
                e.starts_with(&format!("'{bad}' is not an RFC 3339 time")),
                "{e}"
            );
        }
    }

    #[test]
    fn rfc3339_offsets_are_applied() {
        let utc = parse_rfc3339("2026-11-30T23:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-12-01T00:00:00+01:00").unwrap(), utc);
        assert_eq!(parse_rfc3339("2026-11-30T18:30:00-04:30").unwrap(), utc);
        assert!(parse_rfc3339("2026-11-30T23:00:00.250Z").unwrap() > utc);
        for bad in [
            "next tuesday",
            "2026-11-30",
            "2026-11-30T23:00:00+1",
            "2026-11-30T23:00:00",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
