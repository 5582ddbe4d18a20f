//! /proc: which process holds a socket inode, and who that process is.

use std::io;
use std::path::PathBuf;
use std::time::Instant;

use super::{Parent, clean};

/// Longest command line read (bytes); the rest is cut, and said so.
const MAX_CMDLINE: usize = 1024;
/// Parents followed at most.
pub(super) const MAX_PARENTS: usize = 8;

/// The outcome of a search for a socket's holder.
pub(super) enum Scan {
    Found {
        pid: u32,
        fd: u32,
    },
    /// Nobody visible holds it; `denied`: some processes could not be read.
    Nobody {
        denied: bool,
    },
    OutOfTime,
}

fn denied(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
}

/// The network namespace inode `/proc/PID/ns/net` names.
pub(super) fn netns_of(pid: u32) -> io::Result<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
    let text = link.to_string_lossy();
    text.strip_prefix("net:[")
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("ns/net: {text}")))
}

/// Whether `pid` still has `inode` open as `fd`: a cached answer is checked
/// by one readlink before it is believed.
pub(super) fn holds(pid: u32, fd: u32, inode: u64) -> bool {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .is_ok_and(|l| l.as_os_str().as_encoded_bytes() == socket_link(inode).as_bytes())
}

fn socket_link(inode: u64) -> String {
    format!("socket:[{inode}]")
}

/// Searches every process for an fd on `inode`, newest first (a lookup's
/// process is most often a fresh one); with `netns`, only processes in that
/// network namespace. Gives up at `deadline`.
pub(super) fn scan(inode: u64, netns: Option<u64>, deadline: Instant) -> Scan {
    let target = socket_link(inode);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Scan::Nobody { denied: true };
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable_by(|a, b| b.cmp(a));
    let mut was_denied = false;
    for pid in pids {
        if Instant::now() > deadline {
            return Scan::OutOfTime;
        }
        if let Some(ns) = netns {
            match netns_of(pid) {
                Ok(n) if n == ns => {}
                Ok(_) => continue,
                Err(e) => {
                    was_denied |= denied(&e);
                    continue;
                }
            }
        }
        let fds = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(fds) => fds,
            Err(e) => {
                was_denied |= denied(&e);
                continue;
            }
        };
        // Checked per fd too: one process may hold a million of them, and
        // a deep path makes each readlink slow.
        for entry in fds.flatten() {
            if Instant::now() > deadline {
                return Scan::OutOfTime;
            }
            let Ok(link) = std::fs::read_link(entry.path()) else {
                continue;
            };
            if link.as_os_str().as_encoded_bytes() == target.as_bytes() {
                let fd = entry.file_name().to_str().and_then(|f| f.parse().ok());
                if let Some(fd) = fd {
                    return Scan::Found { pid, fd };
                }
            }
        }
    }
    Scan::Nobody { denied: was_denied }
}

/// One process as /proc shows it.
#[derive(Clone, Debug)]
pub(super) struct Proc {
    pub host_pid: u32,
    /// The PID in the process's own PID namespace (NSpid's last).
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: String,
    pub cmdline: String,
}

pub(super) fn read(host_pid: u32) -> io::Result<Proc> {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status"))?;
    let (mut comm, mut ppid, mut pid) = (String::new(), 0, host_pid);
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("Name:") {
            comm = clean(v.trim());
        } else if let Some(v) = line.strip_prefix("PPid:") {
            ppid = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("NSpid:") {
            pid = v
                .split_whitespace()
                .last()
                .and_then(|p| p.parse().ok())
                .unwrap_or(host_pid);
        }
    }
    let exe = std::fs::read_link(format!("/proc/{host_pid}/exe"))
        .map(|p: PathBuf| clean(&p.to_string_lossy()))
        .unwrap_or_default();
    Ok(Proc {
        host_pid,
        pid,
        ppid,
        cmdline: cmdline(host_pid).unwrap_or_else(|_| format!("[{comm}]")),
        comm,
        exe,
    })
}

fn cmdline(pid: u32) -> io::Result<String> {
    use std::io::Read;
    let mut raw = Vec::with_capacity(256);
    std::fs::File::open(format!("/proc/{pid}/cmdline"))?
        .take(MAX_CMDLINE as u64 + 1)
        .read_to_end(&mut raw)?;
    let cut = raw.len() > MAX_CMDLINE;
    raw.truncate(MAX_CMDLINE);
    while raw.last() == Some(&0) {
        raw.pop();
    }
    if raw.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "empty cmdline"));
    }
    let text: Vec<u8> = raw
        .into_iter()
        .map(|b| if b == 0 { b' ' } else { b })
        .collect();
    let mut text = clean(&String::from_utf8_lossy(&text));
    if cut {
        text.push_str(" …");
    }
    Ok(text)
}

/// The chain of parents of `me`, nearest first, up to the PID namespace's
/// init or the first process of network namespace `netns`, at most
/// [`MAX_PARENTS`].
pub(super) fn parents(me: &Proc, netns: Option<u64>) -> Vec<Parent> {
    let mut out = Vec::new();
    let mut cur = me.clone();
    while out.len() < MAX_PARENTS && cur.pid != 1 && cur.ppid != 0 {
        if let Some(ns) = netns
            && netns_of(cur.ppid).ok() != Some(ns)
        {
            break;
        }
        let Ok(parent) = read(cur.ppid) else {
            break;
        };
        out.push(Parent {
            pid: parent.pid,
            host_pid: parent.host_pid,
            cmdline: parent.cmdline.clone(),
        });
        cur = parent;
    }
    out
}
