//! `allowdns suggest`: turns an audit log into a policy for a human to review.
//!
//! Every name an agent looked up and was allowed (or resolved in learn mode
//! as `would_deny`) becomes an `expected_outbound` entry. Names only ever
//! denied are listed commented out unless `--include-denied` is given.
//! Siblings are grouped into `*.parent` once the parent has [`MIN_CHILDREN`]
//! distinct child labels, never over a TLD or public suffix, nor over names
//! of more than one registrable domain. Groups that look like a DNS tunnel
//! are commented out. Counts and first/last seen go into comments. The
//! output depends only on the log, so the same log always gives the same
//! file, and it is checked by the policy loader before it is written.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;

use crate::diagnostics::Diagnostics;
use crate::error::Failure;
use crate::policy;

mod args;
mod group;
mod read;
mod render;

pub use args::SuggestArgs;
use group::Entry;
use read::{choose_agent, read_log};
// `report` reads the same lines the same way.
pub(crate) use read::{CUT_SHORT, Line, LineError, line_text, parse, read_line};
use render::{render, warn_commented, warn_left_out, were};

/// A parent with at least this many distinct child labels among the names
/// looked up becomes `*.parent`. Up to three siblings are easy to review one
/// by one; four or more usually means a numbered or sharded family.
pub const MIN_CHILDREN: usize = 4;

/// A group of more distinct names than this looks like a DNS tunnel (data
/// encoded in the names) and is not wildcarded.
pub const MAX_GROUP: usize = 100;

/// Labels at least this long, mostly digits and consonants, look random
/// (base32 or hex, as tunnels encode data); people rarely pick such names.
pub const RANDOM_LABEL_LEN: usize = 20;

/// Longer lines (without the newline) are malformed. They are skipped
/// without being held in memory.
pub const MAX_LINE: usize = 64 * 1024;

/// Problems reported one by one before the rest are only counted, so a
/// binary file does not print a million errors.
const MAX_REPORTED: usize = 20;

/// Malformed lines reported one by one under `--skip-malformed`.
const MAX_SKIPPED_REPORTED: usize = 5;

/// Child names listed above a wildcard entry.
const MAX_SHOWN: usize = 8;

/// Left-out names listed in the policy's comments.
const MAX_LEFT_OUT_SHOWN: usize = 50;

/// Agents whose lookups are counted for the "several agents" error; bounds
/// memory when a log holds many agent names.
const MAX_AGENTS: usize = 100;

/// How to read the log and what to include.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options<'a> {
    /// The agent to suggest for; `None` means the log's only agent.
    pub agent: Option<&'a str>,
    /// Names only ever denied become entries instead of comments.
    pub include_denied: bool,
    /// Malformed lines are warnings instead of errors.
    pub skip_malformed: bool,
    /// Set by `allowdns run --learn`: the log is a kennel's, whose only
    /// client is the kennel, so the policy names no `clients`.
    pub kennel: Option<Kept>,
}

/// Whether `allowdns run --learn` keeps the audit log the suggestion cites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// `--audit-log FILE`: the evidence stays there.
    Yes,
    /// A temporary file, deleted when `run` ends.
    No,
}

/// The suggested policy, and what was left out of it.
#[derive(Debug)]
pub struct Suggestion {
    /// The policy file's text.
    pub policy: String,
    pub warnings: Diagnostics,
}

/// `allowdns suggest`: reads the log, writes the policy, returns the warnings.
pub fn run(args: &SuggestArgs) -> Result<Diagnostics, Failure> {
    let file = args.audit_log.as_path();
    let input = std::fs::File::open(file).map_err(|e| {
        let mut diags = Diagnostics::default();
        diags.error(file, None, None, format!("cannot read audit log: {e}"));
        Failure::Invalid(diags)
    })?;
    let options = Options {
        agent: args.agent.as_deref(),
        include_denied: args.include_denied,
        skip_malformed: args.skip_malformed,
        kennel: args.kennel,
    };
    let suggestion = suggest(file, BufReader::new(input), &options).map_err(Failure::Invalid)?;
    match &args.output {
        Some(out) if out != Path::new("-") => {
            std::fs::write(out, &suggestion.policy).map_err(|source| {
                crate::error::RuntimeError::Write {
                    path: out.clone(),
                    source,
                }
            })?
        }
        _ => std::io::stdout()
            .write_all(suggestion.policy.as_bytes())
            .map_err(crate::error::RuntimeError::Stdout)?,
    }
    Ok(suggestion.warnings)
}

