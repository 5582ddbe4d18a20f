//! Daemon settings: the YAML config file, overridden by command-line flags,
//! validated into [`Settings`]. Paths in the file are relative to the file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::diagnostics::{Diagnostics, locate, yaml_error};
/// The `alerts.notify` file format lives with its validation in delivery/.
pub use crate::observe::delivery::settings::NotifyFile;
use crate::observe::delivery::{self, NotifySettings};
use crate::serve::cache::CacheLimits;
use crate::serve::tcp::TcpLimits;

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// Addresses to answer on.
    pub listen: Vec<String>,
    pub upstream: UpstreamFile,
    /// Policy files or directories.
    pub policies: Vec<PathBuf>,
    /// Zone directory.
    pub zones: Option<PathBuf>,
    /// Audit log path; absent or `-` is stdout.
    pub audit_log: Option<PathBuf>,
    /// TTL of the SOA in denials: how long clients cache a denial.
    pub negative_ttl: Option<u32>,
    pub cache: CacheFile,
    pub alerts: AlertsFile,
    /// Unix socket for `allowdns grant`/`status`; absent means none.
    pub control_socket: Option<PathBuf>,
    /// Address of the Prometheus endpoint; absent means none.
    pub metrics: Option<String>,
    /// TCP connection limits.
    pub tcp: TcpFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpFile {
    pub idle_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_in_flight: Option<usize>,
    pub max_queries: Option<u64>,
    pub max_lifetime_secs: Option<u64>,
    pub message_timeout_ms: Option<u64>,
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

/// `upstream.mode` as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamChoice {
    Forward,
    Recursive,
    None,
}

crate::input::deserialize_choice!(UpstreamChoice {
    "forward" => Forward,
    "recursive" => Recursive,
    "none" => None,
});

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamFile {
    /// `forward` (default), `recursive`, or `none` (local zones only).
    pub mode: Option<UpstreamChoice>,
    /// Forwarders; default: the nameservers in /etc/resolv.conf.
    pub servers: Vec<String>,
    /// Root hints for `recursive`.
    pub root_hints: Option<PathBuf>,
    /// Let the recursor query loopback and private addresses.
    pub allow_private_servers: bool,
    /// Per-exchange timeout.
    pub timeout_ms: Option<u64>,
    /// Upstream-bound questions in flight, all agents together.
    pub max_pending: Option<usize>,
    /// Upstream-bound questions in flight for one agent.
    pub max_pending_per_agent: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheFile {
    pub max_entries: Option<usize>,
    pub min_ttl: Option<u32>,
    pub max_ttl: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsFile {
    /// Seconds over which repeated denials from one client are summarized.
    pub window_secs: Option<u64>,
    /// Threshold notifications to a webhook and/or syslog; absent: stderr only.
    pub notify: Option<NotifyFile>,
    /// Name the process behind each denial (PID, command, parents); default true.
    pub attribution: Option<bool>,
    /// The most one denial's attribution may delay its reply, in ms (1 to 1000; default 5).
    pub attribution_budget_ms: Option<u64>,
    /// Denials attributed per second and agent beyond those
    /// alerted in full (0 to 100000; default 100); the rest are
    /// `unknown (rate limited)`.
    pub attribution_rate: Option<u64>,
}

/// How allowed names are resolved.
#[derive(Debug, Clone)]
pub enum UpstreamMode {
    /// Only local zones are answered; other allowed names get SERVFAIL.
    None,
    Forward {
        servers: Vec<SocketAddr>,
        /// Taken from /etc/resolv.conf, none being configured.
        from_resolv_conf: bool,
    },
    Recursive {
        root_hints: PathBuf,
        allow_private_servers: bool,
    },
}

/// How start-up names the upstream in use.
impl std::fmt::Display for UpstreamMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamMode::None => f.write_str("none (local zones only)"),
            UpstreamMode::Forward {
                servers,
                from_resolv_conf,
            } => {
                let list: Vec<String> = servers.iter().map(ToString::to_string).collect();
                write!(f, "forwarding to {}", list.join(", "))?;
                if *from_resolv_conf {
                    write!(f, " (from {RESOLV_CONF})")?;
                }
                Ok(())
            }
            UpstreamMode::Recursive { root_hints, .. } => {
                write!(f, "recursive from root hints {}", root_hints.display())
            }
        }
    }
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
    /// How long a denial's attribution may take (`alerts.attribution_budget_ms`)
    /// and how many per second (`alerts.attribution_rate`); `None`: denials
    /// do not name their process (`alerts.attribution: false`).
    pub attribution: Option<crate::observe::attribution::Limits>,
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

