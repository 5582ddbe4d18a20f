//! The request handler: one question's whole path, top to bottom.
//!
//! query → client's policy → decision → (local zone | cache | upstream)
//!       → audit (+ alert) → reply
//!
//! [`Handler::begin`] does everything that needs no waiting and, for most
//! queries (denials, refusals, local zones, cache hits), the whole answer.
//! Only a question that must go upstream continues in [`Handler::finish`].

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::SOA;
use hickory_server::proto::rr::{Name, RData, Record};
use hickory_server::server::Request;

use crate::alert::{Alerts, Denied, Stripped};
use crate::audit::{AuditLog, AuditRecord, Decision as Logged};
use crate::decide::{Decision, decide_for};
use crate::firewall::{FeedError, Firewall};
use crate::grants::{Grant, Grants};
use crate::metrics::{self, METRICS};
use crate::policy::{Policy, PolicySet, Rule};
use crate::resolve::{Resolution, Resolver};
use crate::upstream::UpstreamError;
use crate::wire::{Transport, header_only_reply};
use crate::zones::Zones;

/// How long a grant waits for its audit line to be written before it is refused.
const AUDIT_CONFIRM: Duration = Duration::from_secs(2);
/// The longest an allowed answer may take, CNAME chase included; then SERVFAIL.
pub const RESOLVE_DEADLINE: Duration = Duration::from_secs(6);

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

pub struct Handler {
    /// Swapped whole, so a query sees one consistent set.
    loaded: RwLock<Arc<InForce>>,
    /// Run-time exceptions; the lock also serializes rebuilds of `loaded`
    /// (with the time of the last rebuild, to report entries that expired since).
    grants: Mutex<(Grants, SystemTime)>,
    /// Wakes the expiry task when the next expiry may have moved.
    pub expiry_changed: tokio::sync::Notify,
    pub resolver: Resolver,
    pub audit: AuditLog,
    pub alerts: Alerts,
    /// nftables feeding, when any policy asks for it.
    pub firewall: Option<Firewall>,
    /// Rate limit for firewall failure alerts: (last printed, suppressed since).
    firewall_alerts: Mutex<(Option<Instant>, u64)>,
    /// The SOA put in the authority section of denials (its minimum is the negative TTL).
    deny_soa: Record,
    /// Exfiltration budgets under wildcard rules, per agent.
    pub exfil: crate::exfil::Budgets,
}

/// The reply to send, and what the audit record says about it.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub authoritative: bool,
    pub decision: Logged,
    pub agent: Option<Arc<str>>,
    /// The agent's metrics slot ([`metrics::NO_AGENT`] without a policy).
    pub slot: u16,
    pub rule: Option<Arc<str>>,
    pub dynamic: bool,
    pub upstream_ms: Option<f64>,
    /// Exfiltration mark for the audit record.
    pub exfil: Option<crate::exfil::Mark>,
    /// Special-purpose addresses the fence took out (src/special.rs).
    pub stripped: Vec<IpAddr>,
}

impl Outcome {
    pub fn refused(rcode: ResponseCode, policy: Option<&Policy>) -> Self {
        Outcome {
            rcode,
            answers: Vec::new(),
            authority: Vec::new(),
            authoritative: false,
            decision: Logged::Refused,
            agent: policy.map(|p| p.agent.clone()),
            slot: policy.map_or(metrics::NO_AGENT, |p| p.metrics_slot),
            rule: None,
            dynamic: false,
            upstream_ms: None,
            stripped: Vec::new(),
            exfil: None,
        }
    }

    /// A new name or query type a wildcard does not carry (docs/exfiltration.md):
    /// REFUSED, which no cache keeps and which says nothing about the name.
    fn exfil_refused(policy: &Policy, rule: &Rule, mark: crate::exfil::Mark) -> Self {
        Outcome {
            decision: Logged::Deny,
            rule: Some(rule.pattern.clone()),
            dynamic: rule.dynamic,
            exfil: Some(mark),
            ..Outcome::refused(ResponseCode::Refused, Some(policy))
        }
    }

    fn resolved(mut self, resolution: Resolution) -> Self {
        self.rcode = resolution.rcode;
        self.answers = resolution.answers;
        self.authority = resolution.authority;
        self.authoritative = resolution.authoritative;
        self.upstream_ms = resolution.upstream_time.map(|d| d.as_secs_f64() * 1e3);
        self
    }
}

