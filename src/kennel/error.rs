//! What can stop `allowdns run` before or while CMD runs, each naming the
//! step, file or tool it failed on. The stages' errors ([`StageError`]) reach
//! `run` as text over the control channel ([`HolderError::Said`]).

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use crate::error::{Failure, RuntimeError};

/// Why `allowdns run` gave up; CMD was not started, or was stopped.
#[derive(Debug, thiserror::Error)]
pub enum KennelError {
    #[error(
        "user namespaces are disabled here (user.max_user_namespaces = 0): the kennel needs one. \
         Enable them with `sysctl -w user.max_user_namespaces=15000`. CMD was not started."
    )]
    NoUserNamespaces,
    /// A tool the kennel needs is not in PATH (`hint`: why, and its package).
    #[error("{tool} not found in PATH: {hint}. CMD was not started.")]
    Missing {
        tool: &'static str,
        hint: &'static str,
    },
    /// How many policies were loaded instead of one.
    #[error("run fences one agent: give exactly one policy file ({0} loaded)")]
    NotOnePolicy(usize),
    /// A file or directory of the kennel (its run directory, a socket, the policy).
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, source: io::Error },
    /// A step of the set-up (`what`) failed.
    #[error("{what}: {source}")]
    Step {
        what: &'static str,
        source: io::Error,
    },
    /// Writing the holder's uid/gid map (`text`) was refused.
    #[error("cannot write {} ({text}): {source}", path.display())]
    Map {
        path: PathBuf,
        text: String,
        source: io::Error,
    },
    /// The user's policy file cannot be turned into the kennel's (`why`).
    #[error("{}: {why}", path.display())]
    Policy { path: PathBuf, why: String },
    /// The kennel's policy cannot be written out as YAML.
    #[error("policy: {0}")]
    Derived(#[source] serde_yaml::Error),
    /// `--alerts` cannot be opened.
    #[error("--alerts {}: {source}", path.display())]
    Alerts { path: PathBuf, source: io::Error },
    /// The holder process failed or said something else than expected.
    #[error(transparent)]
    Holder(#[from] HolderError),
    #[error("the kennel's holder process ended: {0}")]
    HolderExited(ExitStatus),
    #[error("the kennel's holder process did not start")]
    HolderSilent,
    #[error("pasta exited ({0}) before connecting the kennel; CMD was not started")]
    PastaExited(ExitStatus),
    #[error(
        "pasta did not give the kennel a route out (does the host have a default route?); CMD was not started"
    )]
    NoRoute,
    /// The fence failed its check from inside the kennel.
    #[error("the kennel's fence failed its self-test ({0}); CMD was not started")]
    FenceUnproven(String),
    /// The thread binding DNS inside the kennel's netns panicked.
    #[error("netns thread panicked")]
    Panicked,
}

impl From<KennelError> for Failure {
    fn from(e: KennelError) -> Self {
        Failure::Runtime(RuntimeError::subsystem(e))
    }
}

/// What `run` heard (or did not) from the holder process.
#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    #[error("the kennel's holder process ended early")]
    Ended,
    /// The holder's own error line (a [`StageError`]'s message).
    #[error("{0}")]
    Said(String),
    #[error("no word from the kennel's holder process: {0}")]
    Silent(#[source] io::Error),
    /// A line that is not the next step of the start-up.
    #[error("unexpected '{0}' on the kennel's control channel")]
    Unexpected(String),
}

/// Why a stage inside the kennel (holder, init, pdeathsig) could not set up.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("refusing to map the kennel's root to host uid or gid 0")]
    HostRoot,
    #[error("allowdns run ended during start-up")]
    ParentGone,
    /// A system call of the set-up (`what`: which, and on what) failed.
    #[error("{what}: {source}")]
    Sys { what: String, source: io::Error },
    #[error(
        "cannot create the kennel's user namespace ({0}). Unprivileged user namespaces \
         are disabled or exhausted here: check `sysctl user.max_user_namespaces` (must be \
         > 0), `kernel.unprivileged_userns_clone` (Debian: 1) and \
         `kernel.apparmor_restrict_unprivileged_userns` (Ubuntu: 0). CMD was not started."
    )]
    UserNamespace(#[source] io::Error),
    /// Dropping a capability set (`set`) failed.
    #[error("{set}: {source}")]
    Capabilities {
        set: &'static str,
        source: caps::errors::CapsError,
    },
    /// The channel to `run` failed.
    #[error("{0}")]
    Ctl(#[source] io::Error),
    #[error(transparent)]
    Holder(#[from] HolderError),
    /// A line from `run` that is not the next step.
    #[error("unexpected '{0}' from allowdns run")]
    Unexpected(String),
    #[error("cannot run nft: {0} (install nftables)")]
    NftMissing(#[source] io::Error),
    #[error("nft: {0}")]
    Nft(#[source] io::Error),
    /// nft refused the ruleset; its stderr.
    #[error(
        "cannot load the default-deny ruleset in the kennel (is nf_tables in the kernel?): {0}"
    )]
    NftRefused(String),
    /// A file the mounts need.
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, source: io::Error },
    /// A path given to `--ro-bind` or `--bind` that cannot be shared.
    #[error("cannot share {} with the kennel: {source}", path.display())]
    Shared { path: PathBuf, source: io::Error },
}

impl StageError {
    /// A failed system call, named by `what`.
    pub(super) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> StageError {
        let what = what.into();
        move |e| StageError::Sys {
            what,
            source: e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kennel_errors_name_what_they_failed_on() {
        let e = KennelError::File {
            path: "/tmp/allowdns-run-1/ctl".into(),
            source: io::Error::from(io::ErrorKind::AddrInUse),
        };
        assert!(
            e.to_string().starts_with("/tmp/allowdns-run-1/ctl: "),
            "{e}"
        );
        let e = KennelError::Map {
            path: "/proc/42/uid_map".into(),
            text: "0 1000 1".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(
            e.to_string()
                .starts_with("cannot write /proc/42/uid_map (0 1000 1): "),
            "{e}"
        );
        let e = KennelError::Missing {
            tool: "pasta",
            hint: "the kennel's only way out is pasta (Debian/Ubuntu: apt install passt)",
        };
        assert_eq!(
            e.to_string(),
            "pasta not found in PATH: the kennel's only way out is pasta (Debian/Ubuntu: apt install passt). CMD was not started."
        );
        let e = StageError::sys("setresuid 1000")(nix::Error::EPERM);
        assert!(e.to_string().starts_with("setresuid 1000: "), "{e}");
        assert_eq!(Failure::from(KennelError::HolderSilent).exit_code(), 3);
    }
}