/// Why a setting is refused; carries the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("'{0}' is not an address (expected IP, IP:PORT or [IPv6]:PORT)")]
    Address(String),
}

/// Parses `IP:PORT`, `[IPv6]:PORT` or a bare `IP` (port 53).
pub fn parse_addr(raw: &str) -> Result<SocketAddr, ConfigError> {
    crate::input::socket_addr(raw, 53).ok_or_else(|| ConfigError::Address(raw.trim().to_string()))
}

/// Where settings come from while they are read: the flags, and the config
/// file (if any) that errors point into.
struct Input<'a> {
    sources: &'a Sources,
    /// The config file, or `<command line>` without one.
    path: PathBuf,
    /// The file's text, to find the line of a value.
    text: String,
    /// The file's directory: relative paths in the file start here.
    base: PathBuf,
}

impl Input<'_> {
    /// Reads and parses the config file; without one, an empty config.
    fn read<'a>(sources: &'a Sources, diags: &mut Diagnostics) -> Option<(ConfigFile, Input<'a>)> {
        let (file, base, text) = match &sources.config {
            Some(path) => {
                let text = crate::input::read_yaml(path, "cannot read config", diags)?;
                match serde_yaml::from_str::<Option<ConfigFile>>(&text) {
                    Ok(parsed) => (
                        parsed.unwrap_or_default(),
                        path.parent().map(Path::to_path_buf).unwrap_or_default(),
                        text,
                    ),
                    Err(e) => {
                        yaml_error(diags, path, &text, &e);
                        return None;
                    }
                }
            }
            None => (ConfigFile::default(), PathBuf::new(), String::new()),
        };
        let path = sources
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from("<command line>"));
        Some((
            file,
            Input {
                sources,
                path,
                text,
                base,
            },
        ))
    }

    /// A path from the file, relative to the file.
    fn here(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// Addresses from the file (`field[i]`, with its line) or from a flag (`--field`).
    fn addr_list(
        &self,
        values: &[String],
        field: &str,
        from_file: bool,
        diags: &mut Diagnostics,
    ) -> Vec<SocketAddr> {
        values
            .iter()
            .enumerate()
            .filter_map(|(i, raw)| match parse_addr(raw) {
                Ok(a) => Some(a),
                Err(e) => {
                    let line = if from_file {
                        locate(&self.text, raw, 0)
                    } else {
                        None
                    };
                    let field = if from_file {
                        format!("{field}[{i}]")
                    } else {
                        format!("--{field}")
                    };
                    diags.error(&self.path, line, Some(field), e.to_string());
                    None
                }
            })
            .collect()
    }

    /// `--listen`, else `listen:`, else 127.0.0.1:53.
    fn listen(&self, listen: &[String], diags: &mut Diagnostics) -> Vec<SocketAddr> {
        if !self.sources.listen.is_empty() {
            self.addr_list(&self.sources.listen, "listen", false, diags)
        } else if !listen.is_empty() {
            self.addr_list(listen, "listen", true, diags)
        } else {
            vec![DEFAULT_LISTEN.parse().expect("static address")]
        }
    }

    /// `none`, recursive from root hints, or forwarding (to `--upstream`,
    /// `upstream.servers`, else resolv.conf's nameservers other than us).
    fn upstream(
        &self,
        mode: Option<UpstreamChoice>,
        servers: &[String],
        root_hints: Option<&Path>,
        allow_private_servers: bool,
        listen: &[SocketAddr],
        diags: &mut Diagnostics,
    ) -> UpstreamMode {
        let sources = self.sources;
        let no_upstream = sources.upstream.iter().any(|u| u == "none")
            || (sources.upstream.is_empty() && mode == Some(UpstreamChoice::None));
        let forward_servers = if no_upstream {
            None
        } else if !sources.upstream.is_empty() {
            Some(self.addr_list(&sources.upstream, "upstream", false, diags))
        } else if !servers.is_empty() {
            Some(self.addr_list(servers, "upstream.servers", true, diags))
        } else {
            None
        };

        let recursive = sources.root_hints.is_some() || mode == Some(UpstreamChoice::Recursive);
        if no_upstream {
            if sources.upstream.len() > 1 {
                diags.error(
                    &self.path,
                    None,
                    Some("--upstream".into()),
                    "'none' cannot be combined with servers",
                );
            }
            return UpstreamMode::None;
        }
        if recursive && sources.upstream.is_empty() {
            let hints = sources
                .root_hints
                .clone()
                .or_else(|| root_hints.map(|p| self.here(p)));
            return match hints {
                Some(root_hints) => UpstreamMode::Recursive {
                    root_hints,
                    allow_private_servers,
                },
                None => {
                    diags.error(
                        &self.path,
                        None,
                        Some("upstream.root_hints".into()),
                        "recursive mode needs a root hints file",
                    );
                    UpstreamMode::Forward {
                        servers: Vec::new(),
                        from_resolv_conf: false,
                    }
                }
            };
        }
        let from_resolv_conf = forward_servers.is_none();
        let servers = match forward_servers {
            Some(servers) => servers,
            None => resolv_conf_servers(Path::new(RESOLV_CONF), listen, diags),
        };
        if servers.is_empty() && !diags.has_errors() {
            diags.error(
                &self.path,
                None,
                Some("upstream.servers".into()),
                "no upstream servers",
            );
        }
        UpstreamMode::Forward {
            servers,
            from_resolv_conf,
        }
    }

    /// `--policy`, else `policies:`; at least one.
    fn policies(&self, policies: &[PathBuf], diags: &mut Diagnostics) -> Vec<PathBuf> {
        let policies: Vec<PathBuf> = if !self.sources.policy.is_empty() {
            self.sources.policy.clone()
        } else {
            policies.iter().map(|p| self.here(p)).collect()
        };
        if policies.is_empty() {
            diags.error(
                &self.path,
                None,
                Some("policies".into()),
                "no policy given (use --policy FILE|DIR or `policies:` in the config)",
            );
        }
        policies
    }

    fn cache(&self, cache: CacheFile, diags: &mut Diagnostics) -> CacheLimits {
        let CacheFile {
            max_entries,
            min_ttl,
            max_ttl,
        } = cache;
        let cache = CacheLimits {
            max_entries: max_entries.unwrap_or(50_000).max(16),
            min_ttl: min_ttl.unwrap_or(0),
            max_ttl: max_ttl.unwrap_or(86_400),
        };
        if cache.min_ttl > cache.max_ttl {
            diags.error(
                &self.path,
                locate(&self.text, "min_ttl", 0),
                Some("cache.min_ttl".into()),
                "is larger than cache.max_ttl",
            );
        }
        cache
    }

    /// `--metrics`, else `metrics:`; none by default.
    fn metrics(&self, metrics: Option<&str>, diags: &mut Diagnostics) -> Option<SocketAddr> {
        let (raw, field, line) = match (&self.sources.metrics, metrics) {
            (Some(raw), _) => (raw.as_str(), "--metrics", None),
            (None, Some(raw)) => (raw, "metrics", locate(&self.text, raw, 0)),
            (None, None) => return None,
        };
        parse_addr(raw)
            .map_err(|e| diags.error(&self.path, line, Some(field.into()), e.to_string()))
            .ok()
    }
}

