//! The one entry for every transport: raw bytes and the client in, reply
//! bytes out, the audit record written on the way. UDP and TCP differ only
//! in how bytes arrive and leave.
//!
//! Most questions (denials, refusals, local zones, cache hits) are answered
//! inline by [`Answerer::answer`]. A question that needs the upstream comes
//! back as an [`Upstream`] for the caller to run on the runtime; those are
//! bounded in number, each bounded in time (`ANSWER_DEADLINE`), and a
//! panic in either part costs one SERVFAIL, never a serving thread or task.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use hickory_server::proto::op::ResponseCode;
use hickory_server::server::Request;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::observe::attribution::Admitted;
use crate::policy::name::{PolicyId, PolicyIdMap};
use crate::serve::handler::{Chosen, Handler, HeldDenial, Hit, Outcome, Progress};
use crate::serve::wire::{self, Transport};
use crate::state::InForce;
use crate::sync::lock;

/// Upstream-bound questions in flight at once, both transports together;
/// beyond this, SERVFAIL.
pub const MAX_PENDING_UPSTREAM: usize = 4096;

/// Bounds on upstream-bound questions in flight (the `upstream:` section's
/// `max_pending` and `max_pending_per_agent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingLimits {
    /// All agents together: the ceiling.
    pub total: usize,
    /// One agent's share, so one agent flooding never-answered names cannot
    /// take every slot and starve the others.
    pub per_agent: usize,
}

impl Default for PendingLimits {
    fn default() -> Self {
        PendingLimits {
            total: MAX_PENDING_UPSTREAM,
            per_agent: MAX_PENDING_UPSTREAM / 8,
        }
    }
}

/// Upstream-bound questions in flight per agent (by its policy's id).
type Shares = Arc<Mutex<PolicyIdMap<usize>>>;

/// One agent's share of one pending slot; given back when dropped.
struct Share {
    shares: Shares,
    slot: PolicyId,
}

impl Share {
    fn take(shares: &Shares, slot: PolicyId, limit: usize) -> Option<Share> {
        let mut held = lock(shares);
        let n = held.entry(slot).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Share {
            shares: shares.clone(),
            slot,
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = lock(&self.shares);
        if let Some(n) = held.get_mut(&self.slot) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.slot);
            }
        }
    }
}

/// What to do with one message.
pub enum Answer {
    /// Send nothing: a message too short to answer, or a response (counted).
    Nothing,
    Reply(Vec<u8>),
    /// Allowed, and the upstream must be asked: run [`Outbound::finish`].
    Upstream(Box<Outbound>),
    /// Denied, and the asker is to be looked up before the reply leaves:
    /// run [`Held::finish`] where a wait holds up no other query.
    Held(Box<Held>),
}

/// A denial waiting on the lookup of its asker.
pub struct Held {
    handler: Arc<Handler>,
    denial: HeldDenial,
    admitted: Admitted,
}

impl Held {
    /// The lookup, the alert and the audit record; the reply to send.
    pub fn finish(self) -> Vec<u8> {
        self.handler.finish_denial(self.denial, Some(self.admitted))
    }

    /// The alert and the audit record without the lookup, its owner
    /// `unknown (over budget)`: for when there is no room to wait for it.
    pub fn finish_unlooked(self) -> Vec<u8> {
        self.handler.finish_denial(self.denial, None)
    }
}

/// Answers messages for every transport.
pub struct Answerer {
    handler: Arc<Handler>,
    /// Permits for upstream-bound questions.
    pending: Arc<Semaphore>,
    /// Each agent's permits in use.
    shares: Shares,
    limits: PendingLimits,
}

impl Answerer {
    pub fn new(handler: Arc<Handler>) -> Answerer {
        Answerer::with_limits(handler, PendingLimits::default())
    }

    pub fn with_limits(handler: Arc<Handler>, limits: PendingLimits) -> Answerer {
        let limits = PendingLimits {
            total: limits.total.clamp(1, Semaphore::MAX_PERMITS),
            per_agent: limits.per_agent.max(1),
        };
        Answerer {
            handler,
            pending: Arc::new(Semaphore::new(limits.total)),
            shares: Arc::default(),
            limits,
        }
    }

