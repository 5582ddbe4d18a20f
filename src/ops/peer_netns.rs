//! Which network namespace a control-socket peer is in.
//!
//! A Unix socket path is reachable from every network namespace that shares
//! the mount namespace, so a root agent inside a fenced namespace could
//! otherwise `allowdns grant` itself out. Exceptions are only made from
//! allowdns's own network namespace. Two facts are checked, neither a racy
//! read of `/proc/PID`:
//! - the connecting socket's namespace (`SO_NETNS_COOKIE`: a Unix stream
//!   connection is accepted into the connecting socket's namespace);
//! - the connecting process's namespace (`SO_PEERPIDFD`, then
//!   `PIDFD_GET_NET_NAMESPACE` on the pidfd). The kernel allows that ioctl
//!   only where ptrace would be allowed, so an unprivileged allowdns (the
//!   shipped unit) cannot open a root peer's namespace: then the socket's
//!   namespace alone decides.
//!
//! A kernel without these (Linux < 6.11 for the ioctl, < 6.5 for the pidfd)
//! fails closed: the caller refuses what needs the check.
//!
//! The syscalls no safe crate wraps are the two `unsafe` calls below.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::libc;
use nix::sys::socket::{getsockopt, sockopt};

/// The namespace a peer must share: allowdns's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Own {
    /// (device, inode) of `/proc/self/ns/net`.
    file: (u64, u64),
    /// The netns cookie of a socket made in it (the control listener).
    cookie: u64,
}

impl Own {
    /// Our namespace, read once at startup. `listener` must have been made in
    /// it (the thread group leader's; setns only ever runs on side threads).
    pub fn of(listener: BorrowedFd<'_>) -> io::Result<Own> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata("/proc/self/ns/net")?;
        Ok(Own {
            file: (meta.dev(), meta.ino()),
            cookie: netns_cookie(listener)?,
        })
    }
}

/// Why a peer's network namespace is not ours, or cannot be told. The
/// messages reach the control socket's clients verbatim.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The peer is in another namespace (a fenced agent, say).
    #[error(
        "refused: the caller is in another network namespace than allowdns \
         (grants and revokes are made from allowdns's own namespace, never from a fenced one)"
    )]
    Foreign,
    /// allowdns's own namespace could not be read at startup: every check fails closed.
    #[error("cannot tell allowdns's own network namespace: {0}")]
    Own(#[source] io::Error),
    /// A kernel facility the check needs (`what`: the option, and the Linux it needs) failed.
    #[error("cannot tell the peer's network namespace ({what}: {source})")]
    Peer {
        what: &'static str,
        source: io::Error,
    },
    /// The peer's namespace file could not be examined.
    #[error("{0}")]
    Stat(#[source] io::Error),
}

/// Ok when the peer of `stream` is in our network namespace; otherwise the
/// reason for refusing it.
pub fn check(stream: BorrowedFd<'_>, own: &Own) -> Result<(), NetnsError> {
    let cookie = netns_cookie(stream).map_err(|source| NetnsError::Peer {
        what: "SO_NETNS_COOKIE",
        source,
    })?;
    if cookie != own.cookie {
        return Err(NetnsError::Foreign);
    }
    let pidfd = getsockopt(&stream, sockopt::PeerPidfd).map_err(|e| NetnsError::Peer {
        what: "SO_PEERPIDFD needs Linux 6.5",
        // nix's own text (`ENOPROTOOPT: ...`), as the control reply always said.
        source: io::Error::other(e),
    })?;
    match pidfd_netns(pidfd.as_fd()) {
        Ok(ns) => {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::File::from(ns)
                .metadata()
                .map_err(NetnsError::Stat)?;
            if (meta.dev(), meta.ino()) != own.file {
                return Err(NetnsError::Foreign);
            }
            Ok(())
        }
        // Not ours to inspect (a root peer of an unprivileged allowdns): the
        // socket's namespace, checked above, decides.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => Ok(()),
        Err(source) => Err(NetnsError::Peer {
            what: "PIDFD_GET_NET_NAMESPACE needs Linux 6.11",
            source,
        }),
    }
}

fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `fd` is a live socket for the borrow; the kernel writes at most
    // `len` bytes into `cookie`, a u64 that `len` describes exactly.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// A new fd for the network namespace of the process behind `pidfd`.
fn pidfd_netns(pidfd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: this ioctl reads no memory (its argument must be 0, or the
    // kernel says EINVAL) and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(pidfd.as_raw_fd(), libc::PIDFD_GET_NET_NAMESPACE, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a non-negative return is a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn a_peer_in_our_namespace_passes() {
        let dir = std::env::temp_dir().join(format!("allowdns-peer-netns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let own = Own::of(listener.as_fd()).unwrap();
        let _client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(check(server.as_fd(), &own).is_ok());
        // Another namespace's identity is refused.
        let other = Own {
            cookie: own.cookie + 1,
            ..own
        };
        let e = check(server.as_fd(), &other).unwrap_err();
        assert!(matches!(e, NetnsError::Foreign), "{e}");
        assert!(e.to_string().contains("another network namespace"), "{e}");
        let other = Own {
            file: (own.file.0, own.file.1 + 1),
            ..own
        };
        let e = check(server.as_fd(), &other).unwrap_err();
        assert!(matches!(e, NetnsError::Foreign), "{e}");
        assert!(e.to_string().contains("another network namespace"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_check_names_the_kernel_facility() {
        let e = NetnsError::Peer {
            what: "SO_PEERPIDFD needs Linux 6.5",
            source: io::Error::from_raw_os_error(libc::ENOPROTOOPT),
        };
        let text = e.to_string();
        assert!(
            text.starts_with(
                "cannot tell the peer's network namespace (SO_PEERPIDFD needs Linux 6.5: "
            ),
            "{text}"
        );
    }
}