/// The result of [`Handler::begin`].
pub enum Progress {
    Answered(Outcome),
    /// Allowed, but an upstream must be asked; the outcome is filled in so far.
    NeedsUpstream(Outcome, Arc<InForce>, Chosen),
}

/// The decision for a question bound upstream, made once in
/// [`Handler::begin`]: the firewall feeds under this rule.
pub struct Chosen {
    pub policy: Arc<Policy>,
    pub rule: Rule,
}

impl Handler {
    pub fn new(
        loaded: Loaded,
        resolver: Resolver,
        audit: AuditLog,
        alerts: Alerts,
        firewall: Option<Firewall>,
        negative_ttl: u32,
    ) -> Self {
        let soa = SOA::new(
            Name::from_ascii("allowdns.invalid.").expect("static name"),
            Name::from_ascii("hostmaster.allowdns.invalid.").expect("static name"),
            1,
            3600,
            600,
            86400,
            negative_ttl,
        );
        let now = SystemTime::now();
        let policies = loaded.policies.effective(&Default::default(), now);
        Self {
            loaded: RwLock::new(Arc::new(InForce {
                files: Arc::new(loaded),
                policies,
                generation: 0,
            })),
            grants: Mutex::new((Grants::default(), now)),
            expiry_changed: tokio::sync::Notify::new(),
            resolver,
            audit,
            alerts,
            firewall,
            firewall_alerts: Mutex::new((None, 0)),
            deny_soa: Record::from_rdata(Name::root(), negative_ttl, RData::SOA(soa)),
            exfil: Default::default(),
        }
    }

    /// The policies and zones in force.
    pub fn current(&self) -> Arc<InForce> {
        self.snapshot()
    }

    /// Swaps in a reloaded set atomically; queries already running keep the
    /// old one. If the firewall cannot follow, nothing changes.
    pub fn replace(&self, loaded: Loaded) -> Result<(), String> {
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(firewall) = &self.firewall {
            firewall.check(&loaded.policies)?;
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
            self.exfil
                .retain(|agent| files.policies.by_agent(agent).is_some());
            for dropped in grants
                .0
                .drop_agents(|a| files.policies.by_agent(a).is_some())
            {
                self.audit.event(grant_event("grant_dropped", &dropped));
                tracing::warn!(agent = %dropped.agent, pattern = %dropped.pattern, "grant dropped: its agent's policy was removed");
            }
            return Ok(());
        };
        grants.1 = last;
        Err(e)
    }

    /// Rebuilds what is in force now: drops expired entries and grants.
    pub fn refresh(&self) {
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.install(self.snapshot().files.clone(), &mut grants, false);
        self.forget_ended();
    }

    /// Rules that ended by themselves: their elements age out on their own
    /// timeouts (capped at the rule's end plus grace), so stop tracking them.
    /// A revoke withdraws instead, so it must not come through here first.
    fn forget_ended(&self) {
        if let Some(firewall) = &self.firewall {
            firewall.forget_ended(&self.snapshot().policies);
        }
    }

