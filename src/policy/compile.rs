//! One policy file's text into a [`Policy`], with every error and warning
//! (file, line, field) collected rather than stopping at the first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

use super::breadth::{over_broad, over_broad_net};
use super::error::PolicyError;
use super::expiry::entry_expiry;
use super::file::{self, Mode, PolicyFileV1, SUPPORTED_VERSIONS};
use super::firewall::compile_firewall;
use super::merge::RuleBuilder;
use super::model::{PatternFacts, Policy, Ports, Rule};
use super::{doh, exfil_limits, name, private, qtypes};
use crate::diagnostics::{Diagnostics, locate, yaml_error};

/// Parses and compiles one policy file's text.
pub fn compile_source(file: &Path, source: &str, diags: &mut Diagnostics) -> Option<Policy> {
    let raw: PolicyFileV1 = match serde_yaml::from_str(source) {
        Ok(raw) => raw,
        Err(e) => {
            yaml_error(diags, file, source, &e);
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
pub(super) struct Occurrences<'a>(HashMap<&'a str, usize>);

impl<'a> Occurrences<'a> {
    /// Where `value` is, found only if a message needs it: locating every
    /// entry eagerly made loading quadratic in the file size.
    pub(super) fn spot<'s>(&mut self, source: &'s str, value: &'a str) -> Spot<'s, 'a> {
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
pub(super) struct Spot<'s, 'a> {
    source: &'s str,
    value: &'a str,
    nth: usize,
}

impl Spot<'_, '_> {
    pub(super) fn line(&self) -> Option<usize> {
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
    let mode = mode.unwrap_or_default();
    let catch_all = |pattern: &str| Rule {
        pattern: pattern.into(),
        dynamic: false,
        ports: Ports {
            any: true,
            listed: Vec::new(),
        },
        expires: None,
        grant: None,
        qtypes: None,
        facts: PatternFacts::of(pattern),
    };
    let learn = match mode {
        Mode::Enforce => None,
        Mode::Learn => {
            diags.warning(
                file,
                locate(source, "learn", 0),
                Some("mode".into()),
                "learn: names outside the allowlist are resolved and fed to the firewall \
                 (audited as would_deny); this policy observes the agent, it does not fence it",
            );
            Some(catch_all("(learn mode)"))
        }
        Mode::Monitor => {
            diags.warning(
                file,
                locate(source, "monitor", 0),
                Some("mode".into()),
                "monitor: every name resolves and every connection passes; lookups and \
                 connections outside the allowlist are alerted, not blocked",
            );
            Some(catch_all("(monitor mode)"))
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
                e.to_string(),
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
        let ports = match (port, protocol) {
            (None, None) => None,
            (Some(port), Some(proto)) => Some((*proto, *port)),
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
                    format!("protocol '{}' needs a port", proto.as_str()),
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
            Err(e) => diags.error(file, line.line(), field("destination"), e.to_string()),
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
            Err(e) => diags.error(file, line.line(), field, e.to_string()),
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
        id: crate::policy::name::PolicyId::of(agent_name.trim()),
        metrics_slot: 0,
        exfil,
        agent: agent_name.trim().into(),
        source: file.to_path_buf(),
        clients: client_nets,
        rules: builder.rules,
        addresses: builder.addresses,
        firewall,
        learn,
        monitor: mode == Mode::Monitor,
        matcher: builder.matcher,
        entries: builder.entries.into(),
        address_entries: builder.address_entries.into(),
        private: opted.into(),
        inbound,
    }
}

enum Destination {
    Address(IpNet),
    Name(String),
}

fn classify_destination(raw: &str) -> Result<Destination, PolicyError> {
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
pub(super) fn parse_net(raw: &str) -> Result<IpNet, PolicyError> {
    let raw = raw.trim();
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = raw.parse().map_err(|_| PolicyError::NotAnAddress {
        raw: raw.to_string(),
    })?;
    if net.trunc() != net {
        return Err(PolicyError::HostBits {
            raw: raw.to_string(),
            network: net.trunc(),
        });
    }
    Ok(net)
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
    if let Some(endpoint) = doh::doh_endpoint(key).filter(|_| over_broad(key).is_none()) {
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
    qtypes::parse_qtypes(list)
        .map_err(|e| {
            let at = match &e {
                PolicyError::Qtype { raw, .. } => locate(source, raw.trim(), 0),
                _ => None,
            };
            let line = at.or_else(|| locate(source, "qtypes", 0));
            diags.error(file, line, field, e.to_string());
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::compile_source;
    use crate::diagnostics::Diagnostics;
    use crate::policy::{Policy, Protocol};

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

    /// The errors of `src`, which must be refused, as printed.
    fn refused(src: &str) -> Vec<String> {
        let (p, d) = compile_str(src);
        assert!(p.is_none());
        d.errors().map(|e| e.to_string()).collect()
    }

    /// The warnings of `src`, which must compile, as printed.
    fn warned(src: &str) -> Vec<String> {
        let (p, d) = compile_str(src);
        assert!(p.is_some());
        d.warnings().map(|w| w.to_string()).collect()
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
        let errs = refused(src);
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
        let e = refused("agent_name: a\nexpected_outbund: []\n").remove(0);
        assert!(e.starts_with("error: p.yaml:2"), "{e}");
        assert!(e.contains("unknown field `expected_outbund`"), "{e}");
    }

    #[test]
    fn over_broad_patterns_warn() {
        let src = "agent_name: a\nallowed_dynamic_resolution:\n  - \"*\"\n  - \"*.com\"\n  - \"*.co.uk\"\n  - \"*.example.com\"\n";
        let w = warned(src);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("p.yaml:3"), "{w:?}");
    }

    #[test]
    fn over_broad_address_destinations_warn() {
        // Distinct ports, so the ranges do not overlap.
        let src = "agent_name: a\nexpected_outbound:\n  - destination: 0.0.0.0/0\n    port: 1\n    protocol: TCP\n  - destination: \"::/0\"\n    port: 443\n    protocol: TCP\n  - destination: 64.0.0.0/2\n    port: 2\n    protocol: TCP\n  - destination: 2000::/3\n    port: 3\n    protocol: TCP\n  - destination: 10.0.0.0/8\n    port: 4\n    protocol: TCP\n  - destination: 2001:db8::/32\n    port: 5\n    protocol: TCP\n";
        let w = warned(src);
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
        let e = refused(src).remove(0);
        assert!(
            e.contains("p.yaml:7") && e.contains("did you mean 10.1.0.0/16"),
            "{e}"
        );
    }

    #[test]
    fn overlapping_address_ranges_are_errors() {
        let src = "agent_name: a\nexpected_outbound:\n  - destination: 10.0.0.0/8\n  - destination: 10.1.0.0/16\n    port: 443\n    protocol: TCP\n  - destination: 192.0.2.0/24\n    port: 80\n    protocol: TCP\n  - destination: 192.0.2.1\n    port: 443\n    protocol: TCP\n";
        let errs = refused(src);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("p.yaml:4") && errs[0].contains("10.1.0.0/16 overlaps 10.0.0.0/8"),
            "{errs:?}"
        );
    }
}
