//! The local control socket: `allowdns grant`, `revoke` and `status` talk to
//! the running resolver over a Unix socket, one JSON request and one JSON
//! reply per connection. The socket is mode 0600 from birth, and each peer's
//! credentials are checked too: only root and the daemon's own user may make
//! exceptions. The peer's uid goes into the audit log.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ops::peer_netns::{self, NetnsError};
use crate::policy::name::pattern_key;
use crate::serve::handler::Handler;
use crate::state::StateError;
use crate::state::grants::{Grant, MAX_GRANT};

/// Where `allowdns grant` and `status` look by default (systemd's RuntimeDirectory).
pub const DEFAULT_SOCKET: &str = "/run/allowdns/control.sock";
/// Requests are one short line; anything longer is not ours.
const MAX_REQUEST: u64 = 64 * 1024;
/// Requests executed at once; more get a "busy" reply.
const MAX_CONNECTIONS: usize = 16;
/// Connections waiting for their request; beyond this the oldest is dropped
/// (see [`crate::observe::idle`]), so idle clients cannot lock out `allowdns status`.
const MAX_WAITING: usize = 64;
/// One deadline over a whole exchange, reply included.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(5);
/// Of which reading the request may take this much, leaving time to reply.
const READ_DEADLINE: Duration = Duration::from_secs(4);
/// Limits on the free-text fields that reach the audit log and alerts.
const MAX_REASON_CHARS: usize = 512;
const MAX_AGENT_CHARS: usize = 255;

/// Why the server refused a request. The message is the reply's `error`
/// field, byte for byte what clients (and their scripts) read.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A peer that is neither root nor the daemon's user.
    #[error("permission denied: uid {0}")]
    NotAllowed(u32),
    #[error("permission denied: peer credentials unavailable")]
    NoCredentials,
    #[error("busy: {MAX_CONNECTIONS} requests in progress; try again")]
    Busy,
    #[error("no request within {} s", READ_DEADLINE.as_secs())]
    NoRequest,
    #[error("bad request: {0}")]
    BadRequest(#[source] serde_json::Error),
    #[error("internal error: {0}")]
    Internal(#[source] tokio::task::JoinError),
    /// A free-text field over its limit; `head` is its start, for recognition.
    #[error("{field} is {count} characters, more than {max} (starts {head:?})")]
    TooLong {
        field: &'static str,
        count: usize,
        max: usize,
        head: String,
    },
    /// A free-text field with a character that could forge or reorder log lines.
    #[error("{field} {value:?} contains the control character U+{code:04X}; use plain text")]
    ControlCharacter {
        field: &'static str,
        value: String,
        code: u32,
    },
    /// A name that is not a valid pattern; `why` names it already.
    #[error("{why}")]
    BadName { name: String, why: String },
    #[error("refusing an over-broad grant: {why}")]
    OverBroad { pattern: String, why: String },
    #[error("a grant needs a --reason; it goes into the audit log")]
    NoReason,
    /// `--for` out of range, in seconds as asked.
    #[error(
        "--for must be between 1 s and {} (longer exceptions belong in the policy file)",
        humantime::format_duration(MAX_GRANT)
    )]
    Duration { secs: u64 },
    /// The peer is not in allowdns's network namespace, or that cannot be told.
    #[error(transparent)]
    Netns(Arc<NetnsError>),
    /// The state refused the change (no such agent or grant, no audit line).
    #[error(transparent)]
    State(#[from] StateError),
}

