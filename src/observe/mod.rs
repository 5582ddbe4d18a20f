//! What allowdns tells people: the audit log (one record per query and per
//! change to the policy in force), alerts for denials, their delivery to a
//! webhook and syslog, and the `/metrics` counters.
//!
//! Nothing here calls back into `serve/`: the query path pushes, observers
//! drain on threads of their own.

pub mod alert;
pub mod attribution;
pub mod audit;
pub mod delivery;
pub mod idle;
pub mod metrics;
pub mod throttle;
pub mod worker;
