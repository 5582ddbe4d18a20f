//! The policy's `firewall:` section: where this agent's nftables sets live
//! and how long their elements last. Data only; `fence/` acts on it.

use std::path::PathBuf;

/// The nftables address family of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Inet,
    Ip,
    Ip6,
}

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
