//! The `alerts.notify` settings: the file format, its validation (errors
//! and warnings at file:line, called by `config::load`), and the validated
//! [`NotifySettings`] the sinks start from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::syslog::{self, SyslogSettings};
use super::threshold::{MAX_COUNT, Threshold};
use super::webhook::{HttpUrl, Shape, Trust, UrlError};
use crate::diagnostics::{Diagnostics, locate};

/// First retry delay; doubles per failure up to `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Why one `alerts.notify` value is wrong; each carries the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("unknown facility '{name}' (expected {expected})")]
    Facility {
        name: String,
        /// The valid names, comma-separated.
        expected: String,
    },
    #[error("unknown format '{0}' (expected rfc3164 or rfc5424)")]
    Format(String),
    #[error("unknown format '{0}' (expected json, slack or telegram)")]
    WebhookFormat(String),
    #[error("'{0}' is not an address (expected IP, IP:PORT or [IPv6]:PORT)")]
    Address(String),
    #[error(transparent)]
    Url(#[from] UrlError),
}

/// Validated `alerts.notify` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySettings {
    pub threshold: Threshold,
    pub webhook: Option<WebhookSettings>,
    pub syslog: Option<SyslogSettings>,
    pub retry: RetryPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    pub url: HttpUrl,
    /// Budget for one attempt (resolve, connect, TLS, send, response head).
    pub timeout: Duration,
    pub shape: Shape,
    pub trust: Trust,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failed attempts after which a sink gives up on one notification.
    pub max_attempts: u32,
    /// Cap on the doubling delay between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Delay after the `failures`-th failure in a row: 1 s, 2 s, 4 s … capped.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doubled = FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        doubled.min(self.max_backoff)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyFile {
    /// When to notify; default: more than 2 denials from one agent in 300 s.
    pub threshold: Option<ThresholdFile>,
    /// HTTP(S) POST of JSON: allowdns's own, or Slack's or Telegram's shape.
    pub webhook: Option<WebhookFile>,
    /// The local syslog daemon or a UDP collector.
    pub syslog: Option<SyslogFile>,
    /// How failed sends are retried; defaults suit most sinks.
    pub retry: Option<RetryFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThresholdFile {
    /// Notify when MORE than this many denials from one agent fall in the window.
    pub count: Option<u32>,
    /// The sliding window, and the quiet time after a notification.
    pub window_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookFile {
    /// `http[s]://HOST[:PORT]/PATH`; required.
    pub url: Option<String>,
    /// Budget for one attempt: resolve, connect, TLS, send, response head.
    pub timeout_ms: Option<u64>,
    /// `json` (default), `slack` or `telegram`.
    pub format: Option<String>,
    /// Telegram's chat to post to; required with `format: telegram`.
    pub chat_id: Option<String>,
    /// PEM file of the CAs to trust for https instead of the system store.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyslogFile {
    /// Unix datagram socket of the local syslog daemon; default /dev/log.
    pub socket: Option<PathBuf>,
    /// `IP:PORT` of a UDP collector (port 514 if left out), instead of `socket`.
    pub address: Option<String>,
    /// syslog.conf facility name; default `auth`.
    pub facility: Option<String>,
    /// `rfc3164` (default for `socket`) or `rfc5424` (default for `address`).
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryFile {
    /// Failures in a row after which a sink gives up on what it holds.
    pub max_attempts: Option<u32>,
    /// Cap on the doubling delay between attempts (1 s, 2 s, 4 s, ...).
    pub max_backoff_secs: Option<u64>,
}

/// The config file and its text, to report errors at file:line.
struct Located<'a> {
    file: &'a Path,
    source: &'a str,
}

impl Located<'_> {
    /// The line of the last step of `path`, each step searched from the
    /// line of the one before, starting at `notify:`. serde_yaml keeps no
    /// spans, and a key such as `window_secs` also appears under `alerts:`.
    fn line(&self, path: &[&str]) -> Option<usize> {
        let mut line = locate(self.source, "notify", 0)?;
        for needle in path {
            line = (0..)
                .map(|nth| locate(self.source, needle, nth))
                .find(|found| found.is_none_or(|l| l >= line))??;
        }
        Some(line)
    }

    /// An error on `field`, at the line `path` leads to.
    fn error(&self, diags: &mut Diagnostics, path: &[&str], field: &str, message: impl ToString) {
        diags.error(
            self.file,
            self.line(path),
            Some(field.into()),
            message.to_string(),
        );
    }

    fn warning(&self, diags: &mut Diagnostics, path: &[&str], field: &str, message: impl ToString) {
        diags.warning(
            self.file,
            self.line(path),
            Some(field.into()),
            message.to_string(),
        );
    }
}

