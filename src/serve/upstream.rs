//! Where allowed names are resolved when no local zone holds them: configured
//! forwarders, or a recursor walking down from root hints. Both sit behind
//! [`Upstream::query`], which answers one question with one [`Step`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::{Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, Record, RecordType};
use hickory_resolver::recursor::{Recursor, RecursorError, RecursorOptions};

use crate::observe::throttle::Throttle;
use crate::policy::zones::Step;
use crate::serve::forward::Forwarder;
use crate::sync::lock;

/// Why an allowed name could not be resolved. The client gets SERVFAIL.
/// Each carries the question asked. `Clone`: one merged upstream question
/// hands its result to every waiter, so hickory's errors are kept as text.
#[derive(Clone, Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no upstream configured (--upstream none) for {name} {qtype}")]
    NoUpstream { name: Name, qtype: RecordType },
    #[error("forwarder, asked {name} {qtype}: {reason}")]
    Forwarder {
        name: Name,
        qtype: RecordType,
        reason: String,
    },
    #[error("recursor, asked {name} {qtype}: {reason}")]
    Recursor {
        name: Name,
        qtype: RecordType,
        reason: String,
    },
    #[error("no answer for {name} {qtype} within {after:?}")]
    Timeout {
        name: Name,
        qtype: RecordType,
        after: Duration,
    },
    /// The task asking the upstream ended without an answer (a bug).
    #[error("upstream task for {name} {qtype}: {reason}")]
    Task {
        name: Name,
        qtype: RecordType,
        reason: String,
    },
}

/// Why the upstream could not be set up; each names what it was given.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{}: cannot read root hints: {reason}", path.display())]
    ReadHints { path: PathBuf, reason: String },
    #[error("{}: root hints do not parse: {source}", path.display())]
    ParseHints {
        path: PathBuf,
        source: hickory_resolver::proto::serialize::txt::ParseError,
    },
    #[error("{}: root hints hold no A/AAAA records", path.display())]
    NoRoots { path: PathBuf },
    #[error("recursor setup from {}: {source}", path.display())]
    Recursor {
        path: PathBuf,
        source: RecursorError,
    },
}

/// Start-up reports setup errors as diagnostics, which take text.
impl From<SetupError> for String {
    fn from(e: SetupError) -> String {
        e.to_string()
    }
}

pub enum Upstream {
    /// Forward to configured servers (UDP, TCP on truncation).
    Forward(Forwarder, Vec<SocketAddr>),
    /// Iterate from root hints (the file).
    Recursive(Box<Recursor<TokioRuntimeProvider>>, PathBuf),
    /// Local zones only: anything else is SERVFAIL.
    None,
}

impl Upstream {
    pub fn forward(servers: &[SocketAddr], timeout: Duration) -> Result<Self, SetupError> {
        Ok(Upstream::Forward(
            Forwarder::new(servers, timeout),
            servers.to_vec(),
        ))
    }

    /// `allow_private_servers` lets the recursor query loopback and private
    /// addresses (a private root for tests or an internal DNS tree); by
    /// default those are refused as a guard against rebinding tricks.
    pub fn recursive(hints: &Path, allow_private_servers: bool) -> Result<Self, SetupError> {
        let path = || hints.to_path_buf();
        let text = crate::input::read_text(hints).map_err(|e| SetupError::ReadHints {
            path: path(),
            reason: e.to_string(),
        })?;
        let (_, records) = hickory_resolver::proto::serialize::txt::Parser::new(
            text,
            Some(hints.to_path_buf()),
            Some(Name::root()),
        )
        .parse()
        .map_err(|source| SetupError::ParseHints {
            path: path(),
            source,
        })?;
        let roots: Vec<IpAddr> = records
            .values()
            .flat_map(|rrset| rrset.records_without_rrsigs())
            .filter_map(|r| r.data.ip_addr())
            .collect();
        if roots.is_empty() {
            return Err(SetupError::NoRoots { path: path() });
        }
        let mut options = RecursorOptions::default();
        if allow_private_servers {
            options.deny_server = Vec::new();
        }
        let recursor = Recursor::with_options(&roots, options, TokioRuntimeProvider::default())
            .map_err(|source| SetupError::Recursor {
                path: path(),
                source,
            })?;
        Ok(Upstream::Recursive(Box::new(recursor), path()))
    }

