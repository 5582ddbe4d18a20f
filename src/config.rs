//! Daemon settings: the YAML config file, overridden by command-line flags,
//! validated into [`Settings`]. Paths in the file are relative to the file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::diagnostics::{Diagnostics, locate, yaml_error};
use crate::observe::delivery::syslog::{self, SyslogSettings};
use crate::observe::delivery::threshold::{MAX_COUNT, Threshold};
use crate::observe::delivery::webhook::HttpUrl;
use crate::observe::delivery::{NotifySettings, RetryPolicy, WebhookSettings};
use crate::serve::cache::CacheLimits;
use crate::serve::tcp::TcpLimits;

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Addresses to answer on.
    #[serde(default)]
    pub listen: Vec<String>,
    #[serde(default)]
    pub upstream: UpstreamFile,
    /// Policy files or directories.
    #[serde(default)]
    pub policies: Vec<PathBuf>,
    /// Zone directory.
    #[serde(default)]
    pub zones: Option<PathBuf>,
    /// Audit log path; absent or `-` is stdout.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// TTL of the SOA in denials: how long clients cache a denial.
    #[serde(default)]
    pub negative_ttl: Option<u32>,
    #[serde(default)]
    pub cache: CacheFile,
    #[serde(default)]
    pub alerts: AlertsFile,
    /// Unix socket for `allowdns grant`/`status`; absent means none.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Address of the Prometheus endpoint; absent means none.
    #[serde(default)]
    pub metrics: Option<String>,
    /// TCP connection limits.
    #[serde(default)]
    pub tcp: TcpFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpFile {
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    #[serde(default)]
    pub max_queries: Option<u64>,
    #[serde(default)]
    pub max_lifetime_secs: Option<u64>,
    #[serde(default)]
    pub message_timeout_ms: Option<u64>,
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
}

