//! The policy in force, and every change to it: load, reload, grant, revoke
//! and expiry, with their audit events and what each change withdraws from
//! the fence.
//!
//! What queries are decided against is the policy files less expired entries
//! plus active grants ([`InForce`]). Every change rebuilds it whole and
//! publishes it as one atomic snapshot (`arc-swap`): the query path only ever
//! calls [`State::snapshot`], and a query keeps the set it started with.
//!
//! The fence is reached through the small [`Fence`] trait, so the state is
//! tested without nftables (see the tests).

pub mod grants;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::fence::{Ended, Fence, FenceError};
use crate::observe::audit::AuditLog;
use crate::observe::audit::schema::{EntryExpired, Event, EventLine, GrantLife};
use crate::policy::zones::Zones;
use crate::policy::{PolicySet, Rule};
use crate::state::grants::{Grant, Grants};
use crate::sync::lock;

/// How long a grant waits for its audit line to be written before it is refused.
const AUDIT_CONFIRM: Duration = Duration::from_secs(2);
/// The longest an upstream-bound answer may take, CNAME chase included (then
/// SERVFAIL); so also the longest a query holds the set it took.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(6);

/// What a reload replaces as one unit, so no query sees half of a change.
pub struct Loaded {
    /// The policies as their files say.
    pub policies: PolicySet,
    pub zones: Zones,
}

/// What queries are decided against: the files, less expired entries, plus
/// active grants. Rebuilt on reload, grant, revoke and expiry.
pub struct InForce {
    pub files: Arc<Loaded>,
    pub policies: PolicySet,
    /// Counts installs, so an answer can tell whether its set was replaced
    /// while it was on its way.
    pub generation: u64,
}

/// Why a change of the policy in force was refused; each names what it was
/// asked. The messages reach the control socket's clients verbatim.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A grant for an agent no policy file names.
    #[error("no policy for agent '{0}'")]
    NoPolicy(String),
    /// The grant's audit line was not confirmed written, so it never took effect.
    #[error("grant refused: {why}")]
    Unaudited {
        agent: String,
        pattern: String,
        why: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A revoke of a grant that is not in force.
    #[error("agent '{agent}' has no grant for '{pattern}'")]
    NoGrant { agent: String, pattern: String },
    /// The firewall cannot follow the new set (reload); the old one stays.
    #[error("{0}")]
    Fence(Box<FenceError>),
}

/// What keeps something per agent (cache partitions, exfiltration
/// budgets): told once a reload installed new files, to drop what it keeps
/// for agents they no longer name.
pub trait PerAgent: Send + Sync {
    fn agents_changed(&self, files: &PolicySet);
}

pub struct State {
    /// Swapped whole, so a query sees one consistent set.
    in_force: ArcSwap<InForce>,
    /// Run-time exceptions; the lock also serializes rebuilds of `in_force`
    /// (with the time of the last rebuild, to report entries that expired since).
    grants: Mutex<(Grants, SystemTime)>,
    /// Wakes the expiry task when the next expiry may have moved.
    pub expiry_changed: tokio::sync::Notify,
    /// Where grants and expiries are recorded.
    audit: AuditLog,
    /// The firewall, when any policy feeds one.
    fence: Option<Arc<dyn Fence>>,
    /// Told when a reload changed the agents.
    per_agent: Vec<Arc<dyn PerAgent>>,
}

impl State {
    /// The policy in force at start-up: the files less what already expired.
    pub fn new(
        loaded: Loaded,
        audit: AuditLog,
        fence: Option<Arc<dyn Fence>>,
        per_agent: Vec<Arc<dyn PerAgent>>,
    ) -> Self {
        let now = SystemTime::now();
        let policies = loaded.policies.effective(&Default::default(), now);
        State {
            in_force: ArcSwap::from_pointee(InForce {
                files: Arc::new(loaded),
                policies,
                generation: 0,
            }),
            grants: Mutex::new((Grants::default(), now)),
            expiry_changed: tokio::sync::Notify::new(),
            audit,
            fence,
            per_agent,
        }
    }

    /// The policies and zones in force, as one snapshot.
    pub fn snapshot(&self) -> Arc<InForce> {
        self.in_force.load_full()
    }

    /// Swaps in a reloaded set atomically; queries already running keep the
    /// old one. If the firewall cannot follow, nothing changes.
    pub fn replace(&self, loaded: Loaded) -> Result<(), StateError> {
        let mut grants = lock(&self.grants);
        if let Some(fence) = &self.fence {
            fence
                .check(&loaded.policies)
                .map_err(|e| StateError::Fence(Box::new(e)))?;
        }
        let old = self.snapshot();
        // A new file set reports its own expiries (`check` shows those already past).
        let last = std::mem::replace(&mut grants.1, SystemTime::now());
        let installed = self.install(Arc::new(loaded), &mut grants, true);
        let Err(e) = installed else {
            // What the old set fed under a rule the new one ends sooner or
            // drops (an entry, a grant of a removed agent, learn mode) goes now.
            for (agent, pattern) in ended_sooner(&old.policies, &self.snapshot().policies) {
                self.withdraw(&agent, &pattern);
            }
            self.forget_ended();
            let files = self.snapshot().files.clone();
            for dropped in grants
                .0
                .drop_agents(|a| files.policies.by_agent(a).is_some())
            {
                self.audit
                    .event(&grant_event(Event::GrantDropped, &dropped));
                tracing::warn!(agent = %dropped.agent, pattern = %dropped.pattern, "grant dropped: its agent's policy was removed");
            }
            for keeper in &self.per_agent {
                keeper.agents_changed(&files.policies);
            }
            return Ok(());
        };
        grants.1 = last;
        Err(e)
    }