/// Builds the policy for the chosen agent from an audit log. Every
/// malformed line is reported, with `file`:line.
pub fn suggest(
    file: &Path,
    input: impl BufRead,
    options: &Options,
) -> Result<Suggestion, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut log = read_log(file, input, options, &mut diags);
    if diags.has_errors() {
        return Err(diags);
    }
    let (agent, mut observed) = match choose_agent(&mut log, options.agent) {
        Ok(chosen) => chosen,
        Err(e) => {
            diags.error(file, None, None, e.to_string());
            return Err(diags);
        }
    };
    warn_left_out(file, &observed, &mut diags);
    let names = std::mem::take(&mut observed.names);
    let (active, denied): (BTreeMap<_, _>, BTreeMap<_, _>) = if options.include_denied {
        (names, BTreeMap::new())
    } else {
        // Only-denied names must not widen what was allowed, so they are grouped apart.
        names
            .into_iter()
            .partition(|(_, seen)| seen.denied < seen.lookups)
    };
    let active = group::group(&active);
    let denied = group::group(&denied);
    warn_commented(file, &active, &denied, &mut diags);
    let live: Vec<&Entry> = active.iter().filter(|e| e.tunnel.is_none()).collect();
    if live.is_empty() {
        let mut message = format!(
            "none of the {} lookups by agent '{agent}' can be allowed by a policy",
            observed.lookups
        );
        let tunnels = active.iter().filter(|e| e.tunnel.is_some()).count();
        if tunnels > 0 {
            let _ = write!(
                message,
                "; {} like a DNS tunnel",
                were(tunnels, "group looks", "groups look")
            );
        }
        let only_denied: usize = denied.iter().map(|e| e.names.len()).sum();
        if only_denied > 0 {
            let _ = write!(
                message,
                "; {} only denied (see --include-denied)",
                were(only_denied, "name was", "names were")
            );
        }
        diags.error(file, None, None, message);
        return Err(diags);
    }
    let text = render(file, &log, &agent, &observed, &active, &denied, options);
    self_check(file, &text, &live, &mut diags);
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(Suggestion {
        policy: text,
        warnings: diags,
    })
}

/// The output must load without a single diagnostic, and exactly the
/// uncommented entries must become name rules: an address rule would open
/// the firewall without DNS. Anything else is a bug here.
fn self_check(file: &Path, text: &str, live: &[&Entry], diags: &mut Diagnostics) {
    let mut loaded = Diagnostics::default();
    let compiled = policy::compile_source(Path::new("<suggested policy>"), text, &mut loaded);
    for d in loaded.items {
        diags.error(file, None, None, format!("internal error: {d}"));
    }
    let Some(compiled) = compiled else {
        diags.error(file, None, None, "internal error: the policy does not load");
        return;
    };
    if !compiled.addresses.is_empty() || !compiled.address_entries().is_empty() {
        diags.error(
            file,
            None,
            None,
            format!(
                "internal error: {} entries became address rules",
                compiled.address_entries().len()
            ),
        );
    }
    let rules: BTreeSet<&str> = compiled.entries().iter().map(|r| &*r.pattern).collect();
    let wanted: BTreeSet<&str> = live.iter().map(|e| e.destination.as_str()).collect();
    if rules != wanted || compiled.entries().len() != live.len() {
        diags.error(
            file,
            None,
            None,
            "internal error: the policy's name rules differ from the suggested entries",
        );
    }
}

#[cfg(test)]
mod tests;