/// Validates `alerts.notify` from the config file `file` (its text
/// `source`, for lines); `here` resolves paths relative to it. `None` (with
/// errors recorded) when invalid.
pub fn validate(
    notify: NotifyFile,
    file: &Path,
    source: &str,
    here: &dyn Fn(&Path) -> PathBuf,
    diags: &mut Diagnostics,
) -> Option<NotifySettings> {
    let at = &Located { file, source };
    // Destructured whole, like the top level.
    let NotifyFile {
        threshold,
        webhook,
        syslog,
        retry,
    } = notify;
    let errors_before = diags.errors().count();
    const F: &str = "alerts.notify";

    let ThresholdFile { count, window_secs } = threshold.unwrap_or_default();
    let count = count.unwrap_or(2);
    if count > MAX_COUNT {
        at.error(
            diags,
            &["threshold", "count"],
            &format!("{F}.threshold.count"),
            format!("{count} is more than {MAX_COUNT}"),
        );
    }
    let window_secs = window_secs.unwrap_or(300);
    if !(1..=86_400).contains(&window_secs) {
        at.error(
            diags,
            &["threshold", "window_secs"],
            &format!("{F}.threshold.window_secs"),
            format!("{window_secs} is not from 1 to 86400 seconds"),
        );
    }
    let threshold = Threshold {
        count,
        window: Duration::from_secs(window_secs),
    };

    let webhook = webhook.and_then(|w| {
        let WebhookFile {
            url,
            timeout_ms,
            format,
            chat_id,
            ca_file,
        } = w;
        let field = format!("{F}.webhook.url");
        let url = match url.as_deref().map(HttpUrl::parse) {
            None => {
                at.error(
                    diags,
                    &["webhook"],
                    &field,
                    "is required (http[s]://HOST[:PORT]/PATH)",
                );
                None
            }
            Some(Err(e)) => {
                at.error(
                    diags,
                    &["webhook", url.as_deref().unwrap_or_default()],
                    &field,
                    e,
                );
                None
            }
            Some(Ok(parsed)) => {
                if !parsed.tls && !parsed.is_local() {
                    at.warning(
                        diags,
                        &["webhook", url.as_deref().unwrap_or_default()],
                        &field,
                        format!(
                            "{parsed} is not on this machine: notifications (agent names, \
                             denied names) cross the network unencrypted"
                        ),
                    );
                }
                Some(parsed)
            }
        };
        let timeout_ms = timeout_ms.unwrap_or(2000);
        if !(1..=60_000).contains(&timeout_ms) {
            at.error(
                diags,
                &["webhook", "timeout_ms"],
                &format!("{F}.webhook.timeout_ms"),
                format!("{timeout_ms} is not from 1 to 60000 ms"),
            );
        }
        let shape = match (format.as_deref(), chat_id) {
            (None | Some("json"), None) => Some(Shape::Json),
            (Some("slack"), None) => Some(Shape::Slack),
            (Some("telegram"), Some(chat_id)) if !chat_id.trim().is_empty() => {
                Some(Shape::Telegram { chat_id })
            }
            (Some("telegram"), _) => {
                at.error(
                    diags,
                    &["webhook", "telegram"],
                    &format!("{F}.webhook.chat_id"),
                    "is required with format: telegram (the chat the bot posts to)",
                );
                None
            }
            (f @ (None | Some("json" | "slack")), Some(_)) => {
                at.error(
                    diags,
                    &["webhook", "chat_id"],
                    &format!("{F}.webhook.chat_id"),
                    format!(
                        "is only for format: telegram (format is {})",
                        f.unwrap_or("json")
                    ),
                );
                None
            }
            (Some(other), _) => {
                at.error(
                    diags,
                    &["webhook", other],
                    &format!("{F}.webhook.format"),
                    SettingError::WebhookFormat(other.to_string()),
                );
                None
            }
        };
        let trust = match ca_file {
            None => Some(Trust::System),
            Some(raw) => {
                let path = here(&raw);
                let field = format!("{F}.webhook.ca_file");
                if url.as_ref().is_some_and(|u| !u.tls) {
                    at.warning(
                        diags,
                        &["webhook", "ca_file"],
                        &field,
                        "is used only for https; this url is http",
                    );
                }
                match read_ca_file(&path) {
                    Ok(ders) => Some(Trust::Only(std::sync::Arc::new(ders))),
                    Err(e) => {
                        at.error(diags, &["webhook", "ca_file"], &field, e);
                        None
                    }
                }
            }
        };
        Some(WebhookSettings {
            url: url?,
            timeout: Duration::from_millis(timeout_ms),
            shape: shape?,
            trust: trust?,
        })
    });

    let syslog = syslog.and_then(|s| {
        let SyslogFile {
            socket,
            address,
            facility,
            format,
        } = s;
        let target = match (socket, address) {
            (Some(_), Some(address)) => {
                at.error(
                    diags,
                    &["syslog", &address],
                    &format!("{F}.syslog"),
                    "give `socket` or `address`, not both",
                );
                None
            }
            (None, Some(address)) => match parse_syslog_addr(&address) {
                Ok(addr) => Some(syslog::Target::Udp(addr)),
                Err(e) => {
                    at.error(
                        diags,
                        &["syslog", &address],
                        &format!("{F}.syslog.address"),
                        e,
                    );
                    None
                }
            },
            (socket, None) => {
                let path = socket
                    .as_deref()
                    .map_or_else(|| PathBuf::from("/dev/log"), here);
                if !path.exists() {
                    // Not an error: the syslog daemon may start later; sends are retried.
                    at.warning(
                        diags,
                        &["syslog", "socket"],
                        &format!("{F}.syslog.socket"),
                        format!(
                            "{} does not exist (yet); sends will fail until it does",
                            path.display()
                        ),
                    );
                }
                Some(syslog::Target::Socket(path))
            }
        };
        let facility = match syslog::facility(facility.as_deref().unwrap_or("auth")) {
            Ok(code) => Some(code),
            Err(e) => {
                at.error(
                    diags,
                    &["syslog", facility.as_deref().unwrap_or_default()],
                    &format!("{F}.syslog.facility"),
                    e,
                );
                None
            }
        };
        let format = match format.as_deref() {
            None if matches!(target, Some(syslog::Target::Udp(_))) => Some(syslog::Format::Rfc5424),
            None => Some(syslog::Format::Rfc3164),
            Some(raw) => match syslog::Format::parse(raw) {
                Ok(f) => Some(f),
                Err(e) => {
                    at.error(diags, &["syslog", raw], &format!("{F}.syslog.format"), e);
                    None
                }
            },
        };
        Some(SyslogSettings {
            target: target?,
            facility: facility?,
            format: format?,
        })
    });

    let RetryFile {
        max_attempts,
        max_backoff_secs,
    } = retry.unwrap_or_default();
    let defaults = RetryPolicy::default();
    let max_attempts = max_attempts.unwrap_or(defaults.max_attempts);
    if !(1..=1000).contains(&max_attempts) {
        at.error(
            diags,
            &["retry", "max_attempts"],
            &format!("{F}.retry.max_attempts"),
            format!("{max_attempts} is not from 1 to 1000"),
        );
    }
    let max_backoff_secs = max_backoff_secs.unwrap_or(defaults.max_backoff.as_secs());
    if !(1..=3600).contains(&max_backoff_secs) {
        at.error(
            diags,
            &["retry", "max_backoff_secs"],
            &format!("{F}.retry.max_backoff_secs"),
            format!("{max_backoff_secs} is not from 1 to 3600 seconds"),
        );
    }

    if webhook.is_none() && syslog.is_none() && diags.errors().count() == errors_before {
        at.error(
            diags,
            &[],
            F,
            "names no sink: add `webhook` and/or `syslog` (or remove `notify`)",
        );
    }
    if diags.errors().count() > errors_before {
        return None;
    }
    Some(NotifySettings {
        threshold,
        webhook,
        syslog,
        retry: RetryPolicy {
            max_attempts,
            max_backoff: Duration::from_secs(max_backoff_secs),
        },
    })
}

/// The certificates (DER) in a PEM file; the error names the file.
fn read_ca_file(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let text = crate::input::read_text(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut ders = Vec::new();
    for item in ureq::tls::parse_pem(text.as_bytes()) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => ders.push(c.der().to_vec()),
            Ok(_) => {}
            Err(e) => return Err(format!("{}: not PEM: {e}", path.display())),
        }
    }
    if ders.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    Ok(ders)
}

/// `IP:PORT`, `[IPv6]:PORT`, or a bare IP (port 514).
fn parse_syslog_addr(raw: &str) -> Result<SocketAddr, SettingError> {
    crate::input::socket_addr(raw, 514).ok_or_else(|| SettingError::Address(raw.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = RetryPolicy {
            max_attempts: 10,
            max_backoff: Duration::from_secs(10),
        };
        let secs: Vec<u64> = (1..=6).map(|f| r.backoff(f).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
        assert_eq!(r.backoff(1000), Duration::from_secs(10));
    }
}
