//! Why a control request was refused (the reply's `error`, byte for byte),
//! why a client got no answer, and why the socket could not be set up.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::server::{MAX_CONNECTIONS, READ_DEADLINE};
use crate::ops::peer_netns::NetnsError;
use crate::state::StateError;
use crate::state::grants::MAX_GRANT;

/// Why the server refused a request. The message is the reply's `error`
/// field, byte for byte what clients (and their scripts) read.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A peer that is neither root nor the daemon's user.
    #[error("permission denied: uid {0}")]
    NotAllowed(u32),
    #[error("permission denied: peer credentials unavailable")]
    NoCredentials,
    #[error("busy: {MAX_CONNECTIONS} requests in progress; try again")]
    Busy,
    #[error("no request within {} s", READ_DEADLINE.as_secs())]
    NoRequest,
    #[error("bad request: {0}")]
    BadRequest(#[source] serde_json::Error),
    #[error("internal error: {0}")]
    Internal(#[source] tokio::task::JoinError),
    /// A free-text field over its limit; `head` is its start, for recognition.
    #[error("{field} is {count} characters, more than {max} (starts {head:?})")]
    TooLong {
        field: &'static str,
        count: usize,
        max: usize,
        head: String,
    },
    /// A free-text field with a character that could forge or reorder log lines.
    #[error("{field} {value:?} contains the control character U+{code:04X}; use plain text")]
    ControlCharacter {
        field: &'static str,
        value: String,
        code: u32,
    },
    /// A name that is not a valid pattern; `why` names it already.
    #[error("{why}")]
    BadName { name: String, why: String },
    #[error("refusing an over-broad grant: {why}")]
    OverBroad { pattern: String, why: String },
    #[error("a grant needs a --reason; it goes into the audit log")]
    NoReason,
    /// `--for` out of range, in seconds as asked.
    #[error(
        "--for must be between 1 s and {} (longer exceptions belong in the policy file)",
        humantime::format_duration(MAX_GRANT)
    )]
    Duration { secs: u64 },
    /// The peer is not in allowdns's network namespace, or that cannot be told.
    #[error(transparent)]
    Netns(Arc<NetnsError>),
    /// The state refused the change (no such agent or grant, no audit line).
    #[error(transparent)]
    State(#[from] StateError),
}

/// Why `allowdns grant`, `revoke` or `status` got no answer, or a refusal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach allowdns at {}: {source} (is it running with a control socket, and are you its owner?)",
        path.display()
    )]
    Connect { path: PathBuf, source: io::Error },
    #[error("cannot encode the request: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("{}: no reply within 10 s", path.display())]
    Timeout { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: connection closed without a reply (allowdns busy?)", path.display())]
    Closed { path: PathBuf },
    #[error("{}: bad reply: {source}", path.display())]
    BadReply {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The server's refusal, as its reply's `error` says.
    #[error("{0}")]
    Refused(String),
}

/// The control socket file could not be set up; the path and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct SocketError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl SocketError {
    /// The OS error's kind (`AddrInUse` when another allowdns holds the socket).
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

impl From<SocketError> for crate::error::RuntimeError {
    fn from(e: SocketError) -> Self {
        crate::error::RuntimeError::Control {
            path: e.path,
            source: e.source,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_name_the_socket() {
        let path = PathBuf::from("/run/allowdns/control.sock");
        let e = ClientError::Connect {
            path: path.clone(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(
            e.to_string()
                .starts_with("cannot reach allowdns at /run/allowdns/control.sock: "),
            "{e}"
        );
        let e = ClientError::Closed { path };
        assert_eq!(
            e.to_string(),
            "/run/allowdns/control.sock: connection closed without a reply (allowdns busy?)"
        );
    }
}
