//! Signal forwarding and reaping for the stages between `run` and CMD.
//!
//! A terminal's Ctrl-C reaches every process of the foreground group, CMD
//! included; only signals sent with kill() are forwarded, so CMD never gets
//! the same Ctrl-C twice.

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::low_level::siginfo::{Cause, Origin};

/// Forwarded down the chain to CMD.
pub const FORWARDED: [i32; 6] = [SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2];

pub type Signals = SignalsInfo<WithOrigin>;

/// Installs handlers (before any child exists, so none is missed). The
/// stages inside the kennel also reap (SIGCHLD); `run` itself keeps SIGHUP
/// for what it means to `serve`: reload the policy.
pub fn register(inside: bool) -> std::io::Result<Signals> {
    let mut wanted: Vec<i32> = FORWARDED
        .into_iter()
        .filter(|&s| inside || s != SIGHUP)
        .collect();
    if inside {
        wanted.push(SIGCHLD);
    }
    Signals::new(wanted)
}

/// Sends `origin`'s signal on to `to` when someone sent it (not the terminal).
pub fn forward(origin: &Origin, to: Pid) {
    if origin.signal == SIGCHLD || !matches!(origin.cause, Cause::Sent(_)) {
        return;
    }
    if let Ok(sig) = Signal::try_from(origin.signal) {
        let _ = kill(to, sig);
    }
}

/// Forwards signals to `child` until it exits; returns its status the way a
/// shell reports it (the code, or 128 + signal). With `reap_all` (PID 1),
/// reaps every orphan too.
pub fn forward_until_exit(signals: &mut Signals, child: Pid, reap_all: bool) -> i32 {
    loop {
        if let Some(code) = reap(child, reap_all) {
            return code;
        }
        for origin in signals.wait() {
            forward(&origin, child);
        }
    }
}

fn reap(child: Pid, reap_all: bool) -> Option<i32> {
    let target = if reap_all { Pid::from_raw(-1) } else { child };
    let mut status = None;
    loop {
        match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => status = Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                status = Some(128 + sig as i32);
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return status,
            Ok(_) => {}
        }
    }
}