    /// Rebuilds what is in force now: drops expired entries and grants.
    pub fn refresh(&self) {
        let mut grants = lock(&self.grants);
        let _ = self.install(self.snapshot().files.clone(), &mut grants, false);
        self.forget_ended();
    }

    /// Rules that ended by themselves: their elements age out on their own
    /// timeouts (capped at the rule's end plus grace), so stop tracking them.
    /// A revoke withdraws instead, so it must not come through here first.
    fn forget_ended(&self) {
        if let Some(fence) = &self.fence {
            fence.forget_ended(&self.snapshot().policies);
        }
    }

    /// Adds (or renews) a grant and puts it in force at once.
    pub fn grant(&self, grant: Grant) -> Result<(), StateError> {
        let mut grants = lock(&self.grants);
        let files = self.snapshot().files.clone();
        if files.policies.by_agent(&grant.agent).is_none() {
            return Err(StateError::NoPolicy(grant.agent.to_string()));
        }
        // No exception without its audit line.
        if let Err(e) = self
            .audit
            .event_durable(&grant_event(Event::Grant, &grant), AUDIT_CONFIRM)
        {
            // Should the "grant" line still land, this one says it never took effect.
            self.audit.event(&grant_event(Event::GrantRefused, &grant));
            return Err(StateError::Unaudited {
                agent: grant.agent.to_string(),
                pattern: grant.pattern.to_string(),
                why: e.into(),
            });
        }
        tracing::warn!(
            agent = %grant.agent,
            pattern = %grant.pattern,
            reason = %grant.reason,
            expires = %humantime::format_rfc3339_seconds(grant.expires),
            uid = ?grant.uid,
            "grant: exception in force"
        );
        // A renewal that ends sooner must not leave elements fed for the longer one.
        let shortened = grants.0.active().iter().any(|g| {
            g.agent == grant.agent && g.pattern == grant.pattern && g.expires > grant.expires
        });
        let (agent, pattern) = (grant.agent.clone(), grant.pattern.clone());
        grants.0.add(grant);
        let _ = self.install(files, &mut grants, false);
        if shortened {
            self.withdraw(&agent, &pattern);
        }
        Ok(())
    }

    /// Ends a grant before its time; its firewall elements go at once.
    pub fn revoke(
        &self,
        agent: &str,
        pattern: &str,
        uid: Option<u32>,
    ) -> Result<Grant, StateError> {
        let mut grants = lock(&self.grants);
        let grant = grants
            .0
            .revoke_by(agent, pattern, uid)
            .ok_or_else(|| StateError::NoGrant {
                agent: agent.into(),
                pattern: pattern.into(),
            })?;
        self.audit.event(&grant_event(Event::GrantRevoked, &grant));
        tracing::warn!(agent, pattern, granted_by = ?grant.uid, revoked_by = ?uid, "grant revoked");
        let _ = self.install(self.snapshot().files.clone(), &mut grants, false);
        self.withdraw(agent, pattern);
        Ok(grant)
    }

    /// Deletes the elements fed under an ended rule; a failure leaves them to
    /// their timeouts (at most the rule's old end plus grace), loudly.
    /// Called under the grants lock, right after the install that ended the
    /// rule, so the set in force is the one that ended it.
    fn withdraw(&self, agent: &str, pattern: &str) {
        let Some(fence) = &self.fence else {
            return;
        };
        // Remembered as long as an answer may hold the set it was decided
        // against, with the margin `retire` gives.
        let remember = ANSWER_DEADLINE + Duration::from_secs(1);
        let ended = Ended {
            agent,
            pattern,
            generation: self.snapshot().generation,
            remember,
        };
        match fence.withdraw(ended) {
            Ok(0) => {}
            Ok(n) => tracing::info!(agent, pattern, elements = n, "firewall elements withdrawn"),
            Err(e) => {
                tracing::error!(agent, pattern, error = %e, "[!] FIREWALL UPDATE FAILED: elements stay until their timeout")
            }
        }
    }

    /// The grants in force.
    pub fn grants(&self) -> Vec<Grant> {
        let grants = lock(&self.grants);
        grants.0.active().to_vec()
    }

