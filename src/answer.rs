//! The one entry for every transport: raw bytes and the client in, reply
//! bytes out, the audit record written on the way. UDP and TCP differ only
//! in how bytes arrive and leave.
//!
//! Most questions (denials, refusals, local zones, cache hits) are answered
//! inline by [`Answerer::answer`]. A question that needs the upstream comes
//! back as an [`Upstream`] for the caller to run on the runtime; those are
//! bounded in number, each bounded in time (`RESOLVE_DEADLINE`), and a
//! panic in either part costs one SERVFAIL, never a serving thread or task.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use hickory_server::proto::op::ResponseCode;
use hickory_server::server::Request;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::handler::{Chosen, Handler, Outcome, Progress};
use crate::metrics::METRICS;
use crate::state::InForce;
use crate::wire::{self, Transport};

/// Upstream-bound questions in flight at once, both transports together;
/// beyond this, SERVFAIL.
pub const MAX_PENDING_UPSTREAM: usize = 4096;

/// What to do with one message.
pub enum Answer {
    /// Send nothing: a message too short to answer, or a response (counted).
    Nothing,
    Reply(Vec<u8>),
    /// Allowed, and the upstream must be asked: run [`Upstream::finish`].
    Upstream(Box<Upstream>),
}

/// Answers messages for every transport.
pub struct Answerer {
    handler: Arc<Handler>,
    /// Permits for upstream-bound questions.
    pending: Arc<Semaphore>,
}

impl Answerer {
    pub fn new(handler: Arc<Handler>) -> Answerer {
        Answerer {
            handler,
            pending: Arc::new(Semaphore::new(MAX_PENDING_UPSTREAM)),
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
            wire::header_only_reply(raw, ResponseCode::ServFail).map_or(Answer::Nothing, Answer::Reply)
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
            METRICS.dropped(why);
            return Answer::Nothing;
        }
        let request = match wire::decode(raw, client, transport) {
            Ok(request) => request,
            Err(_) => {
                return self
                    .handler
                    .malformed(raw, client, transport, started)
                    .map_or(Answer::Nothing, Answer::Reply);
            }
        };
        let (outcome, loaded, chosen) = match self.handler.begin(&request) {
            Progress::Answered(outcome) => {
                return Answer::Reply(reply(&self.handler, &request, outcome, started));
            }
            Progress::NeedsUpstream(outcome, loaded, chosen) => (outcome, loaded, chosen),
        };
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            tracing::warn!(%client, "too many upstream queries in flight; answering SERVFAIL");
            return Answer::Reply(reply(&self.handler, &request, outcome, started));
        };
        Answer::Upstream(Box::new(Upstream {
            handler: self.handler.clone(),
            request,
            outcome,
            loaded,
            chosen,
            started,
            _permit: permit,
        }))
    }

    /// Waits, up to `within`, for upstream-bound answers still in flight
    /// (so they are sent and audited before shutdown).
    pub async fn drain(&self, within: Duration) {
        let all = MAX_PENDING_UPSTREAM as u32;
        let _ = tokio::time::timeout(within, self.pending.acquire_many(all)).await;
    }
}

/// An allowed question on its way to the upstream, with its decision.
pub struct Upstream {
    handler: Arc<Handler>,
    request: Request,
    /// Filled in so far; SERVFAIL until the upstream answers.
    outcome: Outcome,
    loaded: Arc<InForce>,
    chosen: Chosen,
    started: Instant,
    _permit: OwnedSemaphorePermit,
}

impl Upstream {
    /// Asks the upstream (within `RESOLVE_DEADLINE`) and returns the reply.
    pub async fn finish(self: Box<Self>) -> Vec<u8> {
        let Upstream {
            handler,
            request,
            outcome,
            loaded,
            chosen,
            started,
            _permit,
        } = *self;
        let fallback = outcome.clone();
        let finishing = handler.finish(&request, outcome, &loaded, &chosen);
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