/// Why `allowdns grant`, `revoke` or `status` got no answer, or a refusal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach allowdns at {}: {source} (is it running with a control socket, and are you its owner?)",
        path.display()
    )]
    Connect { path: PathBuf, source: io::Error },
    #[error("cannot encode the request: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("{}: no reply within 10 s", path.display())]
    Timeout { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: connection closed without a reply (allowdns busy?)", path.display())]
    Closed { path: PathBuf },
    #[error("{}: bad reply: {source}", path.display())]
    BadReply {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The server's refusal, as its reply's `error` says.
    #[error("{0}")]
    Refused(String),
}

/// The control socket file could not be set up; the path and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct SocketError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl SocketError {
    /// The OS error's kind (`AddrInUse` when another allowdns holds the socket).
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

impl From<SocketError> for crate::error::RuntimeError {
    fn from(e: SocketError) -> Self {
        crate::error::RuntimeError::Control {
            path: e.path,
            source: e.source,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Grant {
        agent: String,
        name: String,
        for_secs: u64,
        reason: String,
    },
    Revoke {
        agent: String,
        name: String,
    },
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set for `grant`: the canonical pattern and when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted: Option<GrantView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub policies: Vec<PolicyView>,
    pub grants: Vec<GrantView>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyView {
    pub agent: String,
    pub file: String,
    pub mode: Mode,
    pub clients: Vec<String>,
    /// Name rules in force (file rules still live, plus grants).
    pub rules: usize,
    pub addresses: usize,
    pub firewall: Option<String>,
    /// File entries with an `expires`, and when.
    pub expiring: Vec<(String, String)>,
}

/// A policy's mode, as `status` shows it: the policy file's own choice.
pub use crate::policy::file::Mode;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantView {
    pub agent: String,
    pub pattern: String,
    pub reason: String,
    pub granted_at: String,
    pub expires: String,
    pub uid: Option<u32>,
    /// Set on a revoke reply: who revoked it (`uid` is the granter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<u32>,
}

impl From<&Grant> for GrantView {
    fn from(g: &Grant) -> Self {
        GrantView {
            agent: g.agent.to_string(),
            pattern: g.pattern.to_string(),
            reason: g.reason.to_string(),
            granted_at: humantime::format_rfc3339_seconds(g.granted_at).to_string(),
            expires: humantime::format_rfc3339_seconds(g.expires).to_string(),
            uid: g.uid,
            revoked_by: g.revoked_by,
        }
    }
}

impl Reply {
    fn error(refusal: Refusal) -> Self {
        Reply {
            ok: false,
            error: Some(refusal.to_string()),
            granted: None,
            status: None,
        }
    }

    fn ok() -> Self {
        Reply {
            ok: true,
            error: None,
            granted: None,
            status: None,
        }
    }
}

/// A bound control socket, with the identity of the file it created so
/// shutdown removes only that file.
pub struct Bound {
    listener: UnixListener,
    /// (device, inode) of the socket file right after bind.
    file: (u64, u64),
    /// The socket file's owner: our effective uid, allowed besides root.
    owner: u32,
    /// Our network namespace; grants need a peer in it. Unknown fails closed.
    netns: Result<peer_netns::Own, Arc<NetnsError>>,
}

/// Binds the socket, owner-only from the start (umask 077, then chmod 0600).
/// A stale socket left by a crash is replaced; anything else at the path (a
/// regular file, a socket a running allowdns answers on, one we cannot
/// probe) is left alone and is an error naming the path.
pub fn bind(path: &Path) -> Result<Bound, SocketError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let with_path = |source: io::Error| SocketError {
        path: path.to_path_buf(),
        source,
    };
    let refuse = |kind: io::ErrorKind, why: String| with_path(io::Error::new(kind, why));
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(refuse(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket; refusing to remove it (move it away or choose another control socket path)".into(),
            ));
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(refuse(
                    io::ErrorKind::AddrInUse,
                    "another allowdns is listening on this control socket".into(),
                ));
            }
            // Nobody listens: a stale socket from a crash.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(with_path)?;
            }
            Err(e) => {
                return Err(refuse(
                    e.kind(),
                    format!("a socket is there and probing it failed ({e}); refusing to remove it"),
                ));
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(with_path(e)),
    }
    // umask is process-wide; a stricter one for a moment harms no other file.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(with_path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(with_path)?;
    let meta = std::fs::symlink_metadata(path).map_err(with_path)?;
    let netns = peer_netns::Own::of(std::os::fd::AsFd::as_fd(&listener))
        .map_err(|e| Arc::new(NetnsError::Own(e)));
    if let Err(e) = &netns {
        tracing::warn!("control socket: {e}; grant and revoke will be refused");
    }
    Ok(Bound {
        listener,
        file: (meta.dev(), meta.ino()),
        owner: meta.uid(),
        netns,
    })
}

/// Whether `path` is still the socket file `bind` created.
fn still_ours(path: &Path, file: (u64, u64)) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == file)
}