    /// Adds (or renews) a grant and puts it in force at once.
    pub fn grant(&self, grant: Grant) -> Result<(), String> {
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let files = self.snapshot().files.clone();
        if files.policies.by_agent(&grant.agent).is_none() {
            return Err(format!("no policy for agent '{}'", grant.agent));
        }
        // No exception without its audit line.
        if let Err(e) = self
            .audit
            .event_durable(grant_event("grant", &grant), AUDIT_CONFIRM)
        {
            // Should the "grant" line still land, this one says it never took effect.
            self.audit.event(grant_event("grant_refused", &grant));
            return Err(format!("grant refused: {e}"));
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
    pub fn revoke(&self, agent: &str, pattern: &str, uid: Option<u32>) -> Result<Grant, String> {
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let grant = grants
            .0
            .revoke_by(agent, pattern, uid)
            .ok_or_else(|| format!("agent '{agent}' has no grant for '{pattern}'"))?;
        self.audit.event(grant_event("grant_revoked", &grant));
        tracing::warn!(agent, pattern, granted_by = ?grant.uid, revoked_by = ?uid, "grant revoked");
        let _ = self.install(self.snapshot().files.clone(), &mut grants, false);
        self.withdraw(agent, pattern);
        Ok(grant)
    }

    /// Deletes the elements fed under an ended rule; a failure leaves them to
    /// their timeouts (at most the rule's old end plus grace), loudly.
    fn withdraw(&self, agent: &str, pattern: &str) {
        let Some(firewall) = &self.firewall else {
            return;
        };
        match firewall.withdraw(agent, pattern) {
            Ok(0) => {}
            Ok(n) => tracing::info!(agent, pattern, elements = n, "firewall elements withdrawn"),
            Err(e) => {
                tracing::error!(agent, pattern, error = %e, "[!] FIREWALL UPDATE FAILED: elements stay until their timeout")
            }
        }
    }

    pub fn grants(&self) -> Vec<Grant> {
        let grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        grants.0.active().to_vec()
    }

    /// When the next entry or grant expires that the set in force still
    /// holds: only file entries expiring after the last rebuild count, so an
    /// entry that already ended cannot wake the expiry task again and again.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        let grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
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
    ) -> Result<(), String> {
        let (grants, last) = state;
        let now = SystemTime::now();
        // Expired grants' rules are not live at `now`, so `effective` leaves
        // them out; they leave the list only once nothing can fail.
        let policies = files.policies.effective(&grants.rules(), now);
        if let Some(firewall) = &self.firewall
            && let Err(e) = firewall.sync_static(&policies)
        {
            tracing::error!(error = %e, "[!] FIREWALL UPDATE FAILED while installing policy addresses");
            if strict {
                if let Err(e) = firewall.sync_static(&self.snapshot().policies) {
                    tracing::error!(error = %e, "[!] FIREWALL UPDATE FAILED: cannot restore the previous policy addresses");
                }
                return Err(e);
            }
        }
        for expired in grants.prune(now) {
            self.audit.event(grant_event("grant_expired", &expired));
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
                self.audit.event(
                    serde_json::json!({
                        "ts": humantime::format_rfc3339_micros(now).to_string(),
                        "event": "entry_expired",
                        "agent": &*policy.agent,
                        "entry": entry,
                        "file": policy.source.display().to_string(),
                        "expires": expires,
                    })
                    .to_string(),
                );
            }
        }
        *last = now;
        // Installs are serialized by the grants lock, so this count is exact.
        let generation = self.snapshot().generation + 1;
        let new = Arc::new(InForce {
            files,
            policies,
            generation,
        });
        let old = std::mem::replace(
            &mut *self.loaded.write().unwrap_or_else(|p| p.into_inner()),
            new,
        );
        self.expiry_changed.notify_one();
        retire(old);
        Ok(())
    }

    fn snapshot(&self) -> Arc<InForce> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Everything that needs no waiting; the whole answer unless an upstream is needed.
    pub fn begin(&self, request: &Request) -> Progress {
        let src = request.src();
        let loaded = self.snapshot();
        // The client first: hosts no policy governs learn nothing, not even FORMERR.
        let Some(governing) = loaded.policies.for_client(src.ip()) else {
            return Progress::Answered(Outcome::refused(ResponseCode::Refused, None));
        };
        let agent = Some(&**governing);
        // Opcode, one question, EDNS version, class, zone transfers.
        if let Err(rcode) = crate::wire::check(request) {
            return Progress::Answered(Outcome::refused(rcode, agent));
        }
        let query = request.queries.queries()[0].original();
        let (name, qtype) = (query.name(), query.query_type());
        let (policy, rule, decision) = match decide_for(governing, name) {
            Decision::Refused => {
                return Progress::Answered(Outcome::refused(ResponseCode::Refused, None));
            }
            Decision::Deny { policy } => {
                self.alerts.denied(Denied {
                    ts: SystemTime::now(),
                    agent: policy.agent.clone(),
                    client: src,
                    qname: name.clone(),
                    qtype,
                });
                return Progress::Answered(Outcome {
                    rcode: ResponseCode::NXDomain,
                    answers: Vec::new(),
                    authority: vec![self.deny_soa.clone()],
                    authoritative: false,
                    decision: Logged::Deny,
                    agent: Some(policy.agent.clone()),
                    slot: policy.metrics_slot,
                    rule: None,
                    dynamic: false,
                    upstream_ms: None,
                    exfil: None,
                    stripped: Vec::new(),
                });
            }
            Decision::Allow { policy, rule } => (policy, rule, Logged::Allow),
            Decision::WouldDeny { policy, rule } => (policy, rule, Logged::WouldDeny),
        };
        // Wildcards answer address types unless their entry lists more.
        if decision == Logged::Allow && !crate::exfil::qtype_allowed(rule, qtype) {
            self.exfil
                .qtype_denied(&policy.agent, src, name, qtype, &rule.pattern);
            let refused = Outcome::exfil_refused(policy, rule, crate::exfil::Mark::Qtype);
            return Progress::Answered(refused);
        }
        let mut outcome = Outcome {
            rcode: ResponseCode::ServFail,
            answers: Vec::new(),
            authority: Vec::new(),
            authoritative: false,
            decision,
            agent: Some(policy.agent.clone()),
            slot: policy.metrics_slot,
            rule: (decision == Logged::Allow).then(|| rule.pattern.clone()),
            dynamic: rule.dynamic,
            upstream_ms: None,
            exfil: None,
            stripped: Vec::new(),
        };
        let agent = policy.metrics_slot;
        match self
            .resolver
            .resolve_now(&loaded.files.zones, name, qtype, agent)
        {
            Some(resolution) => Progress::Answered(self.fence(
                &loaded,
                policy,
                rule,
                name,
                outcome.resolved(resolution),
            )),
            None => {
                // The name is about to leave: under a wildcard, a new one is
                // charged to the agent's exfiltration budget.
                if decision == Logged::Allow
                    && crate::exfil::is_wildcard(&rule.pattern)
                    && let Some(key) = crate::policy::name::query_key(name)
                {
                    use crate::exfil::{Mark, Verdict};
                    match self
                        .exfil
                        .charge(&policy.agent, &policy.exfil, name, &key, &rule.pattern)
                    {
                        Verdict::Pass(soft) => outcome.exfil = soft.then_some(Mark::Soft),
                        Verdict::Deny => {
                            let refused = Outcome::exfil_refused(policy, rule, Mark::Budget);
                            return Progress::Answered(refused);
                        }
                    }
                }
                let chosen = Chosen {
                    policy: governing.clone(),
                    rule: rule.clone(),
                };
                Progress::NeedsUpstream(outcome, loaded, chosen)
            }
        }
    }

