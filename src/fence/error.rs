//! Why the fence could not do what was asked, naming the target (family,
//! table, netns), the set and the OS error. A refused permission is told
//! apart from a wrong ruleset: the first is the environment (exit 3), the
//! second the input (exit 1).

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::policy::firewall::{Family, FirewallConfig};

/// Which target an error is about: what [`FirewallConfig::describe`] prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetId {
    pub family: Family,
    pub table: String,
    /// `None`: allowdns's own network namespace.
    pub netns: Option<PathBuf>,
}

impl TargetId {
    pub fn of(config: &FirewallConfig) -> TargetId {
        TargetId {
            family: config.family,
            table: config.table.clone(),
            netns: config.netns.clone(),
        }
    }
}

impl fmt::Display for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table {} {} in ", self.family.as_str(), self.table)?;
        match &self.netns {
            Some(path) => write!(f, "netns {}", path.display()),
            None => f.write_str("allowdns's own namespace"),
        }
    }
}

/// Opening, checking or changing a target's sets failed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The kernel refused: allowdns lacks a capability. Not the config's fault.
    #[error("no permission to {action} for {target}: {source}; allowdns needs {capability}")]
    Permission {
        target: TargetId,
        /// What was refused ("enter the namespace", "read set 'allowed_v4'").
        action: String,
        /// The capability that grants it.
        capability: &'static str,
        source: io::Error,
    },
    /// The namespace or the netlink socket could not be opened.
    #[error("cannot open netlink for {target}: {source}{}", hint(.source))]
    Open { target: TargetId, source: io::Error },
    /// The set is not there (or the kernel said something else than its description).
    #[error(
        "set '{set}' in {target}: {source}{} (expected `set {set} {{ {decl}; }}`; `allowdns nft-ruleset` prints it)",
        hint(.source)
    )]
    Set {
        target: TargetId,
        set: String,
        /// The declaration allowdns expects, to paste into the ruleset.
        decl: &'static str,
        source: io::Error,
    },
    /// The set exists but cannot hold the elements allowdns writes.
    #[error("set '{set}' in {target} has the wrong type or flags (expected `{decl}`)")]
    WrongType {
        target: TargetId,
        set: String,
        decl: &'static str,
    },
    #[error("cannot list set '{set}' in {target}: {source}")]
    List {
        target: TargetId,
        set: String,
        source: io::Error,
    },
    /// A reloaded policy names a target that startup did not open.
    #[error(
        "agent '{agent}' feeds {target}, which was not open at startup; restart allowdns to add it"
    )]
    NotOpen { agent: String, target: TargetId },
    #[error("cannot install policy addresses in {target}: {source}")]
    Install { target: TargetId, source: io::Error },
    #[error("cannot withdraw elements of '{pattern}' from {target}: {source}")]
    Withdraw {
        target: TargetId,
        /// The ended rule whose elements were to go.
        pattern: String,
        source: io::Error,
    },
}

impl FenceError {
    /// Whether the environment is at fault (a missing capability), not the input.
    pub fn is_permission(&self) -> bool {
        matches!(self, FenceError::Permission { .. })
    }

    /// `other` unless the kernel refused permission, which becomes
    /// [`FenceError::Permission`] naming `capability`.
    pub(super) fn or_permission(
        source: io::Error,
        target: &TargetId,
        action: impl FnOnce() -> String,
        capability: &'static str,
        other: impl FnOnce(io::Error) -> FenceError,
    ) -> FenceError {
        if source.kind() == io::ErrorKind::PermissionDenied {
            FenceError::Permission {
                target: target.clone(),
                action: action(),
                capability,
                source,
            }
        } else {
            other(source)
        }
    }
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(2) => " (does it exist?)",
        _ => "",
    }
}

/// Why an allowed answer could not be fed; the client gets SERVFAIL.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// Cannot happen after [`super::Firewall::check`]; never hand out what
    /// the fence would not pass.
    #[error("{target} is not open")]
    NotOpen { target: TargetId },
    #[error("nftables update in {target} failed: {source}")]
    Update { target: TargetId, source: io::Error },
    /// A revoke or reload ended the rule while the answer was on its way.
    #[error("'{pattern}' of agent '{agent}' ended while this answer was on its way")]
    Ended { agent: String, pattern: String },
}
