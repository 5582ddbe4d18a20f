//! allowdns: an allowlist-only DNS resolver that fences AI agents in.
//!
//! One question's path, each step owned by one module:
//!
//! ```text
//! server    sockets (UDP threads + TCP, v4 + v6); tcp: RFC 7766 connections
//!   └ answer    one entry for both transports: bytes in, reply out, audited
//!     ├ wire      drop/decode, RFC checks (opcode, QDCOUNT, EDNS, class, xfr), encode + TC
//!     └ handler   the path below (begin: inline; finish: upstream)
//!       ├ decide      client address → policy → Allow{rule} | Deny | WouldDeny (learn) | Refused
//!       │   └ policy      file (on-disk format) → Policy; matcher (exact + suffix + globs)
//!       ├ resolve     local zone | cache | upstream, chasing CNAME chains
//!       │   ├ zones       RFC 1035 files answered from memory
//!       │   ├ cache       TTL-counting, bounded
//!       │   └ upstream    forwarders or recursor from root hints
//!       ├ special     special-purpose addresses stripped unless the entry opts in
//!       ├ firewall    answer addresses → nftables sets (netlink), before the reply
//!       ├ audit       one JSON line per query, off the query path
//!       ├ metrics     atomic counters per agent/decision/qtype; the /metrics endpoint
//!       └ alert       human alerts for denials, aggregated under floods
//!           └ delivery    threshold notifications to a webhook and syslog
//! ```
//!
//! Around it: `cli` and `config` (settings), `diagnostics` (errors with
//! file:line), `app` (startup shared by `serve` and `check`), `shutdown`,
//! `worker` (the polling thread behind audit and alerts), `suggest` (an audit
//! log → a policy to review), `reload` (SIGHUP), `notify` (sd_notify),
//! `grants` (run-time exceptions), `kennel` (`allowdns run`: a command
//! fenced in namespaces of its own) and `control` (the Unix socket behind
//! `grant`, `revoke` and `status`).
//!
//! `state`: the policy in force and every change to it (reload, grant, revoke,
//! expiry, withdrawals from the fence), published to the query path as one
//! atomic snapshot.

pub mod alert;
pub mod answer;
pub mod app;
pub mod audit;
pub mod cache;
pub mod cli;
pub mod config;
pub mod control;
pub mod decide;
pub mod delivery;
pub mod diagnostics;
pub mod exfil;
pub mod firewall;
pub mod grants;
pub mod handler;
pub mod idle;
pub mod input;
pub mod kennel;
pub mod metrics;
pub mod notify;
pub mod peer_netns;
pub mod policy;
pub mod reload;
pub mod resolve;
pub mod server;
pub mod shutdown;
pub mod special;
pub mod state;
pub mod suggest;
pub mod tcp;
pub mod upstream;
pub mod wire;
pub mod worker;
pub mod zones;
