//! Alert delivery: notifications about denied lookups, sent to a webhook
//! and/or syslog when an agent crosses a threshold; and about the security
//! events (stripped special-purpose addresses, exfiltration marks), each
//! tracked the same way with a threshold of 0.
//!
//! ```text
//! handler ─ Alerts::denied / stripped / exfil ─ threshold::Thresholds per kind
//!                               │ (under the alert mutex; no I/O)
//!                               │ Raised, taken by the alerts thread
//!                               ▼
//!                       Delivery::submit ─┬─ webhook queue ─ thread "alert-webhook"
//!                                         └─ syslog queue  ─ thread "alert-syslog"
//! ```
//!
//! The query path only updates counters under the mutex it already takes;
//! building JSON and all I/O happen on other threads. Each sink has its own
//! bounded queue and thread, so a dead webhook never holds back syslog, and a
//! full queue drops (and counts) notifications instead of growing or
//! blocking. A failed send is retried with exponential backoff; after
//! `max_attempts` failed attempts the sink gives up on that one notification
//! and goes on with the next at the same backoff, so at most one is lost per
//! `max_attempts` attempts and a dead receiver is not hammered.
//! Notifications are summaries: the audit log still has every lookup,
//! whatever happens here.
//!
//! ```text
//! settings.rs      `alerts.notify`: file format, validation, NotifySettings
//! threshold.rs     when to notify (per kind and agent, sliding window)
//! notification.rs  what is sent: the JSON body and its text line
//! sink.rs          Delivery: a queue and a thread per sink, retries, counters
//! webhook.rs       the HTTP POST sink
//! syslog.rs        the syslog sink (Unix socket or UDP)
//! ```

mod notification;
pub mod settings;
mod sink;
pub mod syslog;
pub mod threshold;
pub mod webhook;

pub use notification::{NameCount, Notification, WhatCount, hostname};
pub use settings::{NotifySettings, RetryPolicy, SettingError, WebhookSettings};
pub use sink::{Delivery, DeliveryStats, QUEUE_CAPACITY, SendError};
