//! allowdns: an allowlist-only DNS resolver that fences AI agents in.
//!
//! The layers, top to bottom, in the order `tests/it/architecture.rs` enforces:
//! a module imports only modules below it.
//!
//! ```text
//! cli          the command line
//! kennel/      `allowdns run`: a command fenced in namespaces of its own
//! tools/       suggest: an audit log → a policy to review; report: → a page to read
//! ops/         startup (builds the service's parts once), control socket,
//!              reload, signals, sd_notify
//! config       the settings file
//! serve/       one question's path: server (UDP) + tcp → wire → answer
//!              → handler → decide → resolve: local zone | cache | upstream
//!              → exfil budget → special addresses out → fence → audit
//! state/       the policy in force and every change to it (reload, grants,
//!              expiry, withdrawals), published to serve/ as one snapshot
//! fence/       answer addresses → nftables sets (netlink), before the reply leaves
//! observe/     audit log, alerts and their delivery, metrics
//! policy/      what an agent may resolve: file → compiled Policy, matcher,
//!              special-purpose ranges, local zones. Pure data.
//! error        what the binary maps to exit codes
//! input        reading operator files safely
//! diagnostics  errors with file:line
//! netns        entering a network namespace (fence, attribution)
//! sync         the poison-tolerant lock
//! ```
//!
//! Observe and fence never call back into serve: the query path pushes,
//! observers drain on threads of their own.

pub mod cli;
pub mod config;
pub mod diagnostics;
pub mod error;
pub mod fence;
pub mod input;
pub mod kennel;
pub mod netns;
pub mod observe;
pub mod ops;
pub mod policy;
pub mod serve;
pub mod state;
pub mod sync;
pub mod tools;
