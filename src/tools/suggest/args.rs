//! The command line of `allowdns suggest`.

use std::path::PathBuf;

use super::Kept;

#[derive(Debug, clap::Args, Clone)]
pub struct SuggestArgs {
    /// Audit log (JSON Lines) to learn from.
    #[arg(long)]
    pub audit_log: PathBuf,
    /// The agent to suggest for; needed when the log holds several.
    #[arg(long)]
    pub agent: Option<String>,
    /// Where to write the policy; `-` or absent means stdout.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Make names that were only ever denied entries; by default they are
    /// listed commented out.
    #[arg(long)]
    pub include_denied: bool,
    /// Warn about malformed lines and skip them, instead of failing.
    #[arg(long)]
    pub skip_malformed: bool,
    /// Set by `allowdns run --learn`, never on the command line.
    #[arg(skip)]
    pub kennel: Option<Kept>,
}
