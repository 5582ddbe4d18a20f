//! The on-disk policy format, exactly as people already write it (seed 000).
//!
//! This is a wire type: it mirrors the YAML and nothing more. Validation and
//! compilation into the matcher happen in [`super::compile`], so the format can
//! gain versions without the resolver noticing.

use serde::{Deserialize, Deserializer};

use super::firewall::{DenyAction, Family};
use super::model::Protocol;

/// The policy format versions this build reads.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

/// One policy file, version 1 (the seed format; `version` may be omitted).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFileV1 {
    /// Format version; absent means 1, so the seed format loads as written.
    pub version: Option<u32>,
    /// Names the agent in alerts and audit records.
    pub agent_name: String,
    /// CIDRs whose queries this policy governs; empty means every client,
    /// which is only allowed when a single policy is loaded.
    #[serde(default)]
    pub clients: Vec<String>,
    /// `enforce` (default) denies unlisted names; `learn` resolves them
    /// anyway and audits them as `would_deny` (the observation period);
    /// `monitor` lets everything through and alerts on what is not listed.
    pub mode: Option<Mode>,
    /// Destinations the agent is expected to reach: names, patterns, IPs, CIDRs.
    #[serde(default)]
    pub expected_outbound: Vec<OutboundV1>,
    /// Patterns answered but flagged `dynamic: true` in the audit log.
    #[serde(default)]
    pub allowed_dynamic_resolution: Vec<DynamicV1>,
    /// Feed handed-out addresses into nftables sets; absent means no feeding.
    pub firewall: Option<FirewallV1>,
    /// The exfiltration budget under wildcards; absent means the defaults.
    pub exfil: Option<ExfilV1>,
    /// Ports the ruleset's input chain opens to the agent (a dev server).
    #[serde(default)]
    pub inbound: Vec<InboundV1>,
}

/// What a policy does with names outside its allowlist (`mode:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny them (NXDOMAIN and an alert).
    #[default]
    Enforce,
    /// Resolve them anyway and audit them as `would_deny`.
    Learn,
    /// Resolve them and pass every connection, but alert on each lookup and
    /// connection the allowlist does not cover.
    Monitor,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Learn => "learn",
            Mode::Monitor => "monitor",
        })
    }
}

crate::input::deserialize_choice!(Mode {
    "enforce" => Enforce,
    "learn" => Learn,
    "monitor" => Monitor,
});

/// `TCP` or `UDP`, in any case: the seed format writes them upper case.
/// Decided inside the scalar's visit, so the parser's error names its line
/// and field path.
impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Choice;
        impl serde::de::Visitor<'_> for Choice {
            type Value = Protocol;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("TCP or UDP")
            }
            fn visit_str<E: serde::de::Error>(self, raw: &str) -> Result<Protocol, E> {
                match raw.to_ascii_lowercase().as_str() {
                    "tcp" => Ok(Protocol::Tcp),
                    "udp" => Ok(Protocol::Udp),
                    _ => Err(E::unknown_variant(raw, &["TCP", "UDP"])),
                }
            }
        }
        deserializer.deserialize_str(Choice)
    }
}

/// One `inbound` entry: a port the agent may listen on for the outside.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundV1 {
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: Protocol,
}

/// The `exfil:` section (docs/exfiltration.md); every key has a default.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExfilV1 {
    /// `on` (default) or `off`.
    pub budget: Option<String>,
    pub soft_bytes: Option<u32>,
    pub hard_bytes: Option<u32>,
    pub drain_bytes_per_minute: Option<u32>,
    pub cooldown_secs: Option<u32>,
    pub min_ttl_secs: Option<u32>,
}

/// The `firewall:` section; every key has a default.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirewallV1 {
    /// Network namespace of the sets: a name under /run/netns, or a path.
    pub netns: Option<String>,
    /// `inet` (default), `ip` or `ip6`.
    pub family: Option<Family>,
    pub table: Option<String>,
    pub set_v4: Option<String>,
    pub set_v6: Option<String>,
    pub set_v4_ports: Option<String>,
    pub set_v6_ports: Option<String>,
    /// Element timeouts are the record TTL clamped to [min_ttl, max_ttl] plus grace.
    pub min_ttl: Option<u32>,
    pub max_ttl: Option<u32>,
    pub grace: Option<u32>,
    /// `reject` (default) or `drop`: what a denied packet gets.
    pub deny_action: Option<DenyAction>,
}

