//! Startup, shared by `serve` and `check` so that `check` loads exactly what
//! `serve` would: settings, policies, zones and the upstream.

use std::fmt;

use tokio_util::sync::CancellationToken;

use crate::alert::Alerts;
use crate::audit::{AuditLog, Sink};
use crate::cache::Cache;
use crate::cli::Sources;
use crate::config::{self, Settings, UpstreamMode};
use crate::diagnostics::Diagnostics;
use crate::handler::{Handler, Loaded};
use crate::policy;
use crate::resolve::Resolver;
use crate::server::{self, Listeners};
use crate::upstream::Upstream;
use crate::zones::Zones;

/// Why a command failed; `main` maps each kind to text and an exit code.
#[derive(Debug)]
pub enum Failure {
    /// Input files are wrong; every problem is listed.
    Invalid(Diagnostics),
    /// The inputs are fine but the resolver could not run (a socket, a file).
    Runtime(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Invalid(d) => write!(f, "{} error(s) in configuration", d.errors().count()),
            Failure::Runtime(msg) => f.write_str(msg),
        }
    }
}

/// Everything `serve` needs, loaded and validated.
pub struct Prepared {
    pub settings: Settings,
    pub loaded: Loaded,
    pub upstream: Upstream,
    /// Warnings worth showing (over-broad patterns and the like).
    pub diagnostics: Diagnostics,
}

/// Loads settings, then policies and zones (the unit a reload swaps).
pub fn prepare(sources: &Sources) -> Result<Prepared, Failure> {
    let mut diags = Diagnostics::default();
    let Some(settings) = config::load(sources, &mut diags) else {
        return Err(Failure::Invalid(diags));
    };
    let loaded = load_policies_and_zones(&settings, &mut diags);
    let upstream = match &settings.upstream {
        UpstreamMode::None => Ok(Upstream::None),
        UpstreamMode::Forward { servers } => Upstream::forward(servers, settings.upstream_timeout),
        UpstreamMode::Recursive {
            root_hints,
            allow_private_servers,
        } => Upstream::recursive(root_hints, *allow_private_servers),
    };
    let upstream = match upstream {
        Ok(u) => Some(u),
        Err(e) => {
            diags.error(std::path::Path::new("<upstream>"), None, None, e);
            None
        }
    };
    match (loaded, upstream) {
        (Some(loaded), Some(upstream)) if !diags.has_errors() => Ok(Prepared {
            settings,
            loaded,
            upstream,
            diagnostics: diags,
        }),
        _ => Err(Failure::Invalid(diags)),
    }
}

pub fn load_policies_and_zones(settings: &Settings, diags: &mut Diagnostics) -> Option<Loaded> {
    let policies = policy::load(&settings.policies, diags);
    let zones = Zones::load(settings.zones.as_deref(), diags);
    Some(Loaded {
        policies: policies?,
        zones,
    })
}

/// Binds, serves until `shutdown`, then drains the audit log and alerts.
pub async fn serve(prepared: Prepared, shutdown: CancellationToken) -> Result<(), Failure> {
    let Prepared {
        settings,
        loaded,
        upstream,
        diagnostics,
    } = prepared;
    for warning in diagnostics.warnings() {
        tracing::warn!("{warning}");
    }
    // Sockets first: a port conflict should fail before anything else starts.
    let listeners =
        Listeners::bind(&settings.listen).map_err(|e| Failure::Runtime(e.to_string()))?;
    let sink = Sink::open(settings.audit_log.as_deref())
        .map_err(|e| Failure::Runtime(format!("cannot open audit log {e}")))?;
    let audit = AuditLog::start(sink);
    let alerts = Alerts::start(settings.alert_window, Box::new(std::io::stderr()));

    for policy in &loaded.policies.policies {
        tracing::info!(
            agent = %policy.agent,
            rules = policy.rules.len(),
            addresses = policy.addresses.len(),
            clients = ?policy.clients,
            file = %policy.source.display(),
            "policy loaded"
        );
    }
    tracing::info!(zones = loaded.zones.len(), upstream = ?settings.upstream, "ready");

    let resolver = Resolver::new(upstream, Cache::new(settings.cache));
    let handler = Handler::new(
        loaded,
        resolver,
        audit.clone(),
        alerts.clone(),
        settings.negative_ttl,
    );
    tracing::info!("listening on {}", listeners.describe().join(" "));

    let result = server::run(listeners, handler, shutdown).await;
    tracing::info!("shutting down: flushing audit log");
    tokio::task::spawn_blocking(move || {
        alerts.close();
        audit.close();
    })
    .await
    .map_err(|e| Failure::Runtime(format!("flush: {e}")))?;
    result.map_err(|e| Failure::Runtime(e.to_string()))
}
