//! The ruling on one question once its client's policy is known: does that
//! policy allow the name. Pure: no I/O, no clock.

use crate::policy::name::QueryKey;
use crate::policy::{Policy, Rule};

#[derive(Debug)]
pub enum Ruling<'a> {
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
pub fn rule<'a>(policy: &'a Policy, key: Option<&QueryKey>) -> Ruling<'a> {
    match key.and_then(|key| policy.rule_for(key.as_str())) {
        Some(rule) if rule.live() => Ruling::Allow { policy, rule },
        _ => match &policy.learn {
            Some(rule) => Ruling::WouldDeny { policy, rule },
            None => Ruling::Deny { policy },
        },
    }
}
