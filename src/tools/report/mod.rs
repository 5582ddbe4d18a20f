//! `allowdns report`: an audit log → one self-contained HTML page to read
//! before trusting a policy (docs/report.md).
//!
//! One streamed pass counts everything the page shows; every per-key map
//! is capped (the `MAX_*` constants below), so memory stays bounded
//! whatever the log holds, and what does not fit is counted on the page
//! as "and N more". For a learn-mode log a second pass runs `suggest`
//! itself, when the names fit in the report's caps.

use std::io::{BufReader, Write as _};
use std::path::Path;

use crate::diagnostics::Diagnostics;
use crate::error::{Failure, RuntimeError};
use crate::tools::suggest;

mod args;
mod chart;
mod html;
mod read;
mod tally;

pub use args::{ReportArgs, parse_since};

/// Distinct names counted one by one (the top names table, and the
/// evidence beside suggested entries); further names' lookups are counted
/// together. Also the most rules counted.
pub const MAX_NAMES: usize = 10_000;
/// Registrable domains listed under "denied".
pub const MAX_DENIED_DOMAINS: usize = 1_000;
/// Denied names listed per registrable domain.
pub const MAX_NAMES_PER_DOMAIN: usize = 20;
/// Distinct connection destinations, exfiltration-marked names and stripped
/// (name, address) pairs, each.
pub const MAX_DESTINATIONS: usize = 1_000;
/// Grants, reloads, expiries and losses drawn on the timeline.
pub const MAX_EVENTS: usize = 1_000;
/// Agents counted one by one.
pub const MAX_AGENTS: usize = 100;
/// Bars on the timeline at most.
pub const MAX_BUCKETS: usize = 120;
/// Rows of the top-names, rules, exfiltration and stripped tables.
pub const SHOWN: usize = 50;
/// Bytes kept of a command line or an event's text.
pub const MAX_TEXT: usize = 240;
/// Malformed lines reported one by one before the rest are counted.
const MAX_REPORTED: usize = 20;
/// Skipped lines named on the page and on stderr under `--skip-malformed`.
const MAX_SKIPPED_SHOWN: usize = 5;

/// What the suggest section shows.
pub(crate) enum Learned {
    /// No `would_deny` lookups: not a learn-mode log.
    NotLearning,
    SeveralAgents(Vec<String>),
    /// Too many names for the report's bound on memory.
    TooManyNames,
    Suggested {
        agent: String,
        result: Result<suggest::Suggestion, Diagnostics>,
    },
}

fn cannot_read(file: &Path, e: std::io::Error) -> Failure {
    let mut diags = Diagnostics::default();
    diags.error(file, None, None, format!("cannot read audit log: {e}"));
    Failure::Invalid(diags)
}

/// `allowdns report`: reads the log, writes the page, returns the warnings.
pub fn run(args: &ReportArgs) -> Result<Diagnostics, Failure> {
    let file = args.audit_log.as_path();
    let input = std::fs::File::open(file).map_err(|e| cannot_read(file, e))?;
    let mut diags = Diagnostics::default();
    let filter = read::Filter {
        agent: args.agent.as_deref(),
        since: args.since,
    };
    let mut tally = tally::Tally::default();
    let skipped = read::read(
        file,
        BufReader::with_capacity(256 * 1024, input),
        &filter,
        args.skip_malformed,
        &mut tally,
        &mut diags,
    );
    if diags.has_errors() {
        return Err(Failure::Invalid(diags));
    }
    let learned = learn(file, args, &tally)?;
    let page = html::render(&html::Page {
        file,
        agent: args.agent.as_deref(),
        since: args.since,
        tally: &tally,
        skipped: &skipped,
        learned: &learned,
    });
    match &args.output {
        Some(out) if out != Path::new("-") => {
            std::fs::write(out, page).map_err(|source| RuntimeError::Write {
                path: out.clone(),
                source,
            })?
        }
        _ => std::io::stdout()
            .write_all(page.as_bytes())
            .map_err(RuntimeError::Stdout)?,
    }
    Ok(diags)
}

/// The suggestion for the agent that learned, by `suggest` itself.
fn learn(file: &Path, args: &ReportArgs, tally: &tally::Tally) -> Result<Learned, Failure> {
    let mut learning: Vec<&String> = tally
        .agents
        .map
        .iter()
        .filter(|(_, counts)| counts[tally::WOULD_DENY] > 0)
        .map(|(agent, _)| agent)
        .collect();
    learning.sort();
    let agent = match (args.agent.as_deref(), learning.as_slice()) {
        (_, []) => return Ok(Learned::NotLearning),
        (Some(agent), _) => agent.to_string(),
        (None, [only]) if tally.agents.more == 0 => only.to_string(),
        (None, several) => {
            return Ok(Learned::SeveralAgents(
                several.iter().map(|a| a.to_string()).collect(),
            ));
        }
    };
    // suggest keeps every name of the agent; only run it where the names
    // fit in the report's own bound.
    if tally.names.more > 0 || tally.all_names.more > 0 {
        return Ok(Learned::TooManyNames);
    }
    let input = std::fs::File::open(file).map_err(|e| cannot_read(file, e))?;
    let options = suggest::Options {
        agent: Some(&agent),
        skip_malformed: args.skip_malformed,
        ..suggest::Options::default()
    };
    let result = suggest::suggest(file, BufReader::new(input), &options);
    Ok(Learned::Suggested { agent, result })
}
