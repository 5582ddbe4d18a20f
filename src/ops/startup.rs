//! Startup, shared by `serve` and `check` so that `check` loads exactly what
//! `serve` would: settings, policies, zones and the upstream.

use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::config::Sources;
use crate::config::{self, Settings, UpstreamMode};
use crate::diagnostics::Diagnostics;
pub use crate::error::{Failure, RuntimeError};
use crate::fence::Firewall;
use crate::observe::alert::Alerts;
use crate::observe::audit::{AuditLog, Sink};
use crate::policy;
use crate::policy::zones::Zones;
use crate::serve::cache::Cache;
use crate::serve::handler::Handler;
use crate::serve::resolve::Resolver;
use crate::serve::server::{self, Listeners};
use crate::serve::service::Service;
use crate::serve::upstream::Upstream;
use crate::state::Loaded;

/// Why `nft-ruleset` cannot pick the policy or the DNS address, naming what it was given.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("no policy for agent '{0}'")]
    NoPolicy(String),
    /// How many policies are loaded.
    #[error("several policies are loaded; choose one with --agent")]
    SeveralPolicies(usize),
    /// The listen addresses, all wildcards.
    #[error(
        "allowdns listens on a wildcard address; give its address as the agent sees it with --dns"
    )]
    WildcardListen(Vec<std::net::SocketAddr>),
}

impl From<StartupError> for Failure {
    fn from(e: StartupError) -> Self {
        Failure::Runtime(RuntimeError::subsystem(e))
    }
}

/// Everything `serve` needs, loaded and validated.
pub struct Prepared {
    pub settings: Settings,
    pub loaded: Loaded,
    pub upstream: Upstream,
    /// Open and verified nftables targets, when any policy feeds one.
    pub firewall: Option<Firewall>,
    /// Warnings worth showing (over-broad patterns and the like).
    pub diagnostics: Diagnostics,
    /// Run on SIGHUP before the reload reads the files (`run` rewrites its
    /// policy from the operator's); an error refuses the reload.
    pub before_reload: Option<ReloadHook>,
    /// Reload when the policy, zone or config files change (`serve --watch`).
    pub watch: bool,
}

/// See [`Prepared::before_reload`]; the error names the file.
pub type ReloadHook = std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Loads settings, then policies and zones (the unit a reload swaps).
pub fn prepare(sources: &Sources) -> Result<Prepared, Failure> {
    let mut diags = Diagnostics::default();
    let Some(settings) = config::load(sources, &mut diags) else {
        return Err(Failure::Invalid(diags));
    };
    let loaded = load_policies_and_zones(&settings, &mut diags);
    let upstream = match &settings.upstream {
        UpstreamMode::None => Ok(Upstream::None),
        UpstreamMode::Forward { servers, .. } => {
            Upstream::forward(servers, settings.upstream_timeout)
        }
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
    let (Some(loaded), Some(upstream)) = (loaded, upstream) else {
        return Err(Failure::Invalid(diags));
    };
    // Missing tables or sets, or no permission, must stop startup with a clear
    // error: a wrong ruleset is the input's fault, a refused capability the
    // environment's (unless the input is wrong too).
    let firewall = match Firewall::open(&loaded.policies) {
        Ok(firewall) => firewall,
        Err(e) if e.is_permission() && !diags.has_errors() => {
            return Err(Failure::Runtime(RuntimeError::subsystem(e)));
        }
        Err(e) => {
            diags.error(
                std::path::Path::new("<firewall>"),
                None,
                None,
                e.to_string(),
            );
            None
        }
    };
    if diags.has_errors() {
        return Err(Failure::Invalid(diags));
    }
    Ok(Prepared {
        settings,
        loaded,
        upstream,
        firewall,
        diagnostics: diags,
        before_reload: None,
        watch: false,
    })
}

pub fn load_policies_and_zones(settings: &Settings, diags: &mut Diagnostics) -> Option<Loaded> {
    let policies = policy::load(&settings.policies, diags);
    let zones = Zones::load(settings.zones.as_deref(), diags);
    let mut policies = policies?;
    crate::observe::metrics::METRICS.assign_slots(&mut policies);
    Some(Loaded { policies, zones })
}

/// The longest the expiry task sleeps without re-reading the clock.
const EXPIRY_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);
/// At shutdown, how long blocked-connection reports still queued are read
/// before the rest is counted lost.
const EGRESS_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Binds (or takes the sockets the service manager `passed`), serves until
/// `shutdown`, then drains the audit log and alerts.
pub async fn serve(
    sources: Sources,
    prepared: Prepared,
    shutdown: CancellationToken,
    passed: server::Passed,
) -> Result<(), Failure> {
    for warning in prepared.diagnostics.warnings() {
        tracing::warn!("{warning}");
    }
    // Sockets first: a port conflict should fail before anything else starts.
    let listeners = Listeners::open(&prepared.settings.listen, passed)?;
    serve_on(
        sources,
        prepared,
        shutdown,
        listeners,
        Box::new(std::io::stderr()),
    )
    .await
}

