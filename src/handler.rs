//! The request handler: one question's whole path, top to bottom.
//!
//! query → client's policy → decision → (local zone | cache | upstream)
//!       → audit (+ alert) → reply

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::SOA;
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::alert::{Alerts, Denied};
use crate::audit::{AuditLog, AuditRecord, Decision as Logged, display_name};
use crate::decide::{Decision, decide};
use crate::policy::PolicySet;
use crate::resolve::Resolver;
use crate::zones::Zones;

/// Largest UDP payload advertised back (the DNS flag day 2020 value).
const MAX_UDP_PAYLOAD: u16 = 1232;

/// What a reload replaces as one unit, so no query sees half of a change.
pub struct Loaded {
    pub policies: PolicySet,
    pub zones: Zones,
}

pub struct Handler {
    /// The current policies and zones, swapped whole on reload.
    pub loaded: RwLock<Arc<Loaded>>,
    pub resolver: Resolver,
    pub audit: AuditLog,
    pub alerts: Alerts,
    /// The SOA put in the authority section of denials (its minimum is the negative TTL).
    deny_soa: Record,
}

impl Handler {
    pub fn new(
        loaded: Loaded,
        resolver: Resolver,
        audit: AuditLog,
        alerts: Alerts,
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
        Self {
            loaded: RwLock::new(Arc::new(loaded)),
            resolver,
            audit,
            alerts,
            deny_soa: Record::from_rdata(Name::root(), negative_ttl, RData::SOA(soa)),
        }
    }

    fn snapshot(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The reply to send, and what the audit record says about it.
struct Outcome {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authority: Vec<Record>,
    authoritative: bool,
    decision: Logged,
    agent: Option<Arc<str>>,
    rule: Option<Arc<str>>,
    dynamic: bool,
    upstream_ms: Option<f64>,
}

impl Outcome {
    fn refused(rcode: ResponseCode, agent: Option<Arc<str>>) -> Self {
        Outcome {
            rcode,
            answers: Vec::new(),
            authority: Vec::new(),
            authoritative: false,
            decision: Logged::Refused,
            agent,
            rule: None,
            dynamic: false,
            upstream_ms: None,
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let src = request.src();
        let query = request.queries.queries().first().map(|q| q.original());
        let (qname, qtype) = match query {
            Some(q) => (display_name(q.name()), q.query_type().to_string()),
            None => (String::new(), String::new()),
        };

        let edns_version = request.edns.as_ref().map(Edns::version);
        let outcome = if request.metadata.op_code != OpCode::Query {
            Outcome::refused(ResponseCode::NotImp, None)
        } else if request.queries.len() != 1 {
            Outcome::refused(ResponseCode::FormErr, None)
        } else if edns_version.is_some_and(|v| v > 0) {
            Outcome::refused(ResponseCode::BADVERS, None)
        } else {
            let query = query.expect("exactly one query");
            self.answer(
                src,
                query.name(),
                query.query_type(),
                query.query_class(),
                &qname,
                &qtype,
            )
            .await
        };

        self.audit.record(AuditRecord {
            ts: SystemTime::now(),
            client: src,
            transport: match request.protocol() {
                Protocol::Tcp => "tcp",
                _ => "udp",
            },
            agent: outcome.agent.clone(),
            qname,
            qtype,
            decision: outcome.decision,
            rule: outcome.rule.clone(),
            dynamic: outcome.dynamic,
            rcode: outcome.rcode,
            answers: outcome.answers.clone(),
            upstream_ms: outcome.upstream_ms,
        });

        send(request, response_handle, &outcome).await
    }
}

impl Handler {
    async fn answer(
        &self,
        src: SocketAddr,
        name: &Name,
        qtype: RecordType,
        qclass: DNSClass,
        qname: &str,
        qtype_text: &str,
    ) -> Outcome {
        let loaded = self.snapshot();
        let (policy, rule) = match decide(&loaded.policies, src.ip(), name) {
            Decision::Refused => return Outcome::refused(ResponseCode::Refused, None),
            Decision::Deny { policy } => {
                self.alerts.denied(Denied {
                    ts: SystemTime::now(),
                    agent: policy.agent.clone(),
                    client: src,
                    qname: qname.to_string(),
                    qtype: qtype_text.to_string(),
                });
                return Outcome {
                    rcode: ResponseCode::NXDomain,
                    answers: Vec::new(),
                    authority: vec![self.deny_soa.clone()],
                    authoritative: false,
                    decision: Logged::Deny,
                    agent: Some(policy.agent.clone()),
                    rule: None,
                    dynamic: false,
                    upstream_ms: None,
                };
            }
            Decision::Allow { policy, rule } => (policy, rule),
        };
        let agent = Some(policy.agent.clone());
        // Zone transfers and other classes are not lookups an agent needs.
        if qclass != DNSClass::IN || matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Outcome::refused(ResponseCode::Refused, agent);
        }
        let mut outcome = Outcome {
            rcode: ResponseCode::ServFail,
            answers: Vec::new(),
            authority: Vec::new(),
            authoritative: false,
            decision: Logged::Allow,
            agent,
            rule: Some(rule.pattern.clone()),
            dynamic: rule.dynamic,
            upstream_ms: None,
        };
        match self.resolver.resolve(&loaded.zones, name, qtype).await {
            Ok(resolution) => {
                outcome.rcode = resolution.rcode;
                outcome.answers = resolution.answers;
                outcome.authority = resolution.authority;
                outcome.authoritative = resolution.authoritative;
                outcome.upstream_ms = resolution.upstream_time.map(|d| d.as_secs_f64() * 1e3);
            }
            Err(error) => {
                tracing::warn!(%error, qname, qtype = qtype_text, "upstream failed; answering SERVFAIL");
            }
        }
        outcome
    }
}

async fn send<R: ResponseHandler>(
    request: &Request,
    mut handle: R,
    outcome: &Outcome,
) -> ResponseInfo {
    let response_edns = request.edns.as_ref().map(|req| {
        let mut edns = Edns::new();
        edns.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
        edns.set_version(0);
        edns
    });
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = outcome.rcode;
    metadata.recursion_available = true;
    metadata.authoritative = outcome.authoritative;
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if let Some(edns) = &response_edns {
        builder.edns(edns);
    }
    let response = builder.build(
        metadata,
        outcome.answers.iter(),
        outcome.authority.iter(),
        std::iter::empty(),
        std::iter::empty(),
    );
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, client = %request.src(), "failed to send response");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}