/// One `expected_outbound` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundV1 {
    /// Exact name, wildcard pattern, IP address or CIDR.
    pub destination: String,
    /// Port the firewall may enforce alongside the address.
    pub port: Option<u16>,
    /// `TCP` or `UDP`; goes with `port`.
    pub protocol: Option<Protocol>,
    /// Free text for humans; carried into `check` output, never interpreted.
    pub purpose: Option<String>,
    /// RFC 3339 time after which the entry no longer allows anything.
    pub expires: Option<String>,
    /// Query types answered; wildcards default to address types only.
    pub qtypes: Option<Vec<String>>,
    /// Special-purpose ranges (RFC 1918, link-local, ...) this name's answers
    /// may carry; stripped otherwise (docs/special-addresses.md).
    #[serde(default)]
    pub private: Vec<String>,
}

/// One `allowed_dynamic_resolution` entry: a bare pattern (the seed format),
/// or a pattern with an expiry.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum DynamicV1 {
    Pattern(String),
    Entry(DynamicEntryV1),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicEntryV1 {
    pub pattern: String,
    /// RFC 3339 time after which the entry no longer allows anything.
    pub expires: Option<String>,
    pub qtypes: Option<Vec<String>>,
    /// As in [`OutboundV1::private`].
    #[serde(default)]
    pub private: Vec<String>,
}

/// What [`salvage`] recovered.
pub struct Salvaged {
    pub raw: PolicyFileV1,
    /// (field path, message) for each part that did not deserialize.
    pub errors: Vec<(String, String)>,
    /// Per list key, the original index of each entry kept in `raw`, so
    /// messages about kept entries name the index the file has.
    pub kept: Vec<(&'static str, Vec<usize>)>,
}

/// The top-level keys, for "unknown field" messages in [`salvage`].
const FIELDS: &str = "`version`, `agent_name`, `clients`, `mode`, `expected_outbound`, `allowed_dynamic_resolution`, `firewall`, `exfil`, `inbound`";

/// After the typed parse stopped at its first error: the file as far as it
/// deserializes, key by key and list entry by list entry, plus one
/// (field, message) for each part that does not, so that one run reports
/// every shape error and the semantic errors of everything else. `None`
/// when the text is not YAML (a syntax error ends the file at its first).
pub fn salvage(source: &str) -> Option<Salvaged> {
    use serde_yaml::Value;
    let Ok(Value::Mapping(map)) = serde_yaml::from_str::<Value>(source) else {
        return None;
    };
    let mut errors = Vec::new();
    let mut raw = PolicyFileV1 {
        version: None,
        agent_name: String::new(),
        clients: Vec::new(),
        mode: None,
        expected_outbound: Vec::new(),
        allowed_dynamic_resolution: Vec::new(),
        firewall: None,
        exfil: None,
        inbound: Vec::new(),
    };
    let mut named = false;
    let mut kept = Vec::new();
    for (key, value) in map {
        let Some(key) = key.as_str().map(str::to_string) else {
            errors.push((String::new(), format!("key {key:?} is not a string")));
            continue;
        };
        match key.as_str() {
            "version" => raw.version = one(value, &key, &mut errors).flatten(),
            "agent_name" => {
                named = true;
                raw.agent_name = one(value, &key, &mut errors).unwrap_or_default();
            }
            "clients" => raw.clients = list(value, "clients", &mut errors, &mut kept),
            "mode" => raw.mode = one(value, &key, &mut errors).flatten(),
            "expected_outbound" => {
                raw.expected_outbound = list(value, "expected_outbound", &mut errors, &mut kept)
            }
            "allowed_dynamic_resolution" => {
                raw.allowed_dynamic_resolution =
                    list(value, "allowed_dynamic_resolution", &mut errors, &mut kept)
            }
            "firewall" => raw.firewall = one(value, &key, &mut errors).flatten(),
            "exfil" => raw.exfil = one(value, &key, &mut errors).flatten(),
            "inbound" => raw.inbound = list(value, "inbound", &mut errors, &mut kept),
            _ => errors.push((
                String::new(),
                format!("unknown field `{key}`, expected one of {FIELDS}"),
            )),
        }
    }
    if !named {
        errors.push((String::new(), "missing field `agent_name`".into()));
    }
    Some(Salvaged { raw, errors, kept })
}

fn one<T: serde::de::DeserializeOwned>(
    value: serde_yaml::Value,
    key: &str,
    errors: &mut Vec<(String, String)>,
) -> Option<T> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| {
            // The path inside the value: `protocol` under `expected_outbound[1]`.
            let message = e.inner().to_string();
            let mut inner = e.path().to_string();
            // An unknown key is the container's error, as serde reports it.
            if message.starts_with("unknown field `") {
                inner = inner
                    .rsplit_once('.')
                    .map_or(".", |(parent, _)| parent)
                    .into();
            }
            let field = match inner.as_str() {
                "." => key.to_string(),
                inner if inner.starts_with('[') => format!("{key}{inner}"),
                inner => format!("{key}.{inner}"),
            };
            errors.push((field, message))
        })
        .ok()
}

