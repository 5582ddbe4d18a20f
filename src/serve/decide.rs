//! The decision for one question: which policy governs the client, and does
//! that policy allow the name. Pure: no I/O, no clock.

use std::net::IpAddr;

use crate::policy::name::QueryKey;
use crate::policy::{Policy, PolicySet, Rule};

#[derive(Debug)]
pub enum Decision<'a> {
    /// No policy governs this client: allowdns is never an open resolver.
    Refused,
    /// Not on the allowlist (or not spellable in one): NXDOMAIN and an alert.
    Deny {
        policy: &'a Policy,
    },
    Allow {
        policy: &'a Policy,
        rule: &'a Rule,
    },
    /// Learn mode: not on the allowlist, but resolved (under the policy's
    /// catch-all learn rule) and audited as `would_deny`.
    WouldDeny {
        policy: &'a Policy,
        rule: &'a Rule,
    },
}

/// `key` is the question's [`QueryKey::of`]: `None` (a name no policy can
/// spell) is never on the allowlist.
pub fn decide<'a>(policies: &'a PolicySet, client: IpAddr, key: Option<&QueryKey>) -> Decision<'a> {
    match policies.for_client(client) {
        Some(policy) => decide_for(policy, key),
        None => Decision::Refused,
    }
}

/// The decision once the client's policy is known.
pub fn decide_for<'a>(policy: &'a Policy, key: Option<&QueryKey>) -> Decision<'a> {
    match key.and_then(|key| policy.rule_for(key.as_str())) {
        Some(rule) if rule.live() => Decision::Allow { policy, rule },
        _ => match &policy.learn {
            Some(rule) => Decision::WouldDeny { policy, rule },
            None => Decision::Deny { policy },
        },
    }
}
