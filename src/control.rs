//! The local control socket: `allowdns grant`, `revoke` and `status` talk to
//! the running resolver over a Unix socket, one JSON request and one JSON
//! reply per connection. The socket is mode 0600, so only its owner (root
//! under systemd) can make exceptions; the peer's uid goes into the audit log.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::grants::{Grant, MAX_GRANT};
use crate::handler::Handler;
use crate::policy::name::pattern_key;

/// Where `allowdns grant` and `status` look by default (systemd's RuntimeDirectory).
pub const DEFAULT_SOCKET: &str = "/run/allowdns/control.sock";
/// Requests are one short line; anything longer is not ours.
const MAX_REQUEST: u64 = 64 * 1024;

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
    pub mode: String,
    pub clients: Vec<String>,
    /// Name rules in force (file rules still live, plus grants).
    pub rules: usize,
    pub addresses: usize,
    pub firewall: Option<String>,
    /// File entries with an `expires`, and when.
    pub expiring: Vec<(String, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantView {
    pub agent: String,
    pub pattern: String,
    pub reason: String,
    pub granted_at: String,
    pub expires: String,
    pub uid: Option<u32>,
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
        }
    }
}

impl Reply {
    fn error(message: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(message.into()),
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

/// Binds the socket with mode 0600, replacing a stale one left by a crash
/// (but never one a running allowdns still answers on).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(with_path(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another allowdns is listening on this control socket",
            )));
        }
        std::fs::remove_file(path).map_err(with_path)?;
    }
    let listener = UnixListener::bind(path).map_err(with_path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(with_path)?;
    Ok(listener)
}

/// Answers control requests until `shutdown`, then removes the socket.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    handler: Arc<Handler>,
    shutdown: CancellationToken,
) {
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
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &handler).await {
                tracing::debug!(error = %e, "control connection failed");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

async fn answer(stream: UnixStream, handler: &Handler) -> io::Result<()> {
    let uid = stream.peer_cred().ok().map(|c| c.uid());
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(read).take(MAX_REQUEST).read_line(&mut line),
    )
    .await;
    let reply = match read {
        Err(_) => Reply::error("no request within 5 s"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => execute(request, uid, handler),
            Err(e) => Reply::error(format!("bad request: {e}")),
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
            match handler.grant(grant) {
                Ok(()) => Reply {
                    granted: Some(view),
                    ..Reply::ok()
                },
                Err(e) => Reply::error(e),
            }
        }
        Request::Revoke { agent, name } => {
            let pattern = match pattern_key(&name) {
                Ok(p) => p,
                Err(e) => return Reply::error(e),
            };
            match handler.revoke(&agent, &pattern, uid) {
                Ok(grant) => Reply {
                    granted: Some(GrantView::from(&grant)),
                    ..Reply::ok()
                },
                Err(e) => Reply::error(e),
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
) -> Result<Grant, String> {
    let pattern = pattern_key(name)?;
    if let Some(why) = crate::policy::over_broad(&pattern) {
        return Err(format!("refusing an over-broad grant: {why}"));
    }
    if reason.trim().is_empty() {
        return Err("a grant needs a --reason; it goes into the audit log".into());
    }
    let duration = Duration::from_secs(for_secs);
    if duration.is_zero() || duration > MAX_GRANT {
        return Err(format!(
            "--for must be between 1 s and {} (longer exceptions belong in the policy file)",
            humantime::format_duration(MAX_GRANT)
        ));
    }
    let now = SystemTime::now();
    Ok(Grant {
        agent: agent.into(),
        pattern: pattern.into(),
        reason: reason.trim().into(),
        granted_at: now,
        expires: now + duration,
        uid,
    })
}

fn status(handler: &Handler) -> Status {
    let in_force = handler.current();
    let policies = in_force
        .files
        .policies
        .policies
        .iter()
        .map(|file| {
            let effective = in_force.policies.by_agent(&file.agent).unwrap_or(file);
            let at = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
            let expiring = file
                .rules
                .iter()
                .filter_map(|r| r.expires.map(|t| (r.pattern.to_string(), at(t))))
                .chain(
                    file.addresses
                        .iter()
                        .filter_map(|a| a.expires.map(|t| (a.net.to_string(), at(t)))),
                )
                .collect();
            PolicyView {
                agent: file.agent.to_string(),
                file: file.source.display().to_string(),
                mode: if file.learn.is_some() {
                    "learn"
                } else {
                    "enforce"
                }
                .into(),
                clients: file.clients.iter().map(|c| c.to_string()).collect(),
                rules: effective.rules.iter().filter(|r| r.live()).count(),
                addresses: effective.addresses.len(),
                firewall: file.firewall.as_ref().map(|f| f.describe()),
                expiring,
            }
        })
        .collect();
    let grants = handler.grants().iter().map(GrantView::from).collect();
    Status { policies, grants }
}

/// The client side: sends one request and returns the reply.
pub async fn request(path: &Path, request: &Request) -> Result<Reply, String> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        format!(
            "cannot reach allowdns at {}: {e} (is it running with a control socket, and are you its owner?)",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request).map_err(|e| e.to_string())?;
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(16 << 20);
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .map_err(|_| format!("{}: no reply within 10 s", path.display()))?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&line).map_err(|e| format!("{}: bad reply: {e}", path.display()))
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
