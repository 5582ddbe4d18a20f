//! Policies: the on-disk format ([`file`]), its validation into a [`Policy`],
//! and the compiled name index ([`matcher`]).
//!
//! Loading never stops at the first problem: every error and over-broad
//! pattern across all files is collected with file, line and field.

pub mod file;
pub mod matcher;
pub mod name;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::diagnostics::{Diagnostics, locate, yaml_error};
use crate::firewall::{Family, FirewallConfig};
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
    /// Index of the agent's series in [`crate::metrics`].
    pub metrics_slot: u16,
    matcher: Matcher,
}

impl Policy {
    /// The rule allowing a canonical query key, if any.
    pub fn rule_for(&self, key: &str) -> Option<&Rule> {
        self.matcher.lookup(key).map(|id| &self.rules[id as usize])
    }

    /// The earliest time a rule or range of this policy expires.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        let rules = self.rules.iter().filter_map(|r| r.expires);
        rules
            .chain(self.addresses.iter().filter_map(|a| a.expires))
            .min()
    }

    /// This policy as in force at `now`: expired entries dropped, `grants`
    /// added. The index is rebuilt, so a wildcard that an expired exact
    /// entry shadowed takes over again.
    pub fn effective(&self, grants: &[Rule], now: SystemTime) -> Policy {
        let mut builder = RuleBuilder::default();
        for rule in self.rules.iter().chain(grants).filter(|r| r.live_at(now)) {
            builder.rule(rule.clone());
        }
        Policy {
            agent: self.agent.clone(),
            source: self.source.clone(),
            clients: self.clients.clone(),
            rules: builder.rules,
            addresses: self
                .addresses
                .iter()
                .filter(|a| a.expires.is_none_or(|at| now < at))
                .cloned()
                .collect(),
            firewall: self.firewall.clone(),
            learn: self.learn.clone(),
            metrics_slot: self.metrics_slot,
            matcher: builder.matcher,
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
                if extra.is_empty() && p.next_expiry().is_none() {
                    p.clone()
                } else {
                    Arc::new(p.effective(extra, now))
                }
            })
            .collect();
        Self::index(policies)
    }

    /// The earliest expiry across all policies.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.policies.iter().filter_map(|p| p.next_expiry()).min()
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
    let mut policies = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(source) => {
                if let Some(policy) = compile_source(file, &source, diags) {
                    policies.push(policy);
                }
            }
            Err(e) => diags.error(file, None, None, format!("cannot read policy: {e}")),
        }
    }
    check_across_files(&policies, diags);
    if diags.has_errors() {
        return None;
    }
    Some(PolicySet::index(
        policies.into_iter().map(Arc::new).collect(),
    ))
}

