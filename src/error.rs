//! What the binary maps to exit codes, in one place (`main` prints, this
//! decides): 1 for bad input, 3 for a runtime failure. clap uses 2 for usage.
//!
//! Subsystems have error enums of their own that carry the offending input;
//! they become a [`Failure`] where a command gives up: the environment's
//! failures as a [`RuntimeError`] variant naming the address or path, a
//! subsystem's own error wrapped whole ([`RuntimeError::Subsystem`]).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::diagnostics::Diagnostics;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Input files are wrong; every problem is listed with file:line.
    #[error("{} error(s) in configuration", .0.errors().count())]
    Invalid(Diagnostics),
    /// The inputs are fine but the environment is not: a capability, a port
    /// in use, a socket, a full disk.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl Failure {
    /// The process exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Invalid(_) => 1,
            Failure::Runtime(_) => 3,
        }
    }
}

/// What can fail at run time, each with the input it failed on.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A listening socket (DNS or metrics) cannot be bound: a port in use, no permission.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    /// The control socket cannot be set up.
    #[error("control socket {}: {source}", path.display())]
    Control { path: PathBuf, source: io::Error },
    /// The audit log cannot be opened. The message is `source`'s, which
    /// names the path already (`observe::audit::Sink::open` adds it, as its
    /// reopen on SIGHUP needs it too); tests/it/exit_codes.rs checks it stays there.
    #[error("cannot open audit log {source}")]
    Audit { path: PathBuf, source: io::Error },
    /// An output file (or stdout) cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    /// Standard output cannot be written (a closed pipe, a full disk).
    #[error("cannot write to stdout: {0}")]
    Stdout(#[source] io::Error),
    /// Signal handlers cannot be installed.
    #[error("signals: {0}")]
    Signals(#[source] io::Error),
    /// The tokio runtime cannot start.
    #[error("cannot start runtime: {0}")]
    Runtime(#[source] io::Error),
    /// Serving stopped on a socket error.
    #[error("{0}")]
    Serve(#[source] io::Error),
    /// The audit log and alerts could not be drained at shutdown.
    #[error("flush: {0}")]
    Flush(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A subsystem's own error (the fence, including a refused capability, the
    /// state, the kennel, the control client...), whose message already names what it failed on.
    #[error(transparent)]
    Subsystem(Box<dyn std::error::Error + Send + Sync>),
}

impl RuntimeError {
    /// Wraps a subsystem's error; its message is kept as is.
    pub fn subsystem(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        RuntimeError::Subsystem(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_errors_name_what_they_failed_on() {
        let in_use = || io::Error::from(io::ErrorKind::AddrInUse);
        let bind = Failure::from(RuntimeError::Bind {
            addr: "127.0.0.1:5353".parse().unwrap(),
            source: in_use(),
        });
        assert_eq!(bind.exit_code(), 3);
        let text = bind.to_string();
        assert!(text.contains("127.0.0.1:5353"), "{text}");
        assert!(text.contains(&in_use().to_string()), "{text}");
        let control = RuntimeError::Control {
            path: "/run/allowdns/control.sock".into(),
            source: in_use(),
        };
        assert!(
            control.to_string().contains("/run/allowdns/control.sock"),
            "{control}"
        );
        let audit = RuntimeError::Audit {
            path: "/var/log/allowdns/audit.jsonl".into(),
            source: io::Error::new(
                io::ErrorKind::PermissionDenied,
                "/var/log/allowdns/audit.jsonl: Permission denied (os error 13)",
            ),
        };
        assert!(
            audit.to_string().contains("/var/log/allowdns/audit.jsonl"),
            "{audit}"
        );
        let wrapped = RuntimeError::subsystem("agent 'a' has no grant for 'x.example'");
        assert_eq!(
            wrapped.to_string(),
            "agent 'a' has no grant for 'x.example'"
        );
    }

    #[test]
    fn invalid_input_is_1_and_runtime_is_3() {
        assert_eq!(Failure::Invalid(Diagnostics::default()).exit_code(), 1);
        assert_eq!(
            Failure::from(RuntimeError::Signals(io::Error::other("x"))).exit_code(),
            3
        );
    }
}