    /// Feeds the answer's addresses to the policy's firewall sets before the
    /// reply leaves. If the kernel does not take them, SERVFAIL: an address the
    /// firewall will not pass is never handed out.
    fn fence(
        &self,
        loaded: &InForce,
        policy: &Policy,
        rule: &Rule,
        name: &Name,
        mut outcome: Outcome,
    ) -> Outcome {
        // No client may cache an answer past the rule that allowed it.
        if let Some(left) = rule
            .expires
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
        {
            let left = u32::try_from(left.as_secs()).unwrap_or(u32::MAX);
            for record in &mut outcome.answers {
                record.ttl = record.ttl.min(left);
            }
        }
        // Special-purpose addresses never leave, unless the entry opts in;
        // nothing left to hand out is NODATA, not a failure.
        let (stripped, emptied) =
            crate::special::strip(&mut outcome.answers, &|ip| policy.opens(rule, ip));
        if emptied {
            outcome.rcode = ResponseCode::NoError;
            outcome.answers.clear();
            outcome.authority = vec![self.deny_soa.clone()];
        }
        outcome.stripped = stripped;
        let Some(firewall) = &self.firewall else {
            return outcome;
        };
        // A netlink round trip takes a few µs and is bounded by a 2 s receive
        // timeout. Moving it off runtime workers (block_in_place) spawned
        // replacement threads under bursts and cost far more than it saved.
        // A revoke or reload since `loaded` was taken: only what still allows
        // this name, no shorter, may feed (the old rule may have been withdrawn).
        let still_in_force = || {
            let now = self.snapshot();
            now.generation == loaded.generation
                || now
                    .policies
                    .by_agent(&policy.agent)
                    .is_some_and(|p| match decide_for(p, name) {
                        Decision::Allow { rule: r, .. } | Decision::WouldDeny { rule: r, .. } => {
                            r.pattern == rule.pattern
                                && r.expires
                                    .is_none_or(|end| rule.expires.is_some_and(|e| end >= e))
                        }
                        _ => false,
                    })
        };
        let fed = firewall.feed_checked(policy, rule, &mut outcome.answers, &still_in_force);
        if let Err(error) = fed {
            self.firewall_alert(&policy.agent, &error);
            outcome.rcode = ResponseCode::ServFail;
            outcome.answers.clear();
            outcome.authority.clear();
        }
        outcome
    }

