//! Reading the audit log line by line into the schema's types, the way
//! `suggest` reads it (the same line limit and the same errors), keeping
//! only counts.

use std::io::BufRead;
use std::path::Path;
use std::time::SystemTime;

use serde_json::Value;

use super::tally::{Tally, event_agent};
use super::{MAX_REPORTED, MAX_SKIPPED_SHOWN};
use crate::diagnostics::Diagnostics;
use crate::observe::audit::schema::{Event, EventLine};
use crate::tools::suggest::{CUT_SHORT, Line, LineError, line_text, parse, read_line};

/// Which records count.
pub(super) struct Filter<'a> {
    pub(super) agent: Option<&'a str>,
    pub(super) since: Option<SystemTime>,
}

/// Malformed lines seen under `--skip-malformed`.
#[derive(Debug, Default)]
pub(super) struct Skipped {
    pub(super) count: u64,
    /// The first few: line number and what was wrong.
    pub(super) shown: Vec<(usize, String)>,
}

/// Reads every line into `tally`. A malformed line is an error naming
/// file:line, or with `skip` a skipped line counted in the result.
pub(super) fn read(
    file: &Path,
    mut input: impl BufRead,
    filter: &Filter,
    skip: bool,
    tally: &mut Tally,
    diags: &mut Diagnostics,
) -> Skipped {
    let known = known_events();
    let mut skipped = Skipped::default();
    let mut reported = 0usize;
    let mut buf = Vec::new();
    let mut number = 0usize;
    loop {
        number += 1;
        match read_line(&mut input, &mut buf) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                diags.error(
                    file,
                    Some(number),
                    None,
                    format!("cannot read audit log: {e}"),
                );
                break;
            }
        }
        let complete = buf.ends_with(b"\n");
        let parsed = match line_text(&buf) {
            Ok("") => continue,
            text => text.and_then(|text| parse(text, |e| known.iter().any(|k| k == e))),
        };
        let outcome = parsed.and_then(|line| count(line, filter, tally));
        match outcome {
            Ok(()) => {}
            Err(e) if e.cut_short(complete) => diags.warning(file, Some(number), None, CUT_SHORT),
            Err(e) if skip => {
                skipped.count += 1;
                if skipped.shown.len() < MAX_SKIPPED_SHOWN {
                    let field = e.field().map(|f| format!("{f}: ")).unwrap_or_default();
                    let message = format!("{field}{e}");
                    diags.warning(file, Some(number), None, format!("skipped: {message}"));
                    skipped.shown.push((number, message));
                }
            }
            Err(e) => {
                reported += 1;
                if reported <= MAX_REPORTED {
                    diags.error(
                        file,
                        Some(number),
                        e.field().map(str::to_string),
                        e.to_string(),
                    );
                }
            }
        }
    }
    if reported > MAX_REPORTED {
        diags.error(
            file,
            None,
            None,
            format!("... and {} more malformed lines", reported - MAX_REPORTED),
        );
    }
    if skip && skipped.count > 0 {
        diags.warning(
            file,
            None,
            None,
            format!(
                "{} malformed lines skipped (--skip-malformed); the report says so",
                skipped.count
            ),
        );
    }
    skipped
}

/// The `event` names this version knows, from the schema itself.
fn known_events() -> Vec<String> {
    Event::examples()
        .into_iter()
        .filter_map(|e| match serde_json::to_value(EventLine::now(e)) {
            Ok(Value::Object(mut o)) => match o.remove("event") {
                Some(Value::String(s)) => Some(s),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn time(ts: &str) -> Result<SystemTime, LineError> {
    humantime::parse_rfc3339(ts).map_err(|source| LineError::Time {
        value: ts.to_string(),
        source,
    })
}

fn count(line: Line, filter: &Filter, tally: &mut Tally) -> Result<(), LineError> {
    match line {
        Line::Record(record) => {
            let ts = time(&record.ts)?;
            if let (Some(_), Some(qname)) = (filter.since, &record.qname) {
                tally.all_names.slot(qname.as_str(), || ());
            }
            if filter.since.is_some_and(|since| ts < since) {
                tally.before_since += 1;
            } else if filter
                .agent
                .is_some_and(|a| record.agent.as_deref() != Some(a))
            {
                tally.other_agents += 1;
            } else {
                tally.record(&record, ts);
            }
        }
        Line::Event(line) => {
            let EventLine { event, ts } = *line;
            let ts = time(&ts)?;
            if filter.since.is_some_and(|since| ts < since) {
                tally.before_since += 1;
            } else if let (Some(wanted), Some(agent)) = (filter.agent, event_agent(&event))
                && wanted != agent
            {
                tally.other_agents += 1;
            } else {
                tally.event(&event, ts);
            }
        }
        Line::Other => tally.unknown_events += 1,
    }
    Ok(())
}
