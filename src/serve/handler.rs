//! The request handler: one question's whole path, top to bottom.
//!
//! query → client's policy → decision → (local zone | cache | upstream)
//!       → audit (+ alert) → reply
//!
//! [`Handler::begin`] does everything that needs no waiting and, for most
//! queries (denials, refusals, local zones, cache hits), the whole answer.
//! Only a question that must go upstream continues in [`Handler::finish`].

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::SOA;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::Request;

use crate::fence::{FeedError, Firewall};
use crate::observe::alert::{Action, Alerts, Denied, Exfil, Slot, Stripped};
use crate::observe::attribution::{Admitted, Attribution, Attributor, Need, Proto, Why};
use crate::observe::audit::{AuditLog, AuditRecord, Decision};
use crate::observe::metrics::{self, METRICS};
use crate::observe::throttle::Throttle;
use crate::policy::name::QueryKey;
use crate::policy::{Policy, Rule};
use crate::serve::decide::{self, Ruling};
use crate::serve::exfil::{self, Budgets, Mark, Verdict};
use crate::serve::resolve::{Resolution, Resolver};
use crate::serve::service::Service;
use crate::serve::upstream::UpstreamError;
use crate::serve::wire::{Transport, header_only_reply};
use crate::state::{ANSWER_DEADLINE, InForce, State};
use crate::sync::lock;

pub struct Handler {
    state: Arc<State>,
    resolver: Arc<Resolver>,
    audit: AuditLog,
    alerts: Alerts,
    firewall: Option<Arc<Firewall>>,
    /// Rate limit for firewall failure alerts.
    firewall_alerts: Mutex<Throttle>,
    /// The SOA put in the authority section of denials (its minimum is the negative TTL).
    deny_soa: Record,
    exfil: Arc<Budgets>,
    attribution: Option<Arc<Attributor>>,
    negative_ttl: u32,
}

/// The reply to send, and what the audit record says about it.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub authoritative: bool,
    pub decision: Decision,
    pub agent: Option<Arc<str>>,
    /// The agent's metrics slot ([`metrics::NO_AGENT`] without a policy).
    pub slot: u16,
    pub rule: Option<Arc<str>>,
    pub dynamic: bool,
    pub upstream_ms: Option<f64>,
    /// Exfiltration mark for the audit record.
    pub exfil: Option<Mark>,
    /// Special-purpose addresses the fence took out (serve/strip.rs).
    pub stripped: Vec<IpAddr>,
    /// The process that asked: denials only.
    pub owner: Option<Attribution>,
    /// Set when the reply may be kept ready in the cache for the fast path.
    pub keep: Option<Keep>,
}

/// Where a reply built wholly from the cache may be kept ready to send.
#[derive(Clone, Debug)]
pub struct Keep {
    agent: crate::policy::name::PolicyId,
    key: QueryKey,
    qtype: RecordType,
    generation: u64,
}

/// What the fast path made of a query.
pub enum Hit {
    Reply(Vec<u8>),
    /// A denial whose asker is to be looked up before its reply leaves:
    /// [`Handler::finish_denial`], off the serving thread.
    Held(HeldDenial, Admitted),
    /// The full path's to answer, with the question's key if it was read.
    Miss(Option<ReadKey>),
}

fn denied_event(
    policy: &Policy,
    src: SocketAddr,
    name: &Name,
    qtype: RecordType,
    action: Action,
    owner: Option<Attribution>,
) -> Denied {
    Denied {
        ts: SystemTime::now(),
        agent: policy.agent.clone(),
        client: src,
        qname: name.clone(),
        qtype,
        action,
        owner,
    }
}

/// A denial answered but not yet sent, alerted or audited.
pub struct HeldDenial {
    policy: Arc<Policy>,
    src: SocketAddr,
    transport: Transport,
    name: Name,
    qtype: RecordType,
    /// Its place in the alert window, taken when it was decided.
    slot: Option<Slot>,
    started: Instant,
    reply: Vec<u8>,
}

impl Outcome {
    /// Nothing answered yet: `rcode` with empty sections, under `policy`'s agent.
    fn new(rcode: ResponseCode, decision: Decision, policy: Option<&Policy>) -> Self {
        Outcome {
            rcode,
            answers: Vec::new(),
            authority: Vec::new(),
            authoritative: false,
            decision,
            agent: policy.map(|p| p.agent.clone()),
            slot: policy.map_or(metrics::NO_AGENT, |p| p.metrics_slot),
            rule: None,
            dynamic: false,
            upstream_ms: None,
            stripped: Vec::new(),
            exfil: None,
            owner: None,
            keep: None,
        }
    }