/// Answers control requests until `shutdown`, then removes the socket if
/// it is still ours.
pub async fn serve(
    bound: Bound,
    path: PathBuf,
    handler: Arc<Handler>,
    shutdown: CancellationToken,
) {
    let Bound {
        listener,
        file,
        owner,
        netns,
    } = bound;
    let netns = Arc::new(netns);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let waiting = crate::observe::idle::Waiting::new(MAX_WAITING);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // No slot is held while the request is awaited: idle peers only
        // wait in line, and the longest-waiting one makes room.
        let ticket = waiting.enter();
        let (handler, slots, netns) = (handler.clone(), slots.clone(), netns.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let exchange = answer(
                stream,
                &handler,
                owner,
                &netns,
                start + READ_DEADLINE,
                ticket,
                slots,
            );
            match tokio::time::timeout_at(start + EXCHANGE_DEADLINE, exchange).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "control connection failed"),
                Err(_) => tracing::debug!("control connection timed out"),
            }
        });
    }
    if still_ours(&path, file) {
        let _ = std::fs::remove_file(&path);
    } else {
        tracing::warn!(socket = %path.display(), "control socket path no longer holds our socket; left in place");
    }
}

/// Root and the daemon's own user may use the socket; nobody else, even if
/// the file's mode or a directory's were loosened.
fn peer_allowed(peer: Option<u32>, owner: u32) -> Result<u32, Refusal> {
    match peer {
        Some(uid) if uid == 0 || uid == owner => Ok(uid),
        Some(uid) => Err(Refusal::NotAllowed(uid)),
        None => Err(Refusal::NoCredentials),
    }
}