/// Reads the config file (if any) and applies flag overrides.
pub fn load(sources: &Sources, diags: &mut Diagnostics) -> Option<Settings> {
    let (file, input) = Input::read(sources, diags)?;
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
    let AlertsFile {
        window_secs,
        notify,
        attribution,
        attribution_budget_ms,
        attribution_rate,
    } = alerts;
    let attribution_budget = match attribution_budget_ms {
        None => crate::observe::attribution::Limits::default().per_lookup,
        Some(ms @ 1..=1000) => Duration::from_millis(ms),
        Some(ms) => {
            diags.error(
                &input.path,
                locate(&input.text, "attribution_budget_ms", 0),
                Some("alerts.attribution_budget_ms".into()),
                format!("{ms} is not from 1 to 1000 ms"),
            );
            Duration::ZERO
        }
    };
    let mut attribution_limits =
        crate::observe::attribution::Limits::with_budget(attribution_budget);
    match attribution_rate {
        None => {}
        Some(rate @ 0..=100_000) => attribution_limits.rate = rate as u32,
        Some(rate) => diags.error(
            &input.path,
            locate(&input.text, "attribution_rate", 0),
            Some("alerts.attribution_rate".into()),
            format!("{rate} is not from 0 to 100000 denials per second"),
        ),
    }

    let listen = input.listen(&listen, diags);
    let upstream = input.upstream(
        mode,
        &servers,
        root_hints.as_deref(),
        allow_private_servers,
        &listen,
        diags,
    );
    let policies = input.policies(&policies, diags);
    let cache = input.cache(cache, diags);
    let metrics = input.metrics(metrics.as_deref(), diags);
    let here = |p: &Path| input.here(p);
    let notify = notify
        .and_then(|n| delivery::settings::validate(n, &input.path, &input.text, &here, diags));

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
        attribution: attribution.unwrap_or(true).then_some(attribution_limits),
        control_socket: sources
            .control
            .clone()
            .or_else(|| control_socket.as_deref().map(here)),
        metrics,
        notify,
        tcp: tcp.limits(),
    })
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
    use crate::observe::delivery::RetryPolicy;
    use crate::observe::delivery::syslog;

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

    /// Loads a config file of one policy, no upstream, and `text`.
    fn load_text(tag: &str, text: &str) -> (Option<Settings>, Diagnostics) {
        let path = std::env::temp_dir().join(format!("allowdns-cfg-{tag}-{}", std::process::id()));
        let text = format!("policies: [p.yaml]\nupstream: {{ mode: none }}\n{text}");
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

    /// Loads like [`load_text`] a file that must be refused; each error as
    /// `line:field: message`.
    fn load_errors(tag: &str, text: &str) -> Vec<String> {
        let (settings, diags) = load_text(tag, text);
        assert!(settings.is_none());
        diags
            .errors()
            .map(|d| format!("{:?}:{:?}: {}", d.line, d.field, d.message))
            .collect()
    }

    #[test]
    fn notify_errors_point_at_their_own_lines() {
        assert_eq!(
            load_errors(
                "notify-bad",
                "alerts:\n  window_secs: 60\n  notify:\n    threshold: { count: 2, window_secs: 0 }\n    syslog: { address: \"10.0.0.9\", format: rfc9999 }\n",
            ),
            [
                "Some(6):Some(\"alerts.notify.threshold.window_secs\"): 0 is not from 1 to 86400 seconds",
                "Some(7):Some(\"alerts.notify.syslog.format\"): unknown format 'rfc9999' (expected rfc3164 or rfc5424)",
            ]
        );
    }

    #[test]
    fn attribution_is_on_by_default_and_its_budget_is_checked() {
        let (settings, _) = load_text("attribution-default", "");
        let limits = settings.unwrap().attribution.unwrap();
        assert_eq!(limits.per_lookup, Duration::from_millis(5));
        assert_eq!(limits.rate, 100);
        let (settings, _) = load_text("attribution-rate", "alerts:\n  attribution_rate: 0\n");
        assert_eq!(settings.unwrap().attribution.unwrap().rate, 0);
        let (settings, _) = load_text("attribution-off", "alerts:\n  attribution: false\n");
        assert_eq!(settings.unwrap().attribution, None);
        assert_eq!(
            load_errors(
                "attribution-bad",
                "alerts:\n  attribution_budget_ms: 0\n  attribution_rate: 200000\n",
            ),
            [
                "Some(4):Some(\"alerts.attribution_budget_ms\"): 0 is not from 1 to 1000 ms",
                "Some(5):Some(\"alerts.attribution_rate\"): 200000 is not from 0 to 100000 denials per second"
            ]
        );
    }

    #[test]
    fn notify_defaults() {
        let (settings, diags) = load_text(
            "notify-ok",
            "alerts:\n  notify:\n    syslog: { address: \"10.0.0.9\" }\n",
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

/// Where configuration comes from besides the file: the flags of `serve`,
/// `check` and `nft-ruleset` (`run` builds it from its own), as the command
/// line gave them.
#[derive(Debug, Clone, Default, clap::Args)]
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
