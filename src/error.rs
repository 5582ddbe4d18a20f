//! What the binary maps to exit codes, in one place (`main` prints, this
//! decides): 1 for bad input, 3 for a runtime failure. clap uses 2 for usage.
//!
//! Subsystems have error enums of their own that carry the offending input;
//! they become a [`Failure`] where a command gives up.

use crate::diagnostics::Diagnostics;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Input files are wrong; every problem is listed with file:line.
    #[error("{} error(s) in configuration", .0.errors().count())]
    Invalid(Diagnostics),
    /// The inputs are fine but the environment is not: a capability, a port
    /// in use, a socket, a full disk.
    #[error("{0}")]
    Runtime(String),
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