async fn answer(
    stream: UnixStream,
    handler: &Arc<Handler>,
    owner: u32,
    netns: &Result<peer_netns::Own, Arc<NetnsError>>,
    read_by: Instant,
    ticket: crate::observe::idle::Ticket,
    slots: Arc<Semaphore>,
) -> io::Result<()> {
    let peer = stream.peer_cred().ok();
    let same_netns = netns.as_ref().map_err(Clone::clone).and_then(|own| {
        peer_netns::check(std::os::fd::AsFd::as_fd(&stream), own).map_err(Arc::new)
    });
    let (read, mut write) = stream.into_split();
    // Read even a refused peer's request, so it gets the refusal rather
    // than a broken pipe; it is discarded unparsed.
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST);
    let read = tokio::select! {
        _ = ticket.evicted() => {
            tracing::debug!("control socket: idle connection dropped for a newer one");
            return Ok(());
        }
        read = tokio::time::timeout_at(read_by, reader.read_line(&mut line)) => read,
    };
    drop(ticket);
    let Ok(_slot) = slots.try_acquire_owned() else {
        let mut text =
            serde_json::to_string(&Reply::error(Refusal::Busy)).map_err(io::Error::other)?;
        text.push('\n');
        return write.write_all(text.as_bytes()).await;
    };
    let reply = match (peer_allowed(peer.as_ref().map(|c| c.uid()), owner), read) {
        (Err(refusal), _) => {
            tracing::warn!(
                peer_uid = ?peer.as_ref().map(|c| c.uid()),
                peer_pid = ?peer.as_ref().and_then(|c| c.pid()),
                "control socket: connection refused ({refusal})"
            );
            Reply::error(refusal)
        }
        (Ok(_), Err(_)) => Reply::error(Refusal::NoRequest),
        (Ok(_), Ok(Err(e))) => return Err(e),
        (Ok(uid), Ok(Ok(_))) => match serde_json::from_str::<Request>(&line) {
            // Only grant and revoke change the fence; status stays readable.
            Ok(Request::Grant { .. } | Request::Revoke { .. }) if same_netns.is_err() => {
                let refusal = Refusal::Netns(same_netns.unwrap_err());
                tracing::warn!(
                    peer_uid = uid,
                    peer_pid = ?peer.as_ref().and_then(|c| c.pid()),
                    "control socket: request refused ({refusal})"
                );
                Reply::error(refusal)
            }
            // Grants wait for their audit line and the firewall: off the runtime.
            Ok(request) => {
                let handler = handler.clone();
                tokio::task::spawn_blocking(move || execute(request, Some(uid), &handler))
                    .await
                    .unwrap_or_else(|e| Reply::error(Refusal::Internal(e)))
            }
            Err(e) => Reply::error(Refusal::BadRequest(e)),
        },
    };
    let mut text = serde_json::to_string(&reply).map_err(io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

fn execute(request: Request, uid: Option<u32>, handler: &Handler) -> Reply {
    match request {
        Request::Grant {
            agent,
            name,
            for_secs,
            reason,
        } => {
            let grant = match validate_grant(&agent, &name, for_secs, &reason, uid) {
                Ok(grant) => grant,
                Err(e) => return Reply::error(e),
            };
            let view = GrantView::from(&grant);
            match handler.state.grant(grant) {
                Ok(()) => Reply {
                    granted: Some(view),
                    ..Reply::ok()
                },
                Err(e) => Reply::error(e.into()),
            }
        }
        Request::Revoke { agent, name } => {
            if let Err(e) = validate_agent(&agent) {
                return Reply::error(e);
            }
            let pattern = match valid_name(&name) {
                Ok(p) => p,
                Err(e) => return Reply::error(e),
            };
            match handler.state.revoke(&agent, &pattern, uid) {
                Ok(grant) => Reply {
                    granted: Some(GrantView::from(&grant)),
                    ..Reply::ok()
                },
                Err(e) => Reply::error(e.into()),
            }
        }
        Request::Status => Reply {
            status: Some(status(handler)),
            ..Reply::ok()
        },
    }
}

fn validate_grant(
    agent: &str,
    name: &str,
    for_secs: u64,
    reason: &str,
    uid: Option<u32>,
) -> Result<Grant, Refusal> {
    validate_agent(agent)?;
    let pattern = valid_name(name)?;
    if let Some(why) = crate::policy::over_broad(&pattern) {
        return Err(Refusal::OverBroad {
            pattern: pattern.to_string(),
            why: why.to_string(),
        });
    }
    if reason.trim().is_empty() {
        return Err(Refusal::NoReason);
    }
    check_text("--reason", reason, MAX_REASON_CHARS)?;
    let duration = Duration::from_secs(for_secs);
    if duration.is_zero() || duration > MAX_GRANT {
        return Err(Refusal::Duration { secs: for_secs });
    }
    let now = SystemTime::now();
    Ok(Grant {
        agent: agent.into(),
        pattern: pattern.into(),
        reason: reason.trim().into(),
        granted_at: now,
        expires: now + duration,
        uid,
        revoked_by: None,
    })
}

fn validate_agent(agent: &str) -> Result<(), Refusal> {
    check_text("--agent", agent, MAX_AGENT_CHARS)
}

/// The canonical pattern for a name as given, or why it is not one.
fn valid_name(name: &str) -> Result<String, Refusal> {
    pattern_key(name).map_err(|e| Refusal::BadName {
        name: name.into(),
        why: e.to_string(),
    })
}

/// Free text bound for logs and alerts: bounded, and without characters
/// that could forge log lines or reorder what a reader sees.
fn check_text(field: &'static str, value: &str, max_chars: usize) -> Result<(), Refusal> {
    let count = value.chars().count();
    if count > max_chars {
        return Err(Refusal::TooLong {
            field,
            count,
            max: max_chars,
            head: value.chars().take(40).collect(),
        });
    }
    // Bidi overrides and isolates: they make a log line read differently from what it holds.
    let bidi = |c: char| matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if let Some(c) = value.chars().find(|&c| c.is_control() || bidi(c)) {
        return Err(Refusal::ControlCharacter {
            field,
            value: value.into(),
            code: u32::from(c),
        });
    }
    Ok(())
}

fn status(handler: &Handler) -> Status {
    let in_force = handler.state.snapshot();
    let policies = in_force
        .files
        .policies
        .policies
        .iter()
        .map(|file| {
            let effective = in_force.policies.by_agent(&file.agent).unwrap_or(file);
            let at = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
            // Entries still to end; those already ended are no longer in force.
            let now = SystemTime::now();
            let expiring = file
                .entries()
                .iter()
                .filter_map(|r| r.expires.map(|t| (r.pattern.to_string(), t)))
                .chain(
                    file.address_entries()
                        .iter()
                        .filter_map(|a| a.expires.map(|t| (a.net.to_string(), t))),
                )
                .filter(|(_, t)| *t > now)
                .map(|(entry, t)| (entry, at(t)))
                .collect();
            PolicyView {
                agent: file.agent.to_string(),
                file: file.source.display().to_string(),
                mode: if file.learn.is_some() {
                    Mode::Learn
                } else {
                    Mode::Enforce
                },
                clients: file.clients.iter().map(|c| c.to_string()).collect(),
                rules: effective.rules.iter().filter(|r| r.live()).count(),
                addresses: effective.addresses.len(),
                firewall: file.firewall.as_ref().map(|f| f.describe()),
                expiring,
            }
        })
        .collect();
    let grants = handler.state.grants().iter().map(GrantView::from).collect();
    Status { policies, grants }
}

/// The client side: sends one request and returns the reply.
pub async fn request(path: &Path, request: &Request) -> Result<Reply, ClientError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Connect {
            path: path.into(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request).map_err(ClientError::Encode)?;
    text.push('\n');
    // A refusal may arrive before the request is written: read it anyway.
    let written = write.write_all(text.as_bytes()).await;
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(16 << 20);
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .map_err(|_| ClientError::Timeout { path: path.into() })?;
    if line.is_empty() {
        let error = written.err().or(read.err());
        return Err(match error {
            Some(source) => ClientError::Io {
                path: path.into(),
                source,
            },
            None => ClientError::Closed { path: path.into() },
        });
    }
    serde_json::from_str(&line).map_err(|source| ClientError::BadReply {
        path: path.into(),
        source,
    })
}

/// [`request`], with the server's refusal as an error too.
pub async fn ask(path: &Path, request: &Request) -> Result<Reply, ClientError> {
    let reply = self::request(path, request).await?;
    match reply.error {
        Some(error) if !reply.ok => Err(ClientError::Refused(error)),
        _ => Ok(reply),
    }
}

/// `allowdns status` for humans.
pub fn render(status: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for p in &status.policies {
        let _ = writeln!(
            out,
            "policy {} ({}): mode {}, {} name rule(s), {} address rule(s), clients [{}]{}",
            p.agent,
            p.file,
            p.mode,
            p.rules,
            p.addresses,
            p.clients.join(", "),
            p.firewall
                .as_ref()
                .map(|f| format!(", feeds {f}"))
                .unwrap_or_default(),
        );
        for (entry, at) in &p.expiring {
            let _ = writeln!(out, "  entry {entry} expires {at}");
        }
    }
    if status.grants.is_empty() {
        out.push_str("no active grants\n");
    }
    for g in &status.grants {
        let _ = writeln!(
            out,
            "grant {} -> {} until {} (granted {}{}): {}",
            g.agent,
            g.pattern,
            g.expires,
            g.granted_at,
            g.uid.map(|u| format!(" by uid {u}")).unwrap_or_default(),
            g.reason,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("allowdns-control-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn bind_never_removes_what_is_not_a_stale_socket() {
        let dir = scratch("bind");
        let path = dir.join("c.sock");

        // A regular file stays, and the error names it.
        std::fs::write(&path, "precious").unwrap();
        let e = bind(&path).err().expect("a regular file is refused");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
        std::fs::remove_file(&path).unwrap();

        // Owner-only from the start, and a live socket is not stolen.
        let first = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = bind(&path).err().expect("a live socket is refused");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert!(still_ours(&path, first.file));

        // A stale socket (nobody listening) is replaced.
        drop(first);
        let second = bind(&path).unwrap();
        assert!(still_ours(&path, second.file));
        std::fs::remove_file(&path).unwrap();
        assert!(!still_ours(&path, second.file));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_root_and_the_owner_may_connect() {
        assert_eq!(peer_allowed(Some(0), 1000).unwrap(), 0);
        assert_eq!(peer_allowed(Some(1000), 1000).unwrap(), 1000);
        assert_eq!(
            peer_allowed(Some(1001), 1000).unwrap_err().to_string(),
            "permission denied: uid 1001"
        );
        assert!(peer_allowed(None, 0).is_err());
    }

    #[test]
    fn reasons_and_agents_are_plain_bounded_text() {
        let grant = |agent: &str, reason: &str| {
            validate_grant(agent, "a.example", 60, reason, Some(0)).map_err(|e| e.to_string())
        };
        assert!(grant("agent", "INC-42 vendor débogage").is_ok());
        let e = grant("agent", "ok\nforged line").unwrap_err();
        assert!(e.contains("--reason") && e.contains("U+000A"), "{e}");
        let e = grant("agent", "rtl \u{202e} trick").unwrap_err();
        assert!(e.contains("--reason") && e.contains("U+202E"), "{e}");
        let e = grant("agent", &"x".repeat(513)).unwrap_err();
        assert!(e.contains("--reason is 513 characters"), "{e}");
        assert!(grant("agent", &"é".repeat(512)).is_ok());
        assert!(
            grant("agent", " ")
                .unwrap_err()
                .contains("needs a --reason")
        );
        let e = grant("a\u{1b}[2J", "r").unwrap_err();
        assert!(e.contains("--agent") && e.contains("U+001B"), "{e}");
        let e = grant(&"a".repeat(256), "r").unwrap_err();
        assert!(e.contains("--agent is 256 characters"), "{e}");
        let e = grant("agent", "r");
        assert_eq!(e.unwrap().revoked_by, None);
        assert!(
            validate_grant("agent", "*.com.ar", 60, "r", None)
                .unwrap_err()
                .to_string()
                .contains("over-broad")
        );
    }

    #[test]
    fn refusals_read_as_the_wire_protocol_always_said() {
        let e = validate_grant("agent", "a.example", 0, "r", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--for must be between 1 s and {} (longer exceptions belong in the policy file)",
                humantime::format_duration(MAX_GRANT)
            )
        );
        let e = validate_grant("agent", "bad..name", 60, "r", None).unwrap_err();
        assert!(
            matches!(&e, Refusal::BadName { name, .. } if name == "bad..name"),
            "{e}"
        );
        assert_eq!(
            Refusal::Busy.to_string(),
            "busy: 16 requests in progress; try again"
        );
        assert_eq!(Refusal::NoRequest.to_string(), "no request within 4 s");
        let e = Refusal::from(StateError::NoGrant {
            agent: "a".into(),
            pattern: "x.example".into(),
        });
        assert_eq!(e.to_string(), "agent 'a' has no grant for 'x.example'");
        let reply = serde_json::to_string(&Reply::error(e)).unwrap();
        assert_eq!(
            reply,
            r#"{"ok":false,"error":"agent 'a' has no grant for 'x.example'"}"#
        );
    }

    #[test]
    fn client_errors_name_the_socket() {
        let path = PathBuf::from("/run/allowdns/control.sock");
        let e = ClientError::Connect {
            path: path.clone(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(
            e.to_string()
                .starts_with("cannot reach allowdns at /run/allowdns/control.sock: "),
            "{e}"
        );
        let e = ClientError::Closed { path };
        assert_eq!(
            e.to_string(),
            "/run/allowdns/control.sock: connection closed without a reply (allowdns busy?)"
        );
    }

    #[test]
    fn mode_is_serialised_as_before() {
        assert_eq!(serde_json::to_string(&Mode::Learn).unwrap(), r#""learn""#);
        assert_eq!(
            serde_json::to_string(&Mode::Enforce).unwrap(),
            r#""enforce""#
        );
        assert_eq!(Mode::Learn.to_string(), "learn");
    }
}