/// `serve` on listeners bound by the caller (the kennel binds inside its
/// namespace), with human alerts written to `alerts_out`.
pub async fn serve_on(
    sources: Sources,
    prepared: Prepared,
    shutdown: CancellationToken,
    listeners: Listeners,
    alerts_out: Box<dyn std::io::Write + Send>,
) -> Result<(), Failure> {
    let Prepared {
        settings,
        loaded,
        upstream,
        firewall,
        diagnostics: _,
        before_reload,
        watch,
    } = prepared;
    let metrics = match settings.metrics {
        Some(addr) => Some(
            crate::observe::metrics::bind(addr)
                .await
                .map_err(RuntimeError::subsystem)?,
        ),
        None => None,
    };
    let control = match &settings.control_socket {
        Some(path) => Some((
            crate::ops::control::bind(path).map_err(RuntimeError::from)?,
            path.clone(),
        )),
        None => None,
    };
    let sink = Sink::open(settings.audit_log.as_deref()).map_err(|source| RuntimeError::Audit {
        path: settings.audit_log.clone().unwrap_or_default(),
        source,
    })?;
    let audit = AuditLog::start(sink);
    let alerts = Alerts::start_with(settings.alert_window, settings.notify.clone(), alerts_out);
    crate::observe::metrics::METRICS.watch_alerts(alerts.stats().clone(), alerts.delivery_stats());

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
    tracing::info!(
        zones = loaded.zones.len(),
        "ready; upstream: {}",
        settings.upstream
    );

    if let Some(firewall) = &firewall {
        firewall
            .sync_static(&loaded.policies)
            .map_err(RuntimeError::subsystem)?;
        take_over(firewall, &loaded.policies, &audit)?;
    }
    let policies = loaded.policies.policies.len();
    let resolver = Resolver::new(upstream, Cache::new(settings.cache));
    // Once, in the background: a dead upstream is named now, not at the agent's first SERVFAIL.
    tokio::spawn(resolver.upstream().clone().probe());
    let attribution = settings.attribution.map(|limits| {
        // Where a client's socket points: the addresses actually bound.
        let servers = listeners
            .udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect();
        let attributor = crate::observe::attribution::Attributor::new(limits, servers);
        for policy in &loaded.policies.policies {
            attributor.prepare(policy.firewall.as_ref().and_then(|f| f.netns.as_deref()));
        }
        attributor
    });
    // The service's parts, built once; each user below takes the ones it needs.
    let service = Arc::new(Service::new(
        loaded,
        resolver,
        audit.clone(),
        alerts.clone(),
        firewall,
        attribution,
    ));
    let handler = Arc::new(Handler::new(&service, settings.negative_ttl));
    // Re-feeds the sets when the ruleset is reloaded under us, and reads
    // the connections it blocks.
    let events = match &service.firewall {
        Some(firewall) => crate::fence::watch::spawn(
            firewall.clone(),
            |f| Some(f),
            &|| Box::new(crate::serve::egress::EgressReport(service.clone())),
            EGRESS_DRAIN,
        ),
        None => Default::default(),
    };
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(RuntimeError::Signals)?;
    let reloading = service.clone();
    let tcp_limits = settings.tcp.clone();
    let pending = settings.pending.clone();
    let watch = match watch {
        true => Some(
            crate::ops::watch::Watch::start(sources.config.as_deref(), &settings)
                .map_err(RuntimeError::subsystem)?,
        ),
        false => None,
    };
    // One reload path, two triggers; one at a time, so the last files read win.
    let reloader = tokio::spawn(async move {
        loop {
            tokio::select! {
                signal = hangups.recv() => match signal {
                    Some(()) => tracing::info!("SIGHUP received: reloading"),
                    None => break,
                },
                () = crate::ops::watch::changed(watch.as_ref()) => {
                    tracing::info!("policy files changed: reloading");
                }
            }
            if let Some(hook) = before_reload.clone() {
                let done = tokio::task::spawn_blocking(move || hook()).await;
                if let Err(why) = done.unwrap_or_else(|e| Err(e.to_string())) {
                    tracing::error!(
                        "[!] RELOAD FAILED, the previous policies stay in force: {why}"
                    );
                    continue;
                }
            }
            crate::ops::reload::reload(&sources, &settings, &reloading).await;
        }
    });
    let control = control.map(|(listener, path)| {
        tracing::info!(socket = %path.display(), "control socket ready");
        tokio::spawn(crate::ops::control::serve(
            listener,
            path,
            service.state.clone(),
            shutdown.clone(),
        ))
    });
    if let Some(listener) = metrics {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("metrics on http://{addr}/metrics");
        }
        tokio::spawn(crate::observe::metrics::serve(listener, shutdown.clone()));
    }
    let expiring = service.state.clone();
    let expiry = tokio::spawn(async move {
        loop {
            let wait = expiring.next_expiry().map(|at| {
                at.duration_since(std::time::SystemTime::now())
                    .unwrap_or_default()
            });
            // Wall-clock deadlines: re-check at least once a minute in case the clock jumps.
            let wait = wait.unwrap_or(EXPIRY_RECHECK).min(EXPIRY_RECHECK);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    let now = std::time::SystemTime::now();
                    if expiring.next_expiry().is_some_and(|at| at <= now) {
                        // Rebuilds and the firewall sync stay off the runtime's workers.
                        let refreshing = expiring.clone();
                        let _ = tokio::task::spawn_blocking(move || refreshing.refresh()).await;
                    }
                }
                _ = expiring.expiry_changed.notified() => {}
            }
        }
    });
    tracing::info!("listening on {}", listeners.describe().join(" "));
    crate::ops::notify::notify(&format!("READY=1\nSTATUS=serving {policies} policies"));
    // STOPPING=1 as soon as shutdown starts, not after draining.
    let stopping = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            crate::ops::notify::notify("STOPPING=1\nSTATUS=stopping: draining in-flight queries");
        })
    };
    let watchdog = crate::ops::notify::watchdog_interval().map(|every| {
        tokio::spawn(crate::ops::notify::watchdog(
            every,
            listeners.health(),
            shutdown.clone(),
        ))
    });

    let result = server::run(listeners, handler, tcp_limits, pending, shutdown).await;
    let _ = stopping.await;
    reloader.abort();
    expiry.abort();
    if let Some(control) = control {
        let _ = control.await;
    }
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    tracing::info!("shutting down: flushing audit log");
    tokio::task::spawn_blocking(move || {
        events.drain(EGRESS_DRAIN);
        alerts.close();
        audit.close();
    })
    .await
    .map_err(|e| RuntimeError::Flush(e.into()))?;
    Ok(result.map_err(RuntimeError::Serve)?)
}

