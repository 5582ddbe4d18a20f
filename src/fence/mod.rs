//! Feeding handed-out addresses into nftables sets, so a default-deny
//! ruleset in the agent's namespace passes exactly what DNS allowed.
//!
//! Per target (namespace, family, table) there are four sets:
//! - `set_v4` / `set_v6` (`ipv4_addr` / `ipv6_addr`, flags timeout): addresses
//!   of names allowed on any port;
//! - `set_v4_ports` / `set_v6_ports` (`addr . inet_proto . inet_service`,
//!   flags interval,timeout): addresses of names allowed only on given ports,
//!   and every IP/CIDR destination written in the policy (permanent).
//!
//! [`Firewall::feed_decided_at`] runs before the reply leaves; if the kernel does not
//! confirm the update, the client gets SERVFAIL (fail closed). An element's
//! timeout is the record TTL clamped to `[min_ttl, max_ttl]` plus `grace`,
//! never 0, and never shortened. Updates are skipped while the element still
//! outlives the client's cached answer by half the grace, so cache hits
//! refresh elements without putting netlink on every query.
//!
//! The map (the targets' settings, `firewall:`, are policy data in
//! `policy::firewall`; the fence reads them):
//!
//! ```text
//! firewall.rs  the targets opened at startup; which one a policy feeds; feed, withdraw
//! follow.rs    the Fence trait: what a change of the policy in force asks of it
//! target.rs    one target: open and verify its sets, feed, install ranges, withdraw
//! handed.rs    which name each address was handed out for (for alerts)
//! nflog.rs     blocked connections, read from the ruleset's NFLOG group
//! keys.rs      set choice and element keys, policy ranges, known expiries
//! netlink.rs   the nfnetlink client for set elements (netlink-packet-netfilter)
//! watch.rs     re-feeding when the ruleset is reloaded under allowdns
//! ruleset.rs   the default-deny ruleset `allowdns nft-ruleset` prints
//! selftest.rs  the fence checked from inside the namespace (`run`, `selftest`)
//! nft.rs       `nft -f -`: loading a ruleset (kennel, sidecar)
//! sidecar.rs   its additions when allowdns shares the agent's namespace (a pod)
//! takeover.rs  on start: elements a previous run left, kept or withdrawn
//! error.rs     FenceError and FeedError (a refused permission told apart)
//! ```

mod error;
mod firewall;
mod follow;
pub mod handed;
mod keys;
pub mod netlink;
pub mod nflog;
pub mod nft;
pub mod ruleset;
pub mod selftest;
pub mod sidecar;
pub mod takeover;
mod target;
pub mod watch;

pub use error::{FeedError, FenceError, TargetId};
pub use firewall::{Firewall, withdrawable};
pub use follow::{Ended, Fence};
