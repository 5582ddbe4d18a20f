//! The audit log: one JSON line per query, whatever the decision, and one
//! per event (grants, reloads, expiries, lost records).
//!
//! `schema` is what a line holds (the types writers build and readers
//! parse), `format` the per-query fast path that writes a record, `writer`
//! the buffer and thread that get lines to disk without blocking queries.

mod format;
pub mod schema;
mod writer;

pub use format::{AuditRecord, display_name, format_record, rcode_name, type_name};
pub use schema::{Decision, Event, EventLine};
pub use writer::{AuditLog, Sink, Unconfirmed};
