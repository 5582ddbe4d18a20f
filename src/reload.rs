//! SIGHUP: reload config, policies and zones. The new set is loaded and
//! compiled on a blocking thread, off the query path, then swapped in whole,
//! so every query sees either the old set or the new one. Anything wrong
//! keeps the old set in force and raises an alert naming file:line.

use std::collections::BTreeSet;

use crate::app;
use crate::cli::Sources;
use crate::config::{self, Settings};
use crate::diagnostics::Diagnostics;
use crate::handler::Handler;
use crate::policy::PolicySet;

/// Reloads once; never fails the server.
pub async fn reload(sources: &Sources, running: &Settings, handler: &Handler) {
    let sources = sources.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let mut diags = Diagnostics::default();
        let settings = config::load(&sources, &mut diags);
        let loaded = settings
            .as_ref()
            .and_then(|s| app::load_policies_and_zones(s, &mut diags));
        (settings, loaded, diags)
    })
    .await;
    let (settings, loaded, diags) = match loaded {
        Ok(result) => result,
        Err(e) => return failed(&format!("reload task failed: {e}")),
    };
    for warning in diags.warnings() {
        tracing::warn!("{warning}");
    }
    let (Some(settings), Some(loaded)) = (settings, loaded) else {
        for error in diags.errors() {
            tracing::error!("{error}");
        }
        return failed(&format!(
            "{} error(s), listed above",
            diags.errors().count()
        ));
    };
    if diags.has_errors() {
        return failed("errors in the new configuration");
    }
    if settings.listen != running.listen
        || format!("{:?}", settings.upstream) != format!("{:?}", running.upstream)
    {
        tracing::warn!(
            "listen and upstream changes take effect only on restart; the running ones are kept"
        );
    }
    if settings.alert_window != running.alert_window || settings.notify != running.notify {
        tracing::warn!("alert settings take effect only on restart; the running ones are kept");
    }
    match &handler.firewall {
        Some(firewall) => {
            if let Err(e) = firewall.reload(&loaded.policies) {
                return failed(&e);
            }
        }
        None if loaded
            .policies
            .policies
            .iter()
            .any(|p| p.firewall.is_some()) =>
        {
            return failed("a policy now feeds a firewall; restart allowdns to enable feeding");
        }
        None => {}
    }
    let changes = changes(&handler.current().files.policies, &loaded.policies);
    let zones = loaded.zones.len();
    handler.replace(loaded);
    for change in &changes {
        tracing::info!("reload: {change}");
    }
    crate::metrics::METRICS
        .reloads
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(changes = changes.len(), zones, "reloaded");
}

fn failed(why: &str) {
    crate::metrics::METRICS
        .reload_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::error!("[!] RELOAD FAILED, the previous policies stay in force: {why}");
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
