//! The policy's `firewall:` section: where this agent's nftables sets live
//! and how long their elements last. Data only (and its validation); `fence/` acts on it.

use std::path::{Path, PathBuf};

use super::file;
use crate::diagnostics::{Diagnostics, locate};

/// The nftables address family of a table; `family:` in the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Inet,
    Ip,
    Ip6,
}

crate::input::deserialize_choice!(Family {
    "inet" => Inet,
    "ip" => Ip,
    "ip6" => Ip6,
});

/// What the output chain does with a denied packet; `deny_action:` in the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyAction {
    /// TCP reset or ICMP administratively prohibited: the agent fails at once
    /// and can fall back.
    Reject,
    /// Silence: the agent waits for its own timeout, and learns nothing.
    Drop,
}

crate::input::deserialize_choice!(DenyAction {
    "reject" => Reject,
    "drop" => Drop,
});

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }
}

/// Where and how one policy's addresses are fed; from the policy's `firewall:`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FirewallConfig {
    /// Network namespace holding the sets (`/run/netns/NAME` or a path); `None` is allowdns's own.
    pub netns: Option<PathBuf>,
    pub family: Family,
    pub table: String,
    pub set_v4: String,
    pub set_v6: String,
    pub set_v4_ports: String,
    pub set_v6_ports: String,
    pub min_ttl: u32,
    pub max_ttl: u32,
    pub grace: u32,
    pub deny_action: DenyAction,
}

impl FirewallConfig {
    /// Defaults for every key not given in the policy.
    pub fn with_defaults() -> Self {
        FirewallConfig {
            netns: None,
            family: Family::Inet,
            table: "allowdns".into(),
            set_v4: "allowed_v4".into(),
            set_v6: "allowed_v6".into(),
            set_v4_ports: "allowed_v4_ports".into(),
            set_v6_ports: "allowed_v6_ports".into(),
            min_ttl: 30,
            max_ttl: 86_400,
            grace: 30,
            deny_action: DenyAction::Reject,
        }
    }

    pub fn passes_v4(&self) -> bool {
        self.family != Family::Ip6
    }

    pub fn passes_v6(&self) -> bool {
        self.family != Family::Ip
    }

    pub fn describe(&self) -> String {
        let ns = self.netns.as_ref().map_or_else(
            || "allowdns's own namespace".to_string(),
            |p| format!("netns {}", p.display()),
        );
        format!("table {} {} in {ns}", self.family.as_str(), self.table)
    }
}

/// The `firewall:` section, validated; every key not given keeps its default.
pub(super) fn compile_firewall(
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
        deny_action,
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
    if let Some(family) = family {
        config.family = family;
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
    config.deny_action = deny_action.unwrap_or(config.deny_action);
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
