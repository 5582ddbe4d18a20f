//! The ruleset additions for a sidecar: allowdns running inside the agent's
//! own network namespace (a Kubernetes or podman pod), not outside it as in
//! the kennel. The default-deny ruleset sends DNS only to allowdns; here
//! allowdns's own upstream queries leave from the same namespace, so they are
//! let out by socket owner (`meta skuid`): the agent runs as another uid and
//! holds no capability to become this one.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::nft::NftError;
use crate::policy::firewall::FirewallConfig;

/// Who allowdns is in the pod, and what may reach it from outside.
#[derive(Clone, Debug)]
pub struct Sidecar {
    /// The uid allowdns runs as (never the agent's).
    pub uid: u32,
    /// TCP ports accepted inbound (metrics, probes).
    pub open_tcp: Vec<u16>,
}

/// Why a sidecar ruleset could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// Only forwarders have known addresses to let out.
    #[error(
        "a sidecar ruleset needs forwarders (`--upstream IP` or `upstream: {{ servers: [...] }}`), \
         not {0}: the firewall lets allowdns reach only those"
    )]
    NotForwarding(&'static str),
    #[error("cannot run nft: {0}")]
    Nft(#[source] std::io::Error),
    /// nft's own message.
    #[error("nft refused the ruleset: {0}")]
    NftRefused(String),
}

/// `insert rule` lines that go after the ruleset `render` prints.
pub fn rules(config: &FirewallConfig, sidecar: &Sidecar, upstream: &[SocketAddr]) -> String {
    let (family, table) = (config.family.as_str(), &config.table);
    let mut out = format!(
        "\n# Sidecar: allowdns (uid {}) shares the agent's namespace; only its sockets reach the upstream.\n",
        sidecar.uid
    );
    for server in upstream {
        let ip = if server.is_ipv4() { "ip" } else { "ip6" };
        let _ = writeln!(
            out,
            "insert rule {family} {table} output meta skuid {} {ip} daddr {} meta l4proto {{ udp, tcp }} th dport {} accept comment \"allowdns upstream\"",
            sidecar.uid,
            server.ip(),
            server.port()
        );
    }
    for port in &sidecar.open_tcp {
        let _ = writeln!(
            out,
            "insert rule {family} {table} input tcp dport {port} accept comment \"sidecar port\""
        );
    }
    out
}

/// `nft -f -` in the current network namespace (an init container's, which is the pod's).
pub fn load(ruleset: &str) -> Result<(), SidecarError> {
    super::nft::load(ruleset.as_bytes()).map_err(|e| match e {
        NftError::Spawn(e) | NftError::Io(e) => SidecarError::Nft(e),
        NftError::Refused(stderr) => SidecarError::NftRefused(stderr),
    })
}
