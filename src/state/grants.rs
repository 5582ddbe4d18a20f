//! Run-time exceptions: `allowdns grant` lets an operator allow a name for
//! one agent for a bounded time, with a reason. Grants are kept here, merged
//! into the agent's policy as ordinary rules (see `Policy::effective`), and
//! dropped when they expire. They live in memory only: a restart ends every
//! grant, which errs on the side of denying.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::observe::audit::schema::{GrantLife, GrantTerms};
use crate::policy::{PatternFacts, Ports, Rule};

/// The longest a single grant may last; longer exceptions belong in a policy file.
pub const MAX_GRANT: Duration = Duration::from_secs(7 * 24 * 3600);

/// One active exception.
#[derive(Clone, Debug)]
pub struct Grant {
    pub agent: Arc<str>,
    /// Canonical pattern key, as a policy rule would hold it.
    pub pattern: Arc<str>,
    /// Why it was granted: required, and written to the audit log.
    pub reason: Arc<str>,
    pub granted_at: SystemTime,
    pub expires: SystemTime,
    /// Who granted it (the control socket peer's uid), for the audit trail.
    pub uid: Option<u32>,
    /// Who revoked it, once revoked; `uid` stays the granter's.
    pub revoked_by: Option<u32>,
}

/// The grant as the audit log and control replies write it (times in RFC 3339).
impl From<&Grant> for GrantLife {
    fn from(g: &Grant) -> Self {
        GrantLife {
            terms: GrantTerms {
                agent: g.agent.to_string(),
                pattern: g.pattern.to_string(),
                reason: g.reason.to_string(),
                granted_at: humantime::format_rfc3339_seconds(g.granted_at).to_string(),
                expires: humantime::format_rfc3339_seconds(g.expires).to_string(),
                uid: g.uid,
            },
            revoked_by: g.revoked_by,
        }
    }
}

#[derive(Debug, Default)]
pub struct Grants {
    active: Vec<Grant>,
}

impl Grants {
    /// Adds a grant; one for the same agent and pattern is replaced.
    pub fn add(&mut self, grant: Grant) {
        self.active
            .retain(|g| !(g.agent == grant.agent && g.pattern == grant.pattern));
        self.active.push(grant);
    }

    /// Removes the grant for `agent` and `pattern`, returning it.
    pub fn revoke(&mut self, agent: &str, pattern: &str) -> Option<Grant> {
        let at = self
            .active
            .iter()
            .position(|g| &*g.agent == agent && &*g.pattern == pattern)?;
        Some(self.active.remove(at))
    }

    /// Like [`Grants::revoke`], recording who revoked it in `revoked_by`.
    pub fn revoke_by(&mut self, agent: &str, pattern: &str, uid: Option<u32>) -> Option<Grant> {
        let mut grant = self.revoke(agent, pattern)?;
        grant.revoked_by = uid;
        Some(grant)
    }

    /// Removes and returns the grants of agents `keep` rejects (a reload
    /// removed their policy): they must not come back with a later policy.
    pub fn drop_agents(&mut self, keep: impl Fn(&str) -> bool) -> Vec<Grant> {
        let (kept, dropped) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|g| keep(&g.agent));
        self.active = kept;
        dropped
    }

    /// Removes and returns the grants expired at `now`.
    pub fn prune(&mut self, now: SystemTime) -> Vec<Grant> {
        let (expired, active) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|g| g.expires <= now);
        self.active = active;
        expired
    }

    pub fn active(&self) -> &[Grant] {
        &self.active
    }

    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.active.iter().map(|g| g.expires).min()
    }

    /// The grants as policy rules, per agent.
    pub fn rules(&self) -> HashMap<Arc<str>, Vec<Rule>> {
        let mut by_agent: HashMap<Arc<str>, Vec<Rule>> = HashMap::new();
        for g in &self.active {
            by_agent.entry(g.agent.clone()).or_default().push(Rule {
                pattern: g.pattern.clone(),
                dynamic: false,
                ports: Ports {
                    any: true,
                    listed: Vec::new(),
                },
                expires: Some(g.expires),
                grant: Some(g.reason.clone()),
                qtypes: None,
                facts: PatternFacts::of(&g.pattern),
            });
        }
        by_agent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(pattern: &str, secs: u64) -> Grant {
        let now = SystemTime::now();
        Grant {
            agent: "a".into(),
            pattern: pattern.into(),
            reason: "r".into(),
            granted_at: now,
            expires: now + Duration::from_secs(secs),
            uid: Some(0),
            revoked_by: None,
        }
    }

    #[test]
    fn regranting_replaces_and_expiry_prunes() {
        let mut grants = Grants::default();
        grants.add(grant("x.example", 10));
        grants.add(grant("x.example", 100));
        grants.add(grant("y.example", 5));
        assert_eq!(grants.active().len(), 2);
        let expired = grants.prune(SystemTime::now() + Duration::from_secs(6));
        assert_eq!(expired.len(), 1);
        assert_eq!(&*expired[0].pattern, "y.example");
        assert_eq!(grants.rules()["a"].len(), 1);
        assert!(grants.revoke("a", "x.example").is_some());
        assert!(grants.next_expiry().is_none());
    }

    #[test]
    fn revoking_keeps_the_granter_and_records_the_revoker() {
        let mut grants = Grants::default();
        grants.add(grant("x.example", 10));
        let revoked = grants.revoke_by("a", "x.example", Some(1000)).unwrap();
        assert_eq!((revoked.uid, revoked.revoked_by), (Some(0), Some(1000)));
        assert!(grants.revoke_by("a", "x.example", Some(0)).is_none());
    }
}