/// Keeps the elements a previous run left that the policies allow, and
/// withdraws the rest, each alerted and audited. A failed withdrawal stops
/// startup: the fence would pass what the policy no longer allows.
fn take_over(
    firewall: &Firewall,
    policies: &crate::policy::PolicySet,
    audit: &AuditLog,
) -> Result<(), Failure> {
    use crate::observe::audit::schema::{Event, EventLine, FenceWithdrawn};
    let done = firewall
        .take_over(policies)
        .map_err(RuntimeError::subsystem)?;
    if done.kept > 0 {
        tracing::info!(
            elements = done.kept,
            "firewall elements of the previous run taken over"
        );
    }
    let now = std::time::SystemTime::now();
    for w in done.withdrawn {
        tracing::warn!(
            agent = w.agent.as_deref().unwrap_or("-"),
            name = w.name.as_deref().unwrap_or("-"),
            target = %w.target,
            "[!] FENCE: {} withdrawn: left by the previous run, but {}",
            w.address,
            w.reason
        );
        audit.event(&EventLine::at(
            now,
            Event::FenceWithdrawn(FenceWithdrawn {
                agent: w.agent,
                name: w.name,
                addr: w.address.to_string(),
                target: w.target.to_string(),
                reason: w.reason,
            }),
        ));
    }
    Ok(())
}

