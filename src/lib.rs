//! allowdns: an allowlist-only DNS resolver that fences AI agents in.
//!
//! One question's path, top to bottom, and the folder that owns each step:
//!
//! ```text
//! serve/    server (UDP threads) + tcp (RFC 7766) → wire (decode, RFC checks, encode)
//!           → answer (one entry for both transports) → handler → decide
//!           → resolve: local zone | cache | upstream → exfil budget
//! policy/   what an agent may resolve: file (on-disk) → compiled Policy, matcher,
//!           special-purpose addresses, local zones. Pure data.
//! state/    the policy in force and every change to it (reload, grants, expiry,
//!           withdrawals), published to serve/ as one atomic snapshot
//! fence/    answer addresses → nftables sets (netlink), before the reply leaves
//! observe/  audit log, alerts and their delivery, metrics
//! ops/      startup, control socket, reload, signals, sd_notify
//! kennel/   `allowdns run`: a command fenced in namespaces of its own
//! tools/    suggest: an audit log → a policy to review; report: → a page to read
//! ```
//!
//! At the top: `cli` (arguments), `config` (settings file), `error` (what the
//! binary maps to exit codes), `diagnostics` (errors with file:line) and
//! `input` (reading operator files safely).
//!
//! Imports point down the list above (serve → state → policy; observe and
//! fence never call back into serve); `tests/architecture.rs` checks it.

pub mod cli;
pub mod config;
pub mod diagnostics;
pub mod error;
pub mod fence;
pub mod input;
pub mod kennel;
pub mod observe;
pub mod ops;
pub mod policy;
pub mod serve;
pub mod state;
pub mod tools;