    fn firewall_alert(&self, agent: &str, error: &FeedError) {
        let mut state = self
            .firewall_alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if state
            .0
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            state.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut state.1);
        state.0 = Some(now);
        tracing::error!(agent, %error, suppressed, "[!] FIREWALL UPDATE FAILED: answered SERVFAIL instead of handing out addresses");
    }

    /// Completes an allowed answer that needs the upstream; failure is SERVFAIL.
    pub async fn finish(
        &self,
        request: &Request,
        outcome: Outcome,
        loaded: &InForce,
        chosen: &Chosen,
    ) -> Outcome {
        let query = request.queries.queries()[0].original();
        let (policy, rule) = (&*chosen.policy, &chosen.rule);
        let resolving = self.resolver.resolve(
            &loaded.files.zones,
            query.name(),
            query.query_type(),
            policy.metrics_slot,
        );
        let result = match tokio::time::timeout(RESOLVE_DEADLINE, resolving).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError(format!(
                "no answer within {RESOLVE_DEADLINE:?}"
            ))),
        };
        match result {
            Ok(resolution) => self.fence(
                loaded,
                policy,
                rule,
                query.name(),
                outcome.resolved(resolution),
            ),
            Err(error) => {
                crate::upstream::warn_failure(&error, query.name(), query.query_type());
                outcome
            }
        }
    }

    /// Counts and writes the audit record for an answered request, after its
    /// reply is encoded; `started` is when the question arrived.
    pub fn audit(&self, request: &Request, outcome: Outcome, started: Instant) {
        let query = request.queries.queries().first().map(|q| q.original());
        METRICS.query(
            outcome.slot,
            outcome.decision,
            query.map(|q| q.query_type()),
            outcome.rcode,
            started.elapsed(),
        );
        if let (false, Some(agent), Some(q)) = (outcome.stripped.is_empty(), &outcome.agent, query)
        {
            self.alerts.stripped(Stripped {
                ts: SystemTime::now(),
                agent: agent.clone(),
                client: request.src(),
                qname: q.name().clone(),
                qtype: q.query_type(),
                rule: outcome.rule.clone(),
                addresses: outcome.stripped.clone(),
            });
        }
        self.audit.record(AuditRecord {
            ts: SystemTime::now(),
            client: request.src(),
            transport: Transport::of(request).as_str(),
            agent: outcome.agent,
            qname: query.map(|q| q.name().clone()),
            qtype: query.map(|q| q.query_type()),
            decision: outcome.decision,
            rule: outcome.rule,
            dynamic: outcome.dynamic,
            rcode: outcome.rcode,
            answers: outcome.answers,
            stripped: outcome.stripped,
            upstream_ms: outcome.upstream_ms,
            exfil: outcome.exfil.map(crate::exfil::Mark::as_str),
        });
    }

    /// A request that could not be parsed: FORMERR from its header, audited.
    /// A client no policy governs learns nothing, not even that: REFUSED.
    pub fn malformed(
        &self,
        raw: &[u8],
        src: SocketAddr,
        transport: Transport,
        started: Instant,
    ) -> Option<Vec<u8>> {
        let loaded = self.snapshot();
        let policy = loaded.policies.for_client(src.ip());
        let rcode = match policy {
            Some(_) => ResponseCode::FormErr,
            None => ResponseCode::Refused,
        };
        METRICS.query(
            policy.map_or(metrics::NO_AGENT, |p| p.metrics_slot),
            Logged::Refused,
            None,
            rcode,
            started.elapsed(),
        );
        self.audit.record(AuditRecord {
            ts: SystemTime::now(),
            client: src,
            transport: transport.as_str(),
            agent: policy.map(|p| p.agent.clone()),
            qname: None,
            qtype: None,
            decision: Logged::Refused,
            rule: None,
            dynamic: false,
            rcode,
            answers: Vec::new(),
            stripped: Vec::new(),
            upstream_ms: None,
            exfil: None,
        });
        header_only_reply(raw, rcode)
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
            .filter(|r| crate::firewall::withdrawable(before, r))
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
            // Queries hold a set for at most RESOLVE_DEADLINE.
            let until = Instant::now() + RESOLVE_DEADLINE + Duration::from_secs(1);
            while Arc::strong_count(&old) > 1 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "cannot spawn a thread to free the old policy set");
    }
}

/// The audit line for a grant's life events.
fn grant_event(event: &str, g: &Grant) -> String {
    serde_json::json!({
        "ts": humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        "event": event,
        "agent": &*g.agent,
        "pattern": &*g.pattern,
        "reason": &*g.reason,
        "granted_at": humantime::format_rfc3339_seconds(g.granted_at).to_string(),
        "expires": humantime::format_rfc3339_seconds(g.expires).to_string(),
        "uid": g.uid,
        "revoked_by": g.revoked_by,
    })
    .to_string()
}