    /// Asks the question once. NXDOMAIN and NODATA are answers, not errors.
    pub async fn query(&self, name: &Name, qtype: RecordType) -> Result<Step, UpstreamError> {
        let mut fqdn = name.clone();
        fqdn.set_fqdn(true);
        let query = Query::query(fqdn, qtype);
        let name = || name.clone();
        match self {
            Upstream::None => Err(UpstreamError::NoUpstream {
                name: name(),
                qtype,
            }),
            Upstream::Forward(forwarder, _) => match forwarder.ask(&query).await {
                Ok(message) => Ok(step_of(message)),
                Err(reason) => Err(UpstreamError::Forwarder {
                    name: name(),
                    qtype,
                    reason,
                }),
            },
            Upstream::Recursive(recursor, _) => {
                match recursor.resolve(query, Instant::now(), false).await {
                    Ok(message) => Ok(Step {
                        rcode: message.metadata.response_code,
                        answers: message.answers,
                        authority: message.authorities,
                    }),
                    Err(RecursorError::Negative(data)) => Ok(Step {
                        rcode: if data.is_nx_domain() {
                            ResponseCode::NXDomain
                        } else {
                            ResponseCode::NoError
                        },
                        answers: Vec::new(),
                        authority: negative_authority(
                            data.soa.map(|s| s.into_record_of_rdata()),
                            data.authorities.as_deref(),
                        ),
                    }),
                    Err(e) => Err(UpstreamError::Recursor {
                        name: name(),
                        qtype,
                        reason: e.to_string(),
                    }),
                }
            }
        }
    }
}

/// How long the start-up probe waits for each server.
const PROBE_WITHIN: Duration = Duration::from_secs(2);

impl Upstream {
    /// Asks each forwarder (or the recursor) for the root's NS once, and
    /// warns, naming it, about any that does not answer within
    /// [`PROBE_WITHIN`]. Any answer counts, NXDOMAIN or REFUSED too: it is
    /// there. Never blocks start-up: run in the background.
    pub async fn probe(self: Arc<Self>) {
        match &*self {
            Upstream::None => {}
            Upstream::Forward(forwarder, servers) => {
                let each = servers.iter().map(|&server| async move {
                    let started = Instant::now();
                    let question = Query::query(Name::root(), RecordType::NS);
                    // Any answer counts, an error rcode too: the server is there.
                    let asked = forwarder.ask_one(server, &question);
                    let result = match tokio::time::timeout(PROBE_WITHIN, asked).await {
                        Ok(Ok(_)) => Ok(started.elapsed()),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(format!("no answer within {} s", PROBE_WITHIN.as_secs())),
                    };
                    report_probe(&format!("forwarder {server}"), result);
                });
                futures_util::future::join_all(each).await;
            }
            Upstream::Recursive(..) => {
                let result = self.probe_once().await;
                report_probe(&self.to_string(), result);
            }
        }
    }

    async fn probe_once(&self) -> Result<Duration, String> {
        let started = Instant::now();
        let asked = async {
            self.query(&Name::root(), RecordType::NS)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(PROBE_WITHIN, asked).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {} s", PROBE_WITHIN.as_secs())),
        }
    }
}

fn report_probe(what: &str, result: Result<Duration, String>) {
    match result {
        Ok(took) => {
            tracing::info!("upstream {what} answered the start-up probe (. NS) in {took:?}")
        }
        Err(reason) => tracing::warn!(
            "upstream {what} did not answer the start-up probe (. NS): {reason}. Allowed names \
             that no local zone holds will get SERVFAIL until it answers; check that it is \
             reachable from here, or choose another with --upstream"
        ),
    }
}

/// Names the upstream in warnings: the servers, or the root hints file.
impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::None => f.write_str("none"),
            Upstream::Forward(_, servers) => {
                let list: Vec<String> = servers.iter().map(ToString::to_string).collect();
                write!(f, "forwarder {}", list.join(", "))
            }
            Upstream::Recursive(_, hints) => {
                write!(f, "recursor from root hints {}", hints.display())
            }
        }
    }
}

/// Upstream failures on stderr: a dead forwarder fails every query, so the
/// first goes out at once, then at most one per interval, with how many were
/// suppressed since the last (`allowdns_upstream_errors_total` counts each).
const WARN_EVERY: Duration = Duration::from_secs(10);
static FAILURES: std::sync::Mutex<Throttle> = std::sync::Mutex::new(Throttle::new(WARN_EVERY));

pub fn warn_failure(upstream: &Upstream, error: &UpstreamError, qname: &Name, qtype: RecordType) {
    let admitted = lock(&FAILURES).admit();
    if let Some(suppressed) = admitted {
        tracing::warn!(%error, %qname, %qtype, suppressed, "upstream {upstream} failed; answering SERVFAIL (at most one such line per {} s)", WARN_EVERY.as_secs());
    }
}

/// A forwarder's answer as one hop. A negative one carries its SOA first.
fn step_of(message: Message) -> Step {
    let Message {
        metadata,
        answers,
        authorities,
        ..
    } = message;
    let authority = if answers.is_empty() {
        let soa = authorities
            .iter()
            .find(|r| r.record_type() == RecordType::SOA)
            .cloned();
        negative_authority(soa, Some(&authorities))
    } else {
        authorities
    };
    Step {
        rcode: metadata.response_code,
        answers,
        authority,
    }
}

/// The SOA first, then other authority records, without repeating the SOA.
fn negative_authority(soa: Option<Record>, authorities: Option<&[Record]>) -> Vec<Record> {
    let mut out: Vec<Record> = soa.into_iter().collect();
    for r in authorities.unwrap_or_default() {
        if r.record_type() == RecordType::SOA && !out.is_empty() {
            continue;
        }
        out.push(r.clone());
    }
    out
}