    pub fn refused(rcode: ResponseCode, policy: Option<&Policy>) -> Self {
        Outcome::new(rcode, Decision::Refused, policy)
    }

    /// The audit record of this outcome, for `query` (if the request had
    /// one) from `client`.
    fn into_record(
        self,
        client: SocketAddr,
        transport: Transport,
        query: Option<(&Name, RecordType)>,
    ) -> AuditRecord {
        AuditRecord {
            ts: SystemTime::now(),
            client,
            transport: transport.as_str(),
            agent: self.agent,
            qname: query.map(|q| q.0.clone()),
            qtype: query.map(|q| q.1),
            decision: self.decision,
            rule: self.rule,
            dynamic: self.dynamic,
            rcode: self.rcode,
            answers: self.answers,
            stripped: self.stripped,
            upstream_ms: self.upstream_ms,
            exfil: self.exfil.map(Mark::as_str),
            owner: self.owner,
        }
    }

    /// A new name or query type a wildcard does not carry (docs/exfiltration.md):
    /// REFUSED, which no cache keeps and which says nothing about the name.
    fn exfil_refused(policy: &Policy, rule: &Rule, mark: Mark) -> Self {
        Outcome {
            decision: Decision::Deny,
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

/// The question's key as the fast path read it from the wire, so the full
/// path does not compute it again; `None` inside: a label no policy can spell.
pub struct ReadKey(pub Option<QueryKey>);

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
    /// The question's key, computed once in [`Handler::begin`] for the
    /// matcher, the local zones, the cache and the exfiltration budget.
    pub key: QueryKey,
    /// Whether `key` is one the matcher can judge ([`QueryKey::of`]); if
    /// not (learn mode), it is the escaped form, for lookups only.
    pub matchable: bool,
}

/// The SOA of a denial's authority section: its minimum (and TTL) is the
/// negative TTL. `fast::denial` writes the same bytes.
pub fn deny_soa(negative_ttl: u32) -> Record {
    let soa = SOA::new(
        Name::from_ascii("allowdns.invalid.").expect("static name"),
        Name::from_ascii("hostmaster.allowdns.invalid.").expect("static name"),
        1,
        3600,
        600,
        86400,
        negative_ttl,
    );
    Record::from_rdata(Name::root(), negative_ttl, RData::SOA(soa))
}

impl Handler {
    /// The query path over the service's parts.
    pub fn new(service: &Service, negative_ttl: u32) -> Self {
        Self {
            state: service.state.clone(),
            resolver: service.resolver.clone(),
            audit: service.audit.clone(),
            alerts: service.alerts.clone(),
            firewall: service.firewall.clone(),
            firewall_alerts: Mutex::new(Throttle::new(Duration::from_secs(1))),
            deny_soa: deny_soa(negative_ttl),
            negative_ttl,
            exfil: service.exfil.clone(),
            attribution: service.attribution.clone(),
        }
    }

    /// Everything that needs no waiting; the whole answer unless an upstream is needed.
    /// `known`: the question's key when the fast path read it already.
    pub fn begin(&self, request: &Request, known: Option<ReadKey>) -> Progress {
        let src = request.src();
        let in_force = self.state.snapshot();
        // The client first: hosts no policy governs learn nothing, not even FORMERR.
        let Some(governing) = in_force.policies.for_client(src.ip()) else {
            return Progress::Answered(Outcome::refused(ResponseCode::Refused, None));
        };
        let agent = Some(&**governing);
        // Opcode, one question, EDNS version, class, zone transfers.
        if let Err(rcode) = crate::serve::wire::check(request) {
            return Progress::Answered(Outcome::refused(rcode, agent));
        }
        let query = request.queries.queries()[0].original();
        let (name, qtype) = (query.name(), query.query_type());
        // The one spelling every step below compares the name in.
        let matched = known.map_or_else(|| QueryKey::of(name), |ReadKey(key)| key);
        // Monitor mode's lookups outside the allowlist are attributed too.
        let mut logged_owner = None;
        let (policy, rule, decision) = match decide::rule(governing, matched.as_ref()) {
            Ruling::Deny { policy } => {
                let transport = Transport::of(request);
                return Progress::Answered(self.deny(policy, src, transport, name, qtype));
            }
            Ruling::Allow { policy, rule } => (policy, rule, Decision::Allow),
            Ruling::WouldDeny { policy, rule } => {
                // Monitor mode alerts what learn mode only records.
                if policy.monitor {
                    let (slot, owner) = self.asker(Transport::of(request), policy, src, name);
                    logged_owner = owner.clone();
                    let event = denied_event(policy, src, name, qtype, Action::Logged, owner);
                    self.alerts.denied_in(slot, event);
                }
                (policy, rule, Decision::WouldDeny)
            }
        };
        // Wildcards answer address types unless their entry lists more.
        if decision == Decision::Allow && !exfil::qtype_allowed(rule, qtype) {
            self.exfil
                .qtype_denied(&policy.agent, src, name, qtype, &rule.pattern);
            let refused = Outcome::exfil_refused(policy, rule, Mark::Qtype);
            return Progress::Answered(refused);
        }
        let mut outcome = Outcome {
            rule: (decision == Decision::Allow).then(|| rule.pattern.clone()),
            dynamic: rule.dynamic,
            owner: logged_owner,
            ..Outcome::new(ResponseCode::ServFail, decision, Some(policy))
        };
        let matchable = matched.is_some();
        // Learn mode resolves names no policy can spell: looked up by their escaped form.
        let key = matched.unwrap_or_else(|| QueryKey::of_any(name));
        match self
            .resolver
            .resolve_now(&in_force.files.zones, &key, name, qtype, policy.id)
        {
            Some(resolution) => {
                let cached = resolution.cached;
                let mut outcome = self.fence(&in_force, policy, rule, outcome.resolved(resolution));
                // What the fast path can repeat as it is: an allowed answer
                // from the cache alone, nothing stripped, no expiry to clamp to.
                if cached
                    && decision == Decision::Allow
                    && rule.expires.is_none()
                    && outcome.stripped.is_empty()
                    && matches!(
                        outcome.rcode,
                        ResponseCode::NoError | ResponseCode::NXDomain
                    )
                {
                    outcome.keep = Some(Keep {
                        agent: policy.id,
                        key,
                        qtype,
                        generation: in_force.generation,
                    });
                }
                Progress::Answered(outcome)
            }
            None => {
                // The question is about to leave: under a wildcard, it is
                // charged to the agent's exfiltration budget. Allowed means
                // matched, so `key` is the matcher's.
                if decision == Decision::Allow && rule.facts.wildcard {
                    let types = crate::policy::qtypes::answered_types(rule);
                    match self.exfil.charge(
                        &policy.agent,
                        &policy.exfil,
                        name,
                        &key,
                        rule.facts,
                        types,
                    ) {
                        Verdict::Pass(mark) => outcome.exfil = mark,
                        Verdict::Deny => {
                            let refused = Outcome::exfil_refused(policy, rule, Mark::Budget);
                            return Progress::Answered(refused);
                        }
                    }
                }
                let chosen = Chosen {
                    policy: governing.clone(),
                    rule: rule.clone(),
                    key,
                    matchable,
                };
                Progress::NeedsUpstream(outcome, in_force, chosen)
            }
        }
    }

    /// The fast path, for cache hits and denials: the answer the full path
    /// kept ready for this exact query, if the same policy set still allows
    /// it, or the denial built from the query's bytes; with the same
    /// decision, alert, fence feeding and audit record as the full path.
    /// `Err`: take the full path, with the question's key when it was read.
    pub fn hit(&self, raw: &[u8], src: SocketAddr, transport: Transport, started: Instant) -> Hit {
        let Some(question) = crate::serve::fast::Question::read(raw) else {
            return Hit::Miss(None);
        };
        self.answer_fast(raw, &question, src, transport, started)
            .unwrap_or(Hit::Miss(Some(ReadKey(question.key))))
    }

    fn answer_fast(
        &self,
        raw: &[u8],
        question: &crate::serve::fast::Question,
        src: SocketAddr,
        transport: Transport,
        started: Instant,
    ) -> Option<Hit> {
        let key = question.key.as_ref()?;
        let loaded = self.state.snapshot();
        let governing = loaded.policies.for_client(src.ip())?;
        let tcp = transport == Transport::Tcp;
        let (policy, rule) = match decide::rule(governing, Some(key)) {
            Ruling::Allow { policy, rule } => (policy, rule),
            Ruling::Deny { policy } => {
                let agent = &policy.agent;
                let reply =
                    crate::serve::fast::denial(raw, question, tcp, self.negative_ttl, agent)?;
                let name = question.name(raw)?;
                let (slot, admitted) = self.admit(policy, src, &name);
                let held = HeldDenial {
                    policy: governing.clone(),
                    src,
                    transport,
                    name,
                    qtype: question.qtype,
                    slot,
                    started,
                    reply,
                };
                return Some(match admitted {
                    Ok(admitted) => Hit::Held(held, admitted),
                    Err(owner) => {
                        self.denied_now(&held, owner);
                        Hit::Reply(held.reply)
                    }
                });
            }
            _ => return None,
        };
        if rule.expires.is_some() || !crate::serve::exfil::qtype_allowed(rule, question.qtype) {
            return None;
        }
        let ready = self
            .resolver
            .cache()
            .ready(policy.id, key, question.qtype)?;
        if ready.generation != loaded.generation || !ready.answers(raw, tcp) {
            return None;
        }
        let (reply, mut answers) = ready.reply(raw, started)?;
        let name = question.name(raw)?;
        if let Some(firewall) = &self.firewall {
            // A failure is the full path's to answer (SERVFAIL) and alert.
            let fed = firewall.feed_decided_at(policy, rule, loaded.generation, &mut answers);
            if fed.is_err() {
                return None;
            }
        }
        METRICS.cache_hit();
        let outcome = Outcome {
            rcode: ready.rcode,
            answers,
            rule: Some(rule.pattern.clone()),
            dynamic: rule.dynamic,
            ..Outcome::new(ResponseCode::NoError, Decision::Allow, Some(policy))
        };
        let query = Some((&name, question.qtype));
        self.log(src, transport, query, outcome, started);
        Some(Hit::Reply(reply))
    }

    /// Keeps `reply`, sent for `raw`, ready for the fast path (see [`Keep`]).
    pub fn keep_ready(
        &self,
        keep: Keep,
        raw: &[u8],
        transport: Transport,
        reply: &[u8],
        answers: Vec<Record>,
        rcode: ResponseCode,
    ) {
        let tcp = transport == Transport::Tcp;
        if let Some(ready) =
            crate::serve::fast::Ready::new(raw, tcp, reply, answers, rcode, keep.generation)
        {
            self.resolver
                .cache()
                .keep_ready(keep.agent, &keep.key, keep.qtype, ready);
        }
    }

    /// A name not on the allowlist: the alert (with the asker, found
    /// before the reply leaves, as it may exit on NXDOMAIN), and NXDOMAIN.
    fn deny(
        &self,
        policy: &Policy,
        src: SocketAddr,
        transport: Transport,
        name: &Name,
        qtype: RecordType,
    ) -> Outcome {
        let (slot, owner) = self.asker(transport, policy, src, name);
        Outcome {
            authority: vec![self.deny_soa.clone()],
            ..self.alert_denied(policy, src, name, qtype, slot, owner)
        }
    }

    fn alert_denied(
        &self,
        policy: &Policy,
        src: SocketAddr,
        name: &Name,
        qtype: RecordType,
        slot: Option<Slot>,
        owner: Option<Attribution>,
    ) -> Outcome {
        let event = denied_event(policy, src, name, qtype, Action::Blocked, owner.clone());
        self.alerts.denied_in(slot, event);
        Outcome {
            owner,
            ..Outcome::new(ResponseCode::NXDomain, Decision::Deny, Some(policy))
        }
    }

    /// A held denial, finished: its asker looked up (the reply waits for
    /// it), alerted, audited; the reply to send. Without `admitted` (no
    /// room to wait for a lookup), its owner is `unknown (over budget)`.
    pub fn finish_denial(&self, held: HeldDenial, admitted: Option<Admitted>) -> Vec<u8> {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        // A bug costs this denial its owner, not its record or reply, and
        // not the thread that finishes it (the lookups thread or, with its
        // queue full, a serving thread).
        let done = catch_unwind(AssertUnwindSafe(|| {
            let owner = match admitted {
                Some(admitted) => self.look_up(admitted, held.transport, &held.policy, held.src),
                None => Some(Attribution::Unknown(Why::OverBudget)),
            };
            self.denied_now(&held, owner);
        }));
        if done.is_err() {
            let client = held.src;
            let failed = Some(Attribution::Unknown(Why::Failed));
            match catch_unwind(AssertUnwindSafe(|| self.denied_now(&held, failed))) {
                Ok(()) => {
                    tracing::error!(%client, "internal error while finishing a held denial; audited with its owner unknown")
                }
                Err(_) => {
                    tracing::error!(%client, "internal error while finishing a held denial; its NXDOMAIN went unaudited")
                }
            }
        }
        held.reply
    }

    fn denied_now(&self, held: &HeldDenial, owner: Option<Attribution>) {
        let HeldDenial {
            policy,
            src,
            transport,
            name,
            qtype,
            slot,
            started,
            reply: _,
        } = held;
        let outcome = self.alert_denied(policy, *src, name, *qtype, *slot, owner);
        self.log(*src, *transport, Some((name, *qtype)), outcome, *started);
    }

    /// Counts a denial in its alert window when it is decided, and whether
    /// the process behind it is to be found, when attribution is on: always
    /// for one alerted in full, within the rate for the others. `Err`: the
    /// owner to record without a lookup.
    fn admit(
        &self,
        policy: &Policy,
        src: SocketAddr,
        name: &Name,
    ) -> (Option<Slot>, Result<Admitted, Option<Attribution>>) {
        let Some(a) = &self.attribution else {
            return (None, Err(None));
        };
        let slot = self.alerts.reserve_denied(src.ip(), &policy.agent, name);
        let need = if slot.full() {
            Need::Alert
        } else {
            Need::Record
        };
        let admitted = a
            .admit(&policy.agent, need)
            .ok_or(Some(Attribution::Unknown(Why::RateLimited)));
        (Some(slot), admitted)
    }

    /// The process behind a lookup, found here and now (the full path's
    /// denials and monitor mode's), within [`Self::admit`]'s limits.
    fn asker(
        &self,
        transport: Transport,
        policy: &Policy,
        src: SocketAddr,
        name: &Name,
    ) -> (Option<Slot>, Option<Attribution>) {
        let (slot, admitted) = self.admit(policy, src, name);
        let owner = match admitted {
            Ok(admitted) => self.look_up(admitted, transport, policy, src),
            Err(owner) => owner,
        };
        (slot, owner)
    }

    fn look_up(
        &self,
        admitted: Admitted,
        transport: Transport,
        policy: &Policy,
        src: SocketAddr,
    ) -> Option<Attribution> {
        let a = self.attribution.as_ref()?;
        let netns = policy.firewall.as_ref().and_then(|f| f.netns.as_deref());
        let proto = match transport {
            Transport::Tcp => Proto::Tcp,
            Transport::Udp => Proto::Udp,
        };
        Some(a.lookup_client(netns, proto, src, admitted))
    }

    /// Feeds the answer's addresses to the policy's firewall sets before the
    /// reply leaves. If the kernel does not take them, SERVFAIL: an address the
    /// firewall will not pass is never handed out.
    fn fence(
        &self,
        in_force: &InForce,
        policy: &Policy,
        rule: &Rule,
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
        let (mut stripped, emptied) =
            crate::serve::strip::strip(&mut outcome.answers, &|ip| policy.opens(rule, ip));
        // The authority section carries only what a client needs (SOA, NS):
        // addresses there would reach the client unfed and unstripped.
        crate::serve::strip::keep_authority(&mut outcome.authority, &mut stripped);
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
        // A revoke or reload since `in_force` was taken may have withdrawn
        // `rule`: the fence tells, under its withdraw lock, from the generation.
        let fed = firewall.feed_decided_at(policy, rule, in_force.generation, &mut outcome.answers);
        if let Err(error) = fed {
            self.firewall_alert(&policy.agent, &error);
            outcome.rcode = ResponseCode::ServFail;
            outcome.answers.clear();
            outcome.authority.clear();
        }
        outcome
    }

    fn firewall_alert(&self, agent: &str, error: &FeedError) {
        let admitted = lock(&self.firewall_alerts).admit();
        if let Some(suppressed) = admitted {
            tracing::error!(agent, %error, suppressed, "[!] FIREWALL UPDATE FAILED: answered SERVFAIL instead of handing out addresses");
        }
    }

    /// Completes an allowed answer that needs the upstream; failure is SERVFAIL.
    pub async fn finish(
        &self,
        request: &Request,
        outcome: Outcome,
        in_force: &InForce,
        chosen: &Chosen,
    ) -> Outcome {
        let query = request.queries.queries()[0].original();
        let (policy, rule) = (&*chosen.policy, &chosen.rule);
        // Under a budgeted wildcard an answer is held at least the policy's
        // floor, so re-asking it carries nothing to the zone's operator.
        let floor =
            if outcome.decision == Decision::Allow && rule.facts.wildcard && policy.exfil.enabled {
                policy.exfil.min_ttl
            } else {
                0
            };
        let resolving = self.resolver.resolve(
            &in_force.files.zones,
            &chosen.key,
            query.name(),
            query.query_type(),
            policy.id,
            floor,
        );
        let result = match tokio::time::timeout(ANSWER_DEADLINE, resolving).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                name: query.name().clone(),
                qtype: query.query_type(),
                after: ANSWER_DEADLINE,
            }),
        };
        match result {
            Ok(resolution) => self.fence(in_force, policy, rule, outcome.resolved(resolution)),
            Err(error) => {
                crate::serve::upstream::warn_failure(
                    self.resolver.upstream(),
                    &error,
                    query.name(),
                    query.query_type(),
                );
                outcome
            }
        }
    }

    /// Counts and writes the audit record for an answered request, after its
    /// reply is encoded; `started` is when the question arrived.
    pub fn audit(&self, request: &Request, outcome: Outcome, started: Instant) {
        let query = request
            .queries
            .queries()
            .first()
            .map(|q| (q.original().name(), q.original().query_type()));
        self.log(
            request.src(),
            Transport::of(request),
            query,
            outcome,
            started,
        );
    }

    /// [`Handler::audit`] from the parts of a request it needs.
    fn log(
        &self,
        client: SocketAddr,
        transport: Transport,
        query: Option<(&Name, RecordType)>,
        outcome: Outcome,
        started: Instant,
    ) {
        METRICS.query(
            outcome.slot,
            outcome.decision,
            query.map(|q| q.1),
            outcome.rcode,
            started.elapsed(),
        );
        if let (Some(mark), Some(agent), Some((qname, qtype))) =
            (outcome.exfil, &outcome.agent, query)
        {
            METRICS.exfil(outcome.slot, mark.as_str());
            self.alerts.exfil(Exfil {
                ts: SystemTime::now(),
                agent,
                client,
                qname,
                qtype,
                mark: mark.as_str(),
            });
        }
        if let (false, Some(agent), Some((qname, qtype))) =
            (outcome.stripped.is_empty(), &outcome.agent, query)
        {
            METRICS.stripped(outcome.slot);
            self.alerts.stripped(Stripped {
                ts: SystemTime::now(),
                agent: agent.clone(),
                client,
                qname: qname.clone(),
                qtype,
                rule: outcome.rule.clone(),
                addresses: outcome.stripped.clone(),
            });
        }
        self.audit
            .record(outcome.into_record(client, transport, query));
    }

    /// A request answered from its header alone, with its metric and audit
    /// record: FORMERR to one that could not be parsed, SERVFAIL to one
    /// whose answer failed inside allowdns (a bug), so no query goes
    /// unrecorded. A client no policy governs learns nothing, not even
    /// that: REFUSED.
    pub fn unanswered(
        &self,
        raw: &[u8],
        src: SocketAddr,
        transport: Transport,
        started: Instant,
        governed: ResponseCode,
    ) -> Option<Vec<u8>> {
        let in_force = self.state.snapshot();
        let policy = in_force.policies.for_client(src.ip());
        let rcode = match policy {
            Some(_) => governed,
            None => ResponseCode::Refused,
        };
        let outcome = Outcome::refused(rcode, policy.map(|p| &**p));
        METRICS.query(
            outcome.slot,
            outcome.decision,
            None,
            rcode,
            started.elapsed(),
        );
        self.audit.record(outcome.into_record(src, transport, None));
        header_only_reply(raw, rcode)
    }
}
