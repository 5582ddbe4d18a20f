//! The on-disk policy format, exactly as people already write it (seed 000).
//!
//! This is a wire type: it mirrors the YAML and nothing more. Validation and
//! compilation into the matcher happen in [`super::compile`], so the format can
//! gain versions without the resolver noticing.

use serde::Deserialize;

/// The policy format versions this build reads.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

/// One policy file, version 1 (the seed format; `version` may be omitted).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFileV1 {
    /// Format version; absent means 1, so the seed format loads as written.
    #[serde(default)]
    pub version: Option<u32>,
    /// Names the agent in alerts and audit records.
    pub agent_name: String,
    /// CIDRs whose queries this policy governs; empty means every client,
    /// which is only allowed when a single policy is loaded.
    #[serde(default)]
    pub clients: Vec<String>,
    /// `enforce` (default) denies unlisted names; `learn` resolves them
    /// anyway and audits them as `would_deny` (the observation period).
    #[serde(default)]
    pub mode: Option<String>,
    /// Destinations the agent is expected to reach: names, patterns, IPs, CIDRs.
    #[serde(default)]
    pub expected_outbound: Vec<OutboundV1>,
    /// Patterns answered but flagged `dynamic: true` in the audit log.
    #[serde(default)]
    pub allowed_dynamic_resolution: Vec<DynamicV1>,
    /// Feed handed-out addresses into nftables sets; absent means no feeding.
    #[serde(default)]
    pub firewall: Option<FirewallV1>,
    /// Ports the ruleset's input chain opens to the agent (a dev server).
    #[serde(default)]
    pub inbound: Vec<InboundV1>,
}

/// One `inbound` entry: a port the agent may listen on for the outside.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundV1 {
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
}

/// The `firewall:` section; every key has a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallV1 {
    /// Network namespace of the sets: a name under /run/netns, or a path.
    #[serde(default)]
    pub netns: Option<String>,
    /// `inet` (default), `ip` or `ip6`.
    #[serde(default)]
    pub family: Option<String>,
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub set_v4: Option<String>,
    #[serde(default)]
    pub set_v6: Option<String>,
    #[serde(default)]
    pub set_v4_ports: Option<String>,
    #[serde(default)]
    pub set_v6_ports: Option<String>,
    /// Element timeouts are the record TTL clamped to [min_ttl, max_ttl] plus grace.
    #[serde(default)]
    pub min_ttl: Option<u32>,
    #[serde(default)]
    pub max_ttl: Option<u32>,
    #[serde(default)]
    pub grace: Option<u32>,
}

/// One `expected_outbound` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundV1 {
    /// Exact name, wildcard pattern, IP address or CIDR.
    pub destination: String,
    /// Port the firewall may enforce alongside the address.
    #[serde(default)]
    pub port: Option<u16>,
    /// `TCP` or `UDP`; goes with `port`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Free text for humans; carried into `check` output, never interpreted.
    #[serde(default)]
    pub purpose: Option<String>,
    /// RFC 3339 time after which the entry no longer allows anything.
    #[serde(default)]
    pub expires: Option<String>,
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
    #[serde(default)]
    pub expires: Option<String>,
    /// As in [`OutboundV1::private`].
    #[serde(default)]
    pub private: Vec<String>,
}