/// Errors that only show when several policies are loaded together.
fn check_across_files(policies: &[Policy], diags: &mut Diagnostics) {
    let mut agents: HashMap<&str, &Path> = HashMap::new();
    let mut nets: HashMap<IpNet, &Path> = HashMap::new();
    for p in policies {
        if let Some(first) = agents.insert(&p.agent, &p.source) {
            diags.error(
                &p.source,
                None,
                Some("agent_name".into()),
                format!("agent '{}' is also defined in {}", p.agent, first.display()),
            );
        }
        if p.clients.is_empty() && policies.len() > 1 {
            diags.error(
                &p.source,
                None,
                Some("clients".into()),
                "required when more than one policy is loaded (which clients does this govern?)",
            );
        }
        for net in &p.clients {
            if let Some(first) = nets.insert(*net, &p.source) {
                diags.error(
                    &p.source,
                    None,
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
            return None;
        }
    };
    let errors_before = diags.errors().count();
    let policy = compile(file, source, raw, diags);
    (diags.errors().count() == errors_before).then_some(policy)
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
    for (i, entry) in expected_outbound.iter().enumerate() {
        let file::OutboundV1 {
            destination,
            port,
            protocol,
            purpose: _,
            expires,
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
            Ok(Destination::Address(net)) => builder.address(net, ports, expires),
            Ok(Destination::Name(key)) => {
                warn_if_broad(file, &line, field("destination"), &key, diags);
                builder.name(key, false, ports, expires);
            }
            Err(e) => diags.error(file, line.line(), field("destination"), e),
        }
    }
    for (i, entry) in allowed_dynamic_resolution.iter().enumerate() {
        let (pattern, expires) = match entry {
            file::DynamicV1::Pattern(pattern) => (pattern, &None),
            file::DynamicV1::Entry(file::DynamicEntryV1 { pattern, expires }) => (pattern, expires),
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
                builder.name(key, true, None, expires);
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
    Policy {
        metrics_slot: crate::metrics::METRICS.slot_for(agent_name.trim()),
        agent: agent_name.trim().into(),
        source: file.to_path_buf(),
        clients: client_nets,
        rules: builder.rules,
        addresses: builder.addresses,
        firewall,
        learn,
        matcher: builder.matcher,
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

/// Parses an RFC 3339 time with `Z` or a numeric offset (`+02:00`).
pub fn parse_rfc3339(raw: &str) -> Result<SystemTime, String> {
    let raw = raw.trim();
    let bad = || format!("'{raw}' is not an RFC 3339 time (like 2026-12-31T18:00:00Z)");
    if raw.ends_with(['Z', 'z']) {
        return humantime::parse_rfc3339_weak(&raw[..raw.len() - 1]).map_err(|_| bad());
    }
    let split = raw.len().checked_sub(6).ok_or_else(bad)?;
    let (local, offset) = raw.split_at_checked(split).ok_or_else(bad)?;
    let (sign, hhmm) = offset.split_at(1);
    let (hours, minutes) = hhmm.split_once(':').ok_or_else(bad)?;
    let (hours, minutes): (u64, u64) = (
        hours.parse().map_err(|_| bad())?,
        minutes.parse().map_err(|_| bad())?,
    );
    let shift = std::time::Duration::from_secs(hours * 3600 + minutes * 60);
    let local = humantime::parse_rfc3339_weak(local).map_err(|_| bad())?;
    match sign {
        "+" => Ok(local - shift),
        "-" => Ok(local + shift),
        _ => Err(bad()),
    }
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
}

impl RuleBuilder {
    fn name(
        &mut self,
        key: String,
        dynamic: bool,
        ports: Option<(Protocol, u16)>,
        expires: Option<SystemTime>,
    ) {
        let mut rule_ports = Ports::default();
        rule_ports.add(ports);
        self.rule(Rule {
            pattern: key.into(),
            dynamic,
            ports: rule_ports,
            expires,
            grant: None,
        });
    }

    fn rule(&mut self, new: Rule) {
        let id = self.rules.len() as RuleId;
        let Some(existing) = self.matcher.insert(&new.pattern, id) else {
            self.rules.push(new);
            return;
        };
        // Repeated destination: merge ports; a static entry keeps precedence,
        // and the entry lives as long as its longest-lived source.
        let rule = &mut self.rules[existing as usize];
        if !new.dynamic || rule.dynamic {
            rule.ports.any |= new.ports.any;
            for pair in new.ports.listed {
                rule.ports.add(Some(pair));
            }
        }
        rule.expires = rule.expires.zip(new.expires).map(|(a, b)| a.max(b));
        if rule.grant.is_some() {
            rule.grant = new.grant;
        }
    }

    fn address(&mut self, net: IpNet, ports: Option<(Protocol, u16)>, expires: Option<SystemTime>) {
        if let Some(existing) = self.addresses.iter_mut().find(|a| a.net == net) {
            existing.ports.add(ports);
            existing.expires = existing.expires.zip(expires).map(|(a, b)| a.max(b));
        } else {
            let mut rule_ports = Ports::default();
            rule_ports.add(ports);
            self.addresses.push(AddressRule {
                net,
                ports: rule_ports,
                expires,
            });
        }
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

/// Suffixes under which anyone can register names. A wildcard over one of
/// them allows an attacker's name; the list is short on purpose (common
/// registries and the free hosting platforms tunnels hide behind).
const PUBLIC_SUFFIXES: &[&str] = &[
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

pub(crate) fn is_public_suffix(name: &str) -> bool {
    !name.contains('.') || PUBLIC_SUFFIXES.contains(&name)
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
mod time_tests {
    use super::parse_rfc3339;

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
