//! The file descriptors CMD inherits: 0-2, and 3..3+N with `--preserve-fds N`.
//! Any other one open across `allowdns run`'s exec (a host file, a socket
//! the caller left open) would be a way to host files around the mounts.
//!
//! Closing a descriptor by number is the one thing here no safe crate wraps.
#![allow(unsafe_code)]

use nix::libc;

/// Closes every descriptor from `3 + preserve` up. Called first thing in
/// init, before it opens anything of its own.
pub fn close_inherited(preserve: u32) -> std::io::Result<()> {
    let first = 3 + i64::from(preserve);
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd: &i32| i64::from(fd) >= first)
        .collect();
    // The directory's own descriptor is in the list and already closed: EBADF, ignored.
    for fd in open {
        // SAFETY: nothing in this process owns these descriptors: they were
        // inherited across exec, and init has not opened any of its own yet.
        unsafe {
            libc::close(fd);
        }
    }
    Ok(())
}
