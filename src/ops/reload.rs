//! SIGHUP: reload config, policies and zones. The new set is loaded and
//! compiled on a blocking thread, off the query path, then swapped in whole,
//! so every query sees either the old set or the new one. Anything wrong
//! keeps the old set in force and raises an alert naming file:line.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::Sources;
use crate::config::{self, Settings};
use crate::diagnostics::Diagnostics;
use crate::observe::audit::{Event, EventLine, schema};
use crate::ops::startup;
use crate::policy::PolicySet;
use crate::serve::service::Service;

/// Reloads once; never fails the server. Loading, compiling, the firewall
/// sync and the swap all run on a blocking thread, off the query path.
pub async fn reload(sources: &Sources, running: &Settings, service: &Arc<Service>) {
    crate::ops::notify::notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
        monotonic_usec()
    ));
    // logrotate's postrotate reloads; the log moves on whatever the policies say.
    service.audit.reopen();
    let (sources, running, service) = (sources.clone(), running.clone(), service.clone());
    let done = tokio::task::spawn_blocking(move || {
        reload_now(&sources, &running, &service).map_err(|(diags, why)| {
            failed(&service, &diags, why.as_ref());
        })
    })
    .await;
    let status = match done {
        Ok(Ok(changes)) => format!("reloaded: {changes} change(s)"),
        Ok(Err(())) => "reload failed; the previous policies stay in force".into(),
        Err(e) => {
            tracing::error!(
                "[!] RELOAD FAILED, the previous policies stay in force: reload task failed: {e}"
            );
            "reload failed; the previous policies stay in force".into()
        }
    };
    crate::ops::notify::notify(&format!("READY=1\nSTATUS={status}"));
}

/// Why a reload was refused: the load's diagnostics, and a reason beyond them.
type Refused = (Diagnostics, Option<ReloadError>);

/// A reason to refuse a reload beyond the files' own errors.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// An agent's policy now has a `firewall:`, and allowdns started without one.
    #[error("a policy now feeds a firewall; restart allowdns to enable feeding")]
    FirewallNeedsRestart { agent: String },
    /// The state (its firewall) cannot follow the new set.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

fn reload_now(sources: &Sources, running: &Settings, service: &Service) -> Result<usize, Refused> {
    let mut diags = Diagnostics::default();
    let settings = config::load(sources, &mut diags);
    let loaded = settings
        .as_ref()
        .and_then(|s| startup::load_policies_and_zones(s, &mut diags));
    for warning in diags.warnings() {
        tracing::warn!("{warning}");
    }
    let (Some(settings), Some(loaded)) = (settings, loaded) else {
        return Err((diags, None));
    };
    // Zones report their errors but still load the rest; any error refuses the whole set.
    if diags.has_errors() {
        return Err((diags, None));
    }
    let restart_only = restart_only(&settings, running);
    if !restart_only.is_empty() {
        tracing::warn!(
            "reload: {} take effect only on restart; the running ones are kept",
            restart_only.join(", ")
        );
    }
    if service.firewall.is_none()
        && let Some(feeding) = loaded
            .policies
            .policies
            .iter()
            .find(|p| p.firewall.is_some())
    {
        let why = ReloadError::FirewallNeedsRestart {
            agent: feeding.agent.to_string(),
        };
        return Err((diags, Some(why)));
    }
    let changes = changes(&service.state.snapshot().files.policies, &loaded.policies);
    let zones = loaded.zones.len();
    if let Err(e) = service.state.replace(loaded) {
        return Err((diags, Some(e.into())));
    }
    for change in &changes {
        tracing::info!("reload: {change}");
    }
    service
        .audit
        .event(&EventLine::now(Event::Reload(schema::Reload {
            changes: changes.clone(),
            zones,
        })));
    crate::observe::metrics::METRICS
        .reloads
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(changes = changes.len(), zones, "reloaded");
    Ok(changes.len())
}

