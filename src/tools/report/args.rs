//! The command line of `allowdns report`.

use std::path::PathBuf;
use std::time::SystemTime;

#[derive(Debug, clap::Args, Clone)]
pub struct ReportArgs {
    /// Audit log (JSON Lines) to report on.
    #[arg(long)]
    pub audit_log: PathBuf,
    /// Only this agent's lookups, connections and grants.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only lines from this time on: RFC 3339 (`2026-11-22T08:00:00Z`) or
    /// a duration back from now (`2h`, `30m`, `7days`).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<SystemTime>,
    /// Where to write the HTML page; `-` or absent means stdout.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Skip malformed lines (counted and named on the page) instead of failing.
    #[arg(long)]
    pub skip_malformed: bool,
}

/// `--since`: a duration back from now, or an RFC 3339 time.
pub fn parse_since(text: &str) -> Result<SystemTime, String> {
    if let Ok(back) = humantime::parse_duration(text) {
        return SystemTime::now()
            .checked_sub(back)
            .ok_or_else(|| format!("'{text}' reaches back before 1970"));
    }
    crate::policy::parse_rfc3339(text).map_err(|e| {
        format!("{e}; expected an RFC 3339 time (2026-11-22T08:00:00Z) or a duration (2h, 30m)")
    })
}