fn list<T: serde::de::DeserializeOwned>(
    value: serde_yaml::Value,
    key: &'static str,
    errors: &mut Vec<(String, String)>,
    kept: &mut Vec<(&'static str, Vec<usize>)>,
) -> Vec<T> {
    match value {
        serde_yaml::Value::Sequence(items) => {
            let mut indices = Vec::new();
            let entries = items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let entry = one(item, &format!("{key}[{i}]"), errors)?;
                    indices.push(i);
                    Some(entry)
                })
                .collect();
            kept.push((key, indices));
            entries
        }
        other => one(other, key, errors).unwrap_or_default(),
    }
}

/// The 1-based line of a salvage error's field: `key` at the top level, the
/// `i`th block-list entry under it (`key[i]`), and a key inside either
/// (`key[i].sub`, `key.sub`); the nearest enclosing line found otherwise,
/// `None` if not even `key` is.
pub fn field_line(source: &str, field: &str) -> Option<usize> {
    let (head, sub) = match field.split_once('.') {
        Some((head, sub)) => (head, Some(sub)),
        None => (field, None),
    };
    let (key, index) = match head.split_once('[') {
        Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (head, None),
    };
    let lines: Vec<&str> = source.lines().collect();
    let at = lines.iter().position(|l| {
        l.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    })?;
    let found = match index {
        None => at,
        Some(index) => entry_line(&lines, at, index).unwrap_or(at),
    };
    let Some(sub) = sub else {
        return Some(found + 1);
    };
    let sub = sub.split(['.', '[']).next().unwrap_or(sub);
    Some(sub_key_line(&lines, found, sub).unwrap_or(found) + 1)
}

/// The 0-based line of the `index`th block-list entry under the key on line `at`.
fn entry_line(lines: &[&str], at: usize, index: usize) -> Option<usize> {
    let mut item_indent = None;
    let mut seen = 0;
    for (n, line) in lines.iter().enumerate().skip(at + 1) {
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = line.len() - body.len();
        if indent == 0 && !body.starts_with('-') {
            break;
        }
        let item = body.starts_with("- ") || body == "-";
        if item && *item_indent.get_or_insert(indent) == indent {
            if seen == index {
                return Some(n);
            }
            seen += 1;
        }
    }
    None
}

/// The 0-based line of `sub:` inside the block that starts on line `at` (a
/// list entry `- a: ..` or a `key:` line), if written there.
fn sub_key_line(lines: &[&str], at: usize, sub: &str) -> Option<usize> {
    let is_sub = |body: &str| {
        let body = body.strip_prefix("- ").unwrap_or(body).trim_start();
        body.strip_prefix(sub)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    };
    let first = lines.get(at)?;
    let indent_of = |line: &str| line.len() - line.trim_start().len();
    let block_indent = indent_of(first);
    if is_sub(first.trim_start()) {
        return Some(at);
    }
    for (n, line) in lines.iter().enumerate().skip(at + 1) {
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        if indent_of(line) <= block_indent {
            break;
        }
        if is_sub(body) {
            return Some(n);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::field_line;

    #[test]
    fn field_lines_reach_keys_inside_entries_and_sections() {
        let src = "agent_name: a\nexpected_outbound:\n  - destination: x.test\n    port: 1\n  - protocol: tcpp\n    destination: y.test\n    port: x\nfirewall:\n  # the sets\n  family: inet4\n";
        assert_eq!(field_line(src, "expected_outbound"), Some(2));
        assert_eq!(field_line(src, "expected_outbound[1]"), Some(5));
        assert_eq!(field_line(src, "expected_outbound[1].protocol"), Some(5));
        assert_eq!(field_line(src, "expected_outbound[1].port"), Some(7));
        // Not inside the entry: the entry's own line, never the next one's.
        assert_eq!(field_line(src, "expected_outbound[0].protocol"), Some(3));
        assert_eq!(field_line(src, "firewall.family"), Some(10));
        assert_eq!(field_line(src, "clients"), None);
    }
}