impl TcpFile {
    /// Unset fields keep their defaults; zeros are raised to one.
    fn limits(self) -> TcpLimits {
        let d = TcpLimits::default();
        TcpLimits {
            idle_timeout: self
                .idle_timeout_ms
                .map_or(d.idle_timeout, |ms| Duration::from_millis(ms.max(1))),
            max_connections: self.max_connections.map_or(d.max_connections, |n| n.max(1)),
            max_in_flight: self.max_in_flight.map_or(d.max_in_flight, |n| n.max(1)),
            max_queries: self.max_queries.map_or(d.max_queries, |n| n.max(1)),
            max_lifetime: self
                .max_lifetime_secs
                .map_or(d.max_lifetime, |s| Duration::from_secs(s.max(1))),
            message_timeout: self
                .message_timeout_ms
                .map_or(d.message_timeout, |ms| Duration::from_millis(ms.max(1))),
            max_connections_per_ip: self
                .max_connections_per_ip
                .map_or(d.max_connections_per_ip, |n| n.max(1)),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// `forward` (default), `recursive`, or `none` (local zones only).
    #[serde(default)]
    pub mode: Option<String>,
    /// Forwarders; default: the nameservers in /etc/resolv.conf.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Root hints for `recursive`.
    #[serde(default)]
    pub root_hints: Option<PathBuf>,
    /// Let the recursor query loopback and private addresses.
    #[serde(default)]
    pub allow_private_servers: bool,
    /// Per-exchange timeout.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Upstream-bound questions in flight, all agents together.
    #[serde(default)]
    pub max_pending: Option<usize>,
    /// Upstream-bound questions in flight for one agent.
    #[serde(default)]
    pub max_pending_per_agent: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    #[serde(default)]
    pub max_entries: Option<usize>,
    #[serde(default)]
    pub min_ttl: Option<u32>,
    #[serde(default)]
    pub max_ttl: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsFile {
    /// Seconds over which repeated denials from one client are summarized.
    #[serde(default)]
    pub window_secs: Option<u64>,
    /// Threshold notifications to a webhook and/or syslog; absent: stderr only.
    #[serde(default)]
    pub notify: Option<NotifyFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyFile {
    /// When to notify; default: more than 2 denials from one agent in 300 s.
    #[serde(default)]
    pub threshold: Option<ThresholdFile>,
    /// HTTP POST of JSON, for Wazuh, Slack or Telegram relays.
    #[serde(default)]
    pub webhook: Option<WebhookFile>,
    /// The local syslog daemon or a UDP collector.
    #[serde(default)]
    pub syslog: Option<SyslogFile>,
    /// How failed sends are retried; defaults suit most sinks.
    #[serde(default)]
    pub retry: Option<RetryFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdFile {
    /// Notify when MORE than this many denials from one agent fall in the window.
    #[serde(default)]
    pub count: Option<u32>,
    /// The sliding window, and the quiet time after a notification.
    #[serde(default)]
    pub window_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    /// `http://HOST[:PORT]/PATH`; required.
    #[serde(default)]
    pub url: Option<String>,
    /// Budget for one attempt: connect, send, status line.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogFile {
    /// Unix datagram socket of the local syslog daemon; default /dev/log.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// `IP:PORT` of a UDP collector (port 514 if left out), instead of `socket`.
    #[serde(default)]
    pub address: Option<String>,
    /// syslog.conf facility name; default `auth`.
    #[serde(default)]
    pub facility: Option<String>,
    /// `rfc3164` (default for `socket`) or `rfc5424` (default for `address`).
    #[serde(default)]
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Failures in a row after which a sink gives up on what it holds.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Cap on the doubling delay between attempts (1 s, 2 s, 4 s, ...).
    #[serde(default)]
    pub max_backoff_secs: Option<u64>,
}

/// How allowed names are resolved.
#[derive(Debug, Clone)]
pub enum UpstreamMode {
    /// Only local zones are answered; other allowed names get SERVFAIL.
    None,
    Forward {
        servers: Vec<SocketAddr>,
    },
    Recursive {
        root_hints: PathBuf,
        allow_private_servers: bool,
    },
}

/// Validated settings, ready for startup.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
    pub upstream: UpstreamMode,
    pub upstream_timeout: Duration,
    /// `upstream.max_pending` and `upstream.max_pending_per_agent`.
    pub pending: crate::serve::answer::PendingLimits,
    pub policies: Vec<PathBuf>,
    pub zones: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    pub negative_ttl: u32,
    pub cache: CacheLimits,
    pub alert_window: Duration,
    /// Where `allowdns grant` and `status` reach the running resolver.
    pub control_socket: Option<PathBuf>,
    /// Where Prometheus scrapes `/metrics`.
    pub metrics: Option<SocketAddr>,
    /// Threshold notifications; `None` when `alerts.notify` is absent.
    pub notify: Option<NotifySettings>,
    pub tcp: TcpLimits,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:53";
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Parses `IP:PORT`, `[IPv6]:PORT` or a bare `IP` (port 53).
pub fn parse_addr(raw: &str) -> Result<SocketAddr, String> {
    let raw = raw.trim();
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(addr);
    }
    raw.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("'{raw}' is not an address (expected IP, IP:PORT or [IPv6]:PORT)"))
}

/// Reads the config file (if any) and applies flag overrides.
pub fn load(sources: &Sources, diags: &mut Diagnostics) -> Option<Settings> {
    let (file, base, source_text) = match &sources.config {
        Some(path) => match crate::input::read_yaml(path, "cannot read config", diags) {
            Some(text) => match serde_yaml::from_str::<Option<ConfigFile>>(&text) {
                Ok(parsed) => (
                    parsed.unwrap_or_default(),
                    path.parent().map(Path::to_path_buf).unwrap_or_default(),
                    text,
                ),
                Err(e) => {
                    yaml_error(diags, path, &e);
                    return None;
                }
            },
            None => return None,
        },
        None => (ConfigFile::default(), PathBuf::new(), String::new()),
    };
    let config_path = sources
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("<command line>"));
    let here = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    // Destructured whole, so a new config field cannot be silently ignored.
    let ConfigFile {
        listen,
        upstream,
        policies,
        zones,
        audit_log,
        negative_ttl,
        cache,
        alerts,
        control_socket,
        metrics,
        tcp,
    } = file;
    let UpstreamFile {
        mode,
        servers,
        root_hints,
        allow_private_servers,
        timeout_ms,
        max_pending,
        max_pending_per_agent,
    } = upstream;
    let CacheFile {
        max_entries,
        min_ttl,
        max_ttl,
    } = cache;
    let AlertsFile {
        window_secs,
        notify,
    } = alerts;

    let mut addr_list = |values: &[String], field: &str, from_file: bool| -> Vec<SocketAddr> {
        values
            .iter()
            .enumerate()
            .filter_map(|(i, raw)| match parse_addr(raw) {
                Ok(a) => Some(a),
                Err(e) => {
                    let line = if from_file {
                        locate(&source_text, raw, 0)
                    } else {
                        None
                    };
                    let field = if from_file {
                        format!("{field}[{i}]")
                    } else {
                        format!("--{field}")
                    };
                    diags.error(&config_path, line, Some(field), e);
                    None
                }
            })
            .collect()
    };

    let listen = if !sources.listen.is_empty() {
        addr_list(&sources.listen, "listen", false)
    } else if !listen.is_empty() {
        addr_list(&listen, "listen", true)
    } else {
        vec![DEFAULT_LISTEN.parse().expect("static address")]
    };

    let no_upstream = sources.upstream.iter().any(|u| u == "none")
        || (sources.upstream.is_empty() && mode.as_deref() == Some("none"));
    let forward_servers = if no_upstream {
        None
    } else if !sources.upstream.is_empty() {
        Some(addr_list(&sources.upstream, "upstream", false))
    } else if !servers.is_empty() {
        Some(addr_list(&servers, "upstream.servers", true))
    } else {
        None
    };

    let recursive = sources.root_hints.is_some() || mode.as_deref() == Some("recursive");
    if let Some(m) = mode.as_deref()
        && !["forward", "recursive", "none"].contains(&m)
    {
        diags.error(
            &config_path,
            locate(&source_text, m, 0),
            Some("upstream.mode".into()),
            format!("unknown mode '{m}' (expected forward, recursive or none)"),
        );
    }
    let upstream = if no_upstream {
        if sources.upstream.len() > 1 {
            diags.error(
                &config_path,
                None,
                Some("--upstream".into()),
                "'none' cannot be combined with servers",
            );
        }
        UpstreamMode::None
    } else if recursive && sources.upstream.is_empty() {
        let hints = sources
            .root_hints
            .clone()
            .or_else(|| root_hints.as_deref().map(here));
        match hints {
            Some(root_hints) => UpstreamMode::Recursive {
                root_hints,
                allow_private_servers,
            },
            None => {
                diags.error(
                    &config_path,
                    None,
                    Some("upstream.root_hints".into()),
                    "recursive mode needs a root hints file",
                );
                UpstreamMode::Forward {
                    servers: Vec::new(),
                }
            }
        }
    } else {
        let servers = match forward_servers {
            Some(servers) => servers,
            None => resolv_conf_servers(Path::new(RESOLV_CONF), &listen, diags),
        };
        if servers.is_empty() && !diags.has_errors() {
            diags.error(
                &config_path,
                None,
                Some("upstream.servers".into()),
                "no upstream servers",
            );
        }
        UpstreamMode::Forward { servers }
    };

    let policies = if !sources.policy.is_empty() {
        sources.policy.clone()
    } else {
        policies.iter().map(|p| here(p)).collect()
    };
    if policies.is_empty() {
        diags.error(
            &config_path,
            None,
            Some("policies".into()),
            "no policy given (use --policy FILE|DIR or `policies:` in the config)",
        );
    }

    let cache = CacheLimits {
        max_entries: max_entries.unwrap_or(100_000).max(16),
        min_ttl: min_ttl.unwrap_or(0),
        max_ttl: max_ttl.unwrap_or(86_400),
    };
    if cache.min_ttl > cache.max_ttl {
        diags.error(
            &config_path,
            locate(&source_text, "min_ttl", 0),
            Some("cache.min_ttl".into()),
            "is larger than cache.max_ttl",
        );
    }

    let metrics = match (&sources.metrics, &metrics) {
        (Some(raw), _) => parse_addr(raw)
            .map_err(|e| diags.error(&config_path, None, Some("--metrics".into()), e))
            .ok(),
        (None, Some(raw)) => parse_addr(raw)
            .map_err(|e| {
                let line = locate(&source_text, raw, 0);
                diags.error(&config_path, line, Some("metrics".into()), e)
            })
            .ok(),
        (None, None) => None,
    };
    let notify = notify.and_then(|n| {
        let at = Located {
            file: &config_path,
            source: &source_text,
        };
        notify_settings(n, &at, &here, diags)
    });

    if diags.has_errors() {
        return None;
    }
    Some(Settings {
        listen,
        upstream,
        upstream_timeout: Duration::from_millis(timeout_ms.unwrap_or(2000).max(1)),
        pending: {
            let d = crate::serve::answer::PendingLimits::default();
            crate::serve::answer::PendingLimits {
                total: max_pending.map_or(d.total, |n| n.max(1)),
                per_agent: max_pending_per_agent.map_or(d.per_agent, |n| n.max(1)),
            }
        },
        policies,
        zones: sources.zones.clone().or_else(|| zones.as_deref().map(here)),
        audit_log: sources
            .audit_log
            .clone()
            .or_else(|| audit_log.as_deref().map(here)),
        negative_ttl: negative_ttl.unwrap_or(5),
        cache,
        alert_window: Duration::from_secs(window_secs.unwrap_or(60).max(1)),
        control_socket: sources
            .control
            .clone()
            .or_else(|| control_socket.as_deref().map(here)),
        metrics,
        notify,
        tcp: tcp.limits(),
    })
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
    fn error(
        &self,
        diags: &mut Diagnostics,
        path: &[&str],
        field: &str,
        message: impl Into<String>,
    ) {
        diags.error(self.file, self.line(path), Some(field.into()), message);
    }

    fn warning(
        &self,
        diags: &mut Diagnostics,
        path: &[&str],
        field: &str,
        message: impl Into<String>,
    ) {
        diags.warning(self.file, self.line(path), Some(field.into()), message);
    }
}

/// Validates `alerts.notify`; `None` (with errors recorded) when invalid.
fn notify_settings(
    file: NotifyFile,
    at: &Located,
    here: &dyn Fn(&Path) -> PathBuf,
    diags: &mut Diagnostics,
) -> Option<NotifySettings> {
    // Destructured whole, like the top level.
    let NotifyFile {
        threshold,
        webhook,
        syslog,
        retry,
    } = file;
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

    let webhook = webhook.and_then(|WebhookFile { url, timeout_ms }| {
        let field = format!("{F}.webhook.url");
        let url = match url.as_deref().map(HttpUrl::parse) {
            None => {
                at.error(
                    diags,
                    &["webhook"],
                    &field,
                    "is required (http://HOST[:PORT]/PATH)",
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
                if !parsed.is_local() {
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
        Some(WebhookSettings {
            url: url?,
            timeout: Duration::from_millis(timeout_ms),
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

/// `IP:PORT`, `[IPv6]:PORT`, or a bare IP (port 514).
fn parse_syslog_addr(raw: &str) -> Result<SocketAddr, String> {
    let raw = raw.trim();
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(addr);
    }
    raw.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 514))
        .map_err(|_| format!("'{raw}' is not an address (expected IP, IP:PORT or [IPv6]:PORT)"))
}

/// Nameservers from resolv.conf, minus allowdns itself: forwarding to our own
/// listen address would loop.
fn resolv_conf_servers(
    path: &Path,
    listen: &[SocketAddr],
    diags: &mut Diagnostics,
) -> Vec<SocketAddr> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            diags.error(
                path,
                None,
                None,
                format!("cannot read default upstreams ({e}); set upstream.servers or --upstream"),
            );
            return Vec::new();
        }
    };
    let is_self = |server: &SocketAddr| {
        listen.iter().any(|l| {
            l.port() == server.port()
                && (l.ip() == server.ip() || (l.ip().is_unspecified() && server.ip().is_loopback()))
        })
    };
    let servers: Vec<SocketAddr> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            rest.split_whitespace()
                .next()?
                .split('%')
                .next()?
                .parse::<IpAddr>()
                .ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .filter(|s| !is_self(s))
        .collect();
    if servers.is_empty() {
        diags.error(
            path,
            None,
            None,
            "lists no usable nameserver (only allowdns itself?); set upstream.servers or --upstream",
        );
    }
    servers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("127.0.0.1").unwrap(),
            "127.0.0.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_addr("[::1]:5353").unwrap(),
            "[::1]:5353".parse().unwrap()
        );
        assert!(parse_addr("localhost").is_err());
    }

    fn load_text(tag: &str, text: &str) -> (Option<Settings>, Diagnostics) {
        let path = std::env::temp_dir().join(format!("allowdns-cfg-{tag}-{}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let sources = Sources {
            config: Some(path.clone()),
            ..Sources::default()
        };
        let mut diags = Diagnostics::default();
        let settings = load(&sources, &mut diags);
        std::fs::remove_file(path).unwrap();
        (settings, diags)
    }

    #[test]
    fn notify_errors_point_at_their_own_lines() {
        let (settings, diags) = load_text(
            "notify-bad",
            "policies: [p.yaml]\nupstream: { mode: none }\nalerts:\n  window_secs: 60\n  notify:\n    threshold: { count: 2, window_secs: 0 }\n    syslog: { address: \"10.0.0.9\", format: rfc9999 }\n",
        );
        assert!(settings.is_none());
        let errors: Vec<String> = diags
            .errors()
            .map(|d| format!("{:?}:{:?}: {}", d.line, d.field, d.message))
            .collect();
        assert_eq!(
            errors,
            [
                "Some(6):Some(\"alerts.notify.threshold.window_secs\"): 0 is not from 1 to 86400 seconds",
                "Some(7):Some(\"alerts.notify.syslog.format\"): unknown format 'rfc9999' (expected rfc3164 or rfc5424)",
            ]
        );
    }

    #[test]
    fn notify_defaults() {
        let (settings, diags) = load_text(
            "notify-ok",
            "policies: [p.yaml]\nupstream: { mode: none }\nalerts:\n  notify:\n    syslog: { address: \"10.0.0.9\" }\n",
        );
        assert!(!diags.has_errors(), "{diags:?}");
        let notify = settings.unwrap().notify.unwrap();
        assert_eq!(notify.threshold.count, 2);
        assert_eq!(notify.threshold.window, Duration::from_secs(300));
        assert_eq!(notify.retry, RetryPolicy::default());
        assert!(notify.webhook.is_none());
        let syslog = notify.syslog.unwrap();
        assert_eq!(
            syslog.target,
            syslog::Target::Udp("10.0.0.9:514".parse().unwrap())
        );
        assert_eq!(syslog.format, syslog::Format::Rfc5424);
        assert_eq!(syslog.facility, 4, "auth");
    }

    #[test]
    fn resolv_conf_skips_ourselves() {
        let dir = std::env::temp_dir().join(format!("allowdns-rc-{}", std::process::id()));
        std::fs::write(&dir, "nameserver 127.0.0.1\nnameserver 10.0.0.2 # x\n").unwrap();
        let mut d = Diagnostics::default();
        let s = resolv_conf_servers(&dir, &["127.0.0.1:53".parse().unwrap()], &mut d);
        assert_eq!(s, vec!["10.0.0.2:53".parse().unwrap()]);
        std::fs::remove_file(dir).unwrap();
    }
}

/// Where configuration comes from; shared by `serve` and `check`.
#[derive(Debug, clap::Args, Clone, Default)]
pub struct Sources {
    /// YAML config file (see docs/manual.md, "Config reference").
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Address to answer on, `IP:PORT` or `IP` (port 53); repeatable.
    #[arg(long)]
    pub listen: Vec<String>,
    /// Forwarder, `IP:PORT` or `IP`; repeatable. Default: /etc/resolv.conf.
    /// `none`: answer only from local zones.
    #[arg(long)]
    pub upstream: Vec<String>,
    /// Resolve recursively from this root hints file instead of forwarding.
    #[arg(long, conflicts_with = "upstream")]
    pub root_hints: Option<PathBuf>,
    /// Policy file or directory of *.yaml policies; repeatable.
    #[arg(long)]
    pub policy: Vec<PathBuf>,
    /// Directory of RFC 1035 zone files (*.zone) answered locally.
    #[arg(long)]
    pub zones: Option<PathBuf>,
    /// Audit log file (JSON Lines); `-` or absent means stdout.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Unix control socket for `grant`, `revoke` and `status` (mode 0600).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    pub metrics: Option<String>,
}
