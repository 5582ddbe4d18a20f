//! Carrying out a control request against the running state: grant,
//! revoke, or a snapshot for `status`.

use std::time::SystemTime;

use super::validate::{valid_name, validate_agent, validate_grant};
use super::{GrantView, Mode, PolicyView, Reply, Request, Status};
use crate::state::State;

pub(super) fn execute(request: Request, uid: Option<u32>, state: &State) -> Reply {
    match request {
        Request::Grant {
            agent,
            name,
            for_secs,
            reason,
        } => {
            let grant = match validate_grant(&agent, &name, for_secs, &reason, uid) {
                Ok(grant) => grant,
                Err(e) => return Reply::error(e),
            };
            let view = GrantView::from(&grant);
            match state.grant(grant) {
                Ok(()) => Reply {
                    granted: Some(view),
                    ..Reply::ok()
                },
                Err(e) => Reply::error(e.into()),
            }
        }
        Request::Revoke { agent, name } => {
            if let Err(e) = validate_agent(&agent) {
                return Reply::error(e);
            }
            let pattern = match valid_name(&name) {
                Ok(p) => p,
                Err(e) => return Reply::error(e),
            };
            match state.revoke(&agent, &pattern, uid) {
                Ok(grant) => Reply {
                    granted: Some(GrantView::from(&grant)),
                    ..Reply::ok()
                },
                Err(e) => Reply::error(e.into()),
            }
        }
        Request::Status => Reply {
            status: Some(status(state)),
            ..Reply::ok()
        },
    }
}

fn status(state: &State) -> Status {
    let in_force = state.snapshot();
    let policies = in_force
        .files
        .policies
        .policies
        .iter()
        .map(|file| {
            let effective = in_force.policies.by_agent(&file.agent).unwrap_or(file);
            let at = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
            // Entries still to end; those already ended are no longer in force.
            let now = SystemTime::now();
            let expiring = file
                .entries()
                .iter()
                .filter_map(|r| r.expires.map(|t| (r.pattern.to_string(), t)))
                .chain(
                    file.address_entries()
                        .iter()
                        .filter_map(|a| a.expires.map(|t| (a.net.to_string(), t))),
                )
                .filter(|(_, t)| *t > now)
                .map(|(entry, t)| (entry, at(t)))
                .collect();
            PolicyView {
                agent: file.agent.to_string(),
                file: file.source.display().to_string(),
                mode: if file.monitor {
                    Mode::Monitor
                } else if file.learn.is_some() {
                    Mode::Learn
                } else {
                    Mode::Enforce
                },
                clients: file.clients.iter().map(|c| c.to_string()).collect(),
                rules: effective.rules.iter().filter(|r| r.live()).count(),
                addresses: effective.addresses.len(),
                firewall: file.firewall.as_ref().map(|f| f.describe()),
                expiring,
            }
        })
        .collect();
    let grants = state.grants().iter().map(GrantView::from).collect();
    Status { policies, grants }
}