    /// When the next entry or grant expires that the set in force still
    /// holds: only file entries expiring after the last rebuild count, so an
    /// entry that already ended cannot wake the expiry task again and again.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        let grants = lock(&self.grants);
        let files = self.snapshot().files.policies.next_expiry_after(grants.1);
        files.into_iter().chain(grants.0.next_expiry()).min()
    }

    /// Computes the set in force from `files` and `grants`, syncs the
    /// firewall's policy addresses, then swaps the set in. `strict` (reload):
    /// if the firewall cannot follow, roll it back and keep the old set.
    /// Otherwise (expiry, grants) the set is swapped anyway: it only narrows
    /// what is allowed, and expiring ranges carry kernel timeouts of their own.
    fn install(
        &self,
        files: Arc<Loaded>,
        state: &mut (Grants, SystemTime),
        strict: bool,
    ) -> Result<(), StateError> {
        let (grants, last) = state;
        let now = SystemTime::now();
        // Expired grants' rules are not live at `now`, so `effective` leaves
        // them out; they leave the list only once nothing can fail.
        let policies = files.policies.effective(&grants.rules(), now);
        if let Some(fence) = &self.fence
            && let Err(e) = fence.sync_static(&policies)
        {
            tracing::error!(error = %e, "[!] FIREWALL UPDATE FAILED while installing policy addresses");
            if strict {
                if let Err(e) = fence.sync_static(&self.snapshot().policies) {
                    tracing::error!(error = %e, "[!] FIREWALL UPDATE FAILED: cannot restore the previous policy addresses");
                }
                return Err(StateError::Fence(Box::new(e)));
            }
        }
        for expired in grants.prune(now) {
            self.audit
                .event(&grant_event(Event::GrantExpired, &expired));
            tracing::warn!(agent = %expired.agent, pattern = %expired.pattern, "grant expired: denied again");
        }
        // File entries whose `expires` passed since the last rebuild.
        for policy in &files.policies.policies {
            let names = policy
                .entries()
                .iter()
                .map(|r| (r.pattern.to_string(), r.expires));
            let nets = policy
                .address_entries()
                .iter()
                .map(|a| (a.net.to_string(), a.expires));
            for (entry, at) in names.chain(nets) {
                let Some(at) = at.filter(|at| *last < *at && *at <= now) else {
                    continue;
                };
                let expires = humantime::format_rfc3339_seconds(at).to_string();
                tracing::warn!(agent = %policy.agent, entry, expires, "policy entry expired: denied again");
                self.audit.event(&EventLine::at(
                    now,
                    Event::EntryExpired(EntryExpired {
                        agent: policy.agent.to_string(),
                        entry,
                        file: policy.source.display().to_string(),
                        expires,
                    }),
                ));
            }
        }
        *last = now;
        // Installs are serialized by the grants lock, so this count is exact.
        let generation = self.snapshot().generation + 1;
        let old = self.in_force.swap(Arc::new(InForce {
            files,
            policies,
            generation,
        }));
        self.expiry_changed.notify_one();
        retire(old);
        Ok(())
    }
}

/// Withdrawable rules of `old` (expiring ones, learn mode's) that `new`
/// drops or ends sooner, as (agent, pattern).
fn ended_sooner(old: &PolicySet, new: &PolicySet) -> Vec<(Arc<str>, Arc<str>)> {
    let mut ended = Vec::new();
    for before in &old.policies {
        let withdrawable: Vec<&Rule> = before
            .rules
            .iter()
            .chain(&before.learn)
            .filter(|r| crate::fence::withdrawable(before, r))
            .collect();
        if withdrawable.is_empty() {
            continue;
        }
        let after = new.by_agent(&before.agent);
        // Pattern → expiry in the new set (`None` inside: permanent).
        let kept: std::collections::HashMap<&str, Option<SystemTime>> = after
            .into_iter()
            .flat_map(|p| p.rules.iter().chain(&p.learn))
            .map(|r| (&*r.pattern, r.expires))
            .collect();
        for rule in withdrawable {
            let lasts = match (kept.get(&*rule.pattern), rule.expires) {
                (Some(None), _) => true,
                (Some(Some(new_end)), Some(old_end)) => *new_end >= old_end,
                (Some(Some(_)), None) => false, // learn mode's rule now expiring
                (None, _) => false,
            };
            if !lasts {
                ended.push((before.agent.clone(), rule.pattern.clone()));
            }
        }
    }
    ended
}

/// Frees a replaced set once no query holds it, on a thread of its own: a
/// large policy takes milliseconds to free, which must not land on whichever
/// query thread drops the last reference.
fn retire(old: Arc<InForce>) {
    let spawned = std::thread::Builder::new()
        .name("retire".into())
        .spawn(move || {
            let until = Instant::now() + ANSWER_DEADLINE + Duration::from_secs(1);
            while Arc::strong_count(&old) > 1 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "cannot spawn a thread to free the old policy set");
    }
}

/// The audit line for a grant's life events.
fn grant_event(event: fn(GrantLife) -> Event, g: &Grant) -> EventLine {
    EventLine::now(event(g.into()))
}

#[cfg(test)]
mod tests;