/// `allowdns nft-ruleset`: the ruleset for one agent's namespace. Needs only
/// the policies (the sets it declares need not exist yet).
pub fn ruleset(
    sources: &Sources,
    agent: Option<&str>,
    dns: &[std::net::IpAddr],
) -> Result<String, Failure> {
    ruleset_with(sources, agent, dns, None)
}

/// [`ruleset`], plus the rules a sidecar needs when given.
pub fn ruleset_with(
    sources: &Sources,
    agent: Option<&str>,
    dns: &[std::net::IpAddr],
    sidecar: Option<&crate::fence::sidecar::Sidecar>,
) -> Result<String, Failure> {
    let mut diags = Diagnostics::default();
    let Some(settings) = config::load(sources, &mut diags) else {
        return Err(Failure::Invalid(diags));
    };
    let Some(policies) = policy::load(&settings.policies, &mut diags) else {
        return Err(Failure::Invalid(diags));
    };
    let chosen: Vec<_> = policies
        .policies
        .iter()
        .filter(|p| agent.is_none_or(|a| *p.agent == *a))
        .collect();
    let policy = match chosen.as_slice() {
        [one] => one,
        [] => {
            return Err(StartupError::NoPolicy(agent.unwrap_or_default().into()).into());
        }
        _ => return Err(StartupError::SeveralPolicies(chosen.len()).into()),
    };
    // DNS must reach allowdns: the given addresses, else the specific listen addresses.
    let dns: Vec<std::net::IpAddr> = if dns.is_empty() {
        settings
            .listen
            .iter()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
            .collect()
    } else {
        dns.to_vec()
    };
    if dns.is_empty() {
        return Err(StartupError::WildcardListen(settings.listen.clone()).into());
    }
    let config = policy
        .firewall
        .clone()
        .unwrap_or_else(crate::policy::firewall::FirewallConfig::with_defaults);
    let mut text = crate::fence::ruleset::render(policy, &config, &dns);
    if let Some(sidecar) = sidecar {
        use crate::fence::sidecar::SidecarError;
        let servers = match &settings.upstream {
            UpstreamMode::Forward { servers, .. } => servers,
            UpstreamMode::None => return Err(sidecar_error(SidecarError::NotForwarding("none"))),
            UpstreamMode::Recursive { .. } => {
                return Err(sidecar_error(SidecarError::NotForwarding("recursive")));
            }
        };
        text.push_str(&crate::fence::sidecar::rules(&config, sidecar, servers));
    }
    Ok(text)
}

fn sidecar_error(e: crate::fence::sidecar::SidecarError) -> Failure {
    let mut diags = Diagnostics::default();
    diags.error(
        std::path::Path::new("<upstream>"),
        None,
        None,
        e.to_string(),
    );
    Failure::Invalid(diags)
}
