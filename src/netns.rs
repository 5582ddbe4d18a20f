//! Entering a network namespace named by a path (`/run/netns/NAME`,
//! `/proc/PID/ns/net`). setns affects only the calling thread.

use std::fs::File;
use std::io;
use std::path::Path;

/// Moves this thread into `netns` for good. An unopenable path names itself.
pub fn enter(netns: &Path) -> io::Result<()> {
    let file = File::open(netns)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", netns.display())))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// `open` run inside `netns` (`None`: here) on a thread of its own, so the
/// caller stays where it is; what it opens (a socket) stays in `netns`.
pub fn within<T: Send>(
    netns: Option<&Path>,
    open: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let Some(path) = netns else {
        return open();
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(path)?;
            open()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
    })
}