    /// Answers one message that arrived at `started`. A bug costs this one
    /// answer (SERVFAIL), not the caller.
    pub fn answer(
        &self,
        raw: &[u8],
        client: SocketAddr,
        transport: Transport,
        started: Instant,
    ) -> Answer {
        let answered = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.answer_unguarded(raw, client, transport, started)
        }));
        answered.unwrap_or_else(|_| {
            tracing::error!(%client, transport = transport.as_str(), "internal error while answering; sent SERVFAIL");
            // Audited too; if that fails as well, the bare header still goes out.
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.handler
                    .unanswered(raw, client, transport, started, ResponseCode::ServFail)
            }))
            .unwrap_or_else(|_| wire::header_only_reply(raw, ResponseCode::ServFail))
            .map_or(Answer::Nothing, Answer::Reply)
        })
    }

    fn answer_unguarded(
        &self,
        raw: &[u8],
        client: SocketAddr,
        transport: Transport,
        started: Instant,
    ) -> Answer {
        if let Err(why) = wire::screen(raw) {
            why.count();
            return Answer::Nothing;
        }
        let known = match self.handler.hit(raw, client, transport, started) {
            Hit::Reply(reply) => return Answer::Reply(reply),
            Hit::Held(denial, admitted) => {
                return Answer::Held(Box::new(Held {
                    handler: self.handler.clone(),
                    denial,
                    admitted,
                }));
            }
            Hit::Miss(known) => known,
        };
        let request = match wire::decode(raw, client, transport) {
            Ok(request) => request,
            Err(_) => {
                return self
                    .handler
                    .unanswered(raw, client, transport, started, ResponseCode::FormErr)
                    .map_or(Answer::Nothing, Answer::Reply);
            }
        };
        let (outcome, in_force, chosen) = match self.handler.begin(&request, known) {
            Progress::Answered(mut outcome) => {
                let Some(keep) = outcome.keep.take() else {
                    return Answer::Reply(reply(&self.handler, &request, outcome, started));
                };
                let (answers, rcode) = (outcome.answers.clone(), outcome.rcode);
                let bytes = reply(&self.handler, &request, outcome, started);
                self.handler
                    .keep_ready(keep, raw, transport, &bytes, answers, rcode);
                return Answer::Reply(bytes);
            }
            Progress::NeedsUpstream(outcome, in_force, chosen) => (outcome, in_force, chosen),
        };
        // The agent's own share first, so a flooding agent hits its share
        // and never reaches the ceiling the others need.
        let Some(share) = Share::take(&self.shares, chosen.policy.id, self.limits.per_agent) else {
            tracing::warn!(%client, "this agent has too many upstream queries in flight; answering SERVFAIL");
            return Answer::Reply(reply(&self.handler, &request, outcome, started));
        };
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            tracing::warn!(%client, "too many upstream queries in flight; answering SERVFAIL");
            return Answer::Reply(reply(&self.handler, &request, outcome, started));
        };
        Answer::Upstream(Box::new(Outbound {
            handler: self.handler.clone(),
            request,
            outcome,
            in_force,
            chosen,
            started,
            _permit: (permit, share),
        }))
    }

    /// Waits, up to `within`, for upstream-bound answers still in flight
    /// (so they are sent and audited before shutdown).
    pub async fn drain(&self, within: Duration) {
        let all = u32::try_from(self.limits.total).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(within, self.pending.acquire_many(all)).await;
    }
}

/// An allowed question on its way to the upstream, with its decision.
pub struct Outbound {
    handler: Arc<Handler>,
    request: Request,
    /// Filled in so far; SERVFAIL until the upstream answers.
    outcome: Outcome,
    in_force: Arc<InForce>,
    chosen: Chosen,
    started: Instant,
    _permit: (OwnedSemaphorePermit, Share),
}

impl Outbound {
    /// Asks the upstream (within `ANSWER_DEADLINE`) and returns the reply.
    pub async fn finish(self: Box<Self>) -> Vec<u8> {
        let Outbound {
            handler,
            request,
            outcome,
            in_force,
            chosen,
            started,
            _permit,
        } = *self;
        let fallback = outcome.clone();
        let finishing = handler.finish(&request, outcome, &in_force, &chosen);
        let outcome = match AssertUnwindSafe(finishing).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::error!(client = %request.src(), "internal error while resolving; sent SERVFAIL");
                fallback
            }
        };
        reply(&handler, &request, outcome, started)
    }
}

/// Encodes the reply, then audits (the record owns the outcome's records).
fn reply(handler: &Handler, request: &Request, outcome: Outcome, started: Instant) -> Vec<u8> {
    let bytes = wire::encode(request, &outcome);
    handler.audit(request, outcome, started);
    bytes
}
