//! Daemon settings: the YAML config file, overridden by command-line flags,
//! validated into [`Settings`]. Paths in the file are relative to the file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cache::CacheLimits;
use crate::cli::Sources;
use crate::diagnostics::{Diagnostics, locate, yaml_error};

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
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => match serde_yaml::from_str::<Option<ConfigFile>>(&text) {
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
            Err(e) => {
                diags.error(path, None, None, format!("cannot read config: {e}"));
                return None;
            }
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
    } = file;
    let UpstreamFile {
        mode,
        servers,
        root_hints,
        allow_private_servers,
        timeout_ms,
    } = upstream;
    let CacheFile {
        max_entries,
        min_ttl,
        max_ttl,
    } = cache;
    let AlertsFile { window_secs } = alerts;

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

    if diags.has_errors() {
        return None;
    }
    Some(Settings {
        listen,
        upstream,
        upstream_timeout: Duration::from_millis(timeout_ms.unwrap_or(2000).max(1)),
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