/// Settings a reload cannot change, by config key, where the new ones differ.
fn restart_only(new: &Settings, running: &Settings) -> Vec<&'static str> {
    // Destructured whole, so a new setting cannot be silently ignored here.
    let Settings {
        listen,
        upstream,
        upstream_timeout,
        pending,
        policies: _,
        zones: _,
        audit_log,
        negative_ttl,
        cache,
        alert_window,
        attribution,
        control_socket,
        metrics,
        notify,
        tcp,
    } = new;
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    [
        ("listen", differs(listen, &running.listen)),
        ("upstream", differs(upstream, &running.upstream)),
        (
            "upstream.timeout_ms",
            differs(upstream_timeout, &running.upstream_timeout),
        ),
        ("upstream.max_pending", differs(pending, &running.pending)),
        ("audit_log", differs(audit_log, &running.audit_log)),
        ("negative_ttl", differs(negative_ttl, &running.negative_ttl)),
        ("cache", differs(cache, &running.cache)),
        (
            "alerts.window_secs",
            differs(alert_window, &running.alert_window),
        ),
        ("alerts.notify", differs(notify, &running.notify)),
        (
            "alerts.attribution",
            differs(attribution, &running.attribution),
        ),
        (
            "control_socket",
            differs(control_socket, &running.control_socket),
        ),
        ("metrics", differs(metrics, &running.metrics)),
        ("tcp", differs(tcp, &running.tcp)),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// The alert for a failed reload: a headline naming the first problem's
/// file:line, every error below it, and an audit event with all of them.
fn failed(service: &Service, diags: &Diagnostics, why: Option<&ReloadError>) {
    crate::observe::metrics::METRICS
        .reload_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let errors: Vec<String> = diags
        .errors()
        .map(ToString::to_string)
        .chain(why.map(|w| format!("error: {w}")))
        .collect();
    let first = errors.first().map_or("unknown error", String::as_str);
    let more = match errors.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more, below)", n - 1),
    };
    tracing::error!("[!] RELOAD FAILED, the previous policies stay in force: {first}{more}");
    for error in errors.iter().skip(1) {
        tracing::error!("[!] RELOAD FAILED: {error}");
    }
    service
        .audit
        .event(&EventLine::now(Event::ReloadFailed(schema::ReloadFailed {
            errors,
        })));
}

/// CLOCK_MONOTONIC in µs, as systemd wants with RELOADING=1.
fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// Change lines logged per agent and reload; the rest are counted.
const MAX_CHANGE_LINES: usize = 100;

/// What changed, per agent: policies, name rules and address rules.
fn changes(old: &PolicySet, new: &PolicySet) -> Vec<String> {
    let describe = |set: &PolicySet| -> Vec<(String, BTreeSet<String>)> {
        set.policies
            .iter()
            .map(|p| {
                let rules = p
                    .rules
                    .iter()
                    .map(|r| format!("{}{}", r.pattern, if r.dynamic { " (dynamic)" } else { "" }))
                    .chain(p.addresses.iter().map(|a| a.net.to_string()));
                (p.agent.to_string(), rules.collect())
            })
            .collect()
    };
    let (old, new) = (describe(old), describe(new));
    let mut out = Vec::new();
    for (agent, rules) in &new {
        match old.iter().find(|(a, _)| a == agent) {
            None => out.push(format!(
                "agent {agent}: new policy with {} rule(s)",
                rules.len()
            )),
            Some((_, before)) => {
                let added = rules.difference(before).map(|r| ("added", r));
                let removed = before.difference(rules).map(|r| ("removed", r));
                let mut all = added.chain(removed);
                // A regenerated 100k-rule policy must not flood the journal.
                for (what, rule) in all.by_ref().take(MAX_CHANGE_LINES) {
                    out.push(format!("agent {agent}: {what} {rule}"));
                }
                let more = all.count();
                if more > 0 {
                    out.push(format!("agent {agent}: ... and {more} more change(s)"));
                }
            }
        }
    }
    for (agent, _) in old.iter().filter(|(a, _)| !new.iter().any(|(n, _)| n == a)) {
        out.push(format!("agent {agent}: policy removed"));
    }
    out
}
