//! The control socket's server side: binding it owner-only, accepting,
//! checking each peer's uid and network namespace, and dropping idle
//! clients so they cannot lock out `allowdns status`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::handle::execute;
use super::{Refusal, Reply, Request, SocketError};
use crate::ops::peer_netns::{self, NetnsError};
use crate::state::State;

/// Requests are one short line; anything longer is not ours.
const MAX_REQUEST: u64 = 64 * 1024;
/// Requests executed at once; more get a "busy" reply.
pub(super) const MAX_CONNECTIONS: usize = 16;
/// Connections waiting for their request; beyond this the oldest is dropped
/// (see [`crate::observe::idle`]), so idle clients cannot lock out `allowdns status`.
const MAX_WAITING: usize = 64;
/// One deadline over a whole exchange, reply included.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(5);
/// Of which reading the request may take this much, leaving time to reply.
pub(super) const READ_DEADLINE: Duration = Duration::from_secs(4);

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
pub async fn serve(bound: Bound, path: PathBuf, state: Arc<State>, shutdown: CancellationToken) {
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
        let (state, slots, netns) = (state.clone(), slots.clone(), netns.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let exchange = answer(
                stream,
                &state,
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
    state: &Arc<State>,
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
                let state = state.clone();
                tokio::task::spawn_blocking(move || execute(request, Some(uid), &state))
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
}
