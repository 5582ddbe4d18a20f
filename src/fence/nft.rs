//! Loading a ruleset with `nft -f -` in the calling thread's network namespace.

use std::io::{self, Write as _};
use std::process::{Command, Stdio};

/// Why `nft -f -` did not load a ruleset.
#[derive(Debug)]
pub enum NftError {
    /// nft could not be started (not installed).
    Spawn(io::Error),
    /// Writing the ruleset to it or waiting for it failed.
    Io(io::Error),
    /// nft refused the ruleset; its stderr.
    Refused(String),
}

/// `nft -f -` with `ruleset` on its stdin.
pub fn load(ruleset: &[u8]) -> Result<(), NftError> {
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = nft.stdin.take() {
        stdin.write_all(ruleset).map_err(NftError::Io)?;
    }
    let out = nft.wait_with_output().map_err(NftError::Io)?;
    if !out.status.success() {
        return Err(NftError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}
