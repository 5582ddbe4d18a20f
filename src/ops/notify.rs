//! systemd's notify protocol (`Type=notify`): READY=1 once serving,
//! STOPPING=1 as shutdown starts, STATUS= lines, and WATCHDOG=1 pings when
//! `WatchdogSec=` is set, only while the serving threads are alive.
//! Without `$NOTIFY_SOCKET` (not under systemd) every call does nothing.

// Hand-written, not the `sd-notify` crate: its 0.5 connects to $NOTIFY_SOCKET as a path, so an abstract socket (`@name`) fails, which this supports.
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::serve::server::{Health, IDLE_CHECK};

/// Sends one state line to systemd, if it is listening.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        // An abstract socket (Linux).
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        }
        None => socket.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}

/// Half the watchdog interval systemd asked for (`$WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    // systemd names the process it watches; a child that inherited the
    // environment must not ping for it.
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Pings `WATCHDOG=1` every `every` until `shutdown`, but only while every
/// UDP serving thread has looped recently (this task running shows the
/// runtime is alive). A stalled thread withholds the pings, so systemd's
/// `WatchdogSec=` kills and restarts allowdns.
pub async fn watchdog(every: Duration, health: Health, shutdown: CancellationToken) {
    // Idle threads beat every IDLE_CHECK; allow a few missed turns.
    let within = every.max(4 * IDLE_CHECK);
    watch(every, within, &health, &shutdown, notify).await
}

async fn watch(
    every: Duration,
    within: Duration,
    health: &Health,
    shutdown: &CancellationToken,
    send: impl Fn(&str),
) {
    let mut stalled = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        match health.stalled(within) {
            None => {
                if stalled {
                    tracing::warn!("UDP serving threads respond again; watchdog pings resume");
                    send("STATUS=serving (UDP threads respond again)");
                    stalled = false;
                }
                send("WATCHDOG=1");
            }
            Some(thread) if !stalled => {
                tracing::error!(
                    thread = %format_args!("udp-{thread}"),
                    silent_for_more_than = ?within,
                    "a UDP serving thread is stuck or gone; withholding watchdog pings so systemd restarts allowdns"
                );
                send("STATUS=a UDP serving thread is unresponsive; watchdog pings withheld");
                stalled = true;
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn pings_stop_while_a_thread_is_silent_and_resume_after() {
        let health = Health::new(2);
        let sent = Arc::new(Mutex::new(Vec::<String>::new()));
        let shutdown = CancellationToken::new();
        let log = sent.clone();
        let (h, s) = (health.clone(), shutdown.clone());
        let task = tokio::spawn(async move {
            let send = move |m: &str| log.lock().unwrap().push(m.to_string());
            watch(
                Duration::from_millis(10),
                Duration::from_millis(100),
                &h,
                &s,
                send,
            )
            .await
        });
        let beat = |slots: &[usize]| slots.iter().for_each(|&i| health.beat(i));
        let pings = || {
            sent.lock()
                .unwrap()
                .iter()
                .filter(|m| *m == "WATCHDOG=1")
                .count()
        };
        for _ in 0..10 {
            beat(&[0, 1]);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(pings() >= 3, "{:?}", sent.lock().unwrap());
        // Thread 1 goes silent.
        for _ in 0..15 {
            beat(&[0]);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = pings();
        for _ in 0..10 {
            beat(&[0]);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(pings(), before, "pinged while a thread was stuck");
        let stalls = sent
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.contains("unresponsive"))
            .count();
        assert_eq!(stalls, 1, "reported once: {:?}", sent.lock().unwrap());
        for _ in 0..10 {
            beat(&[0, 1]);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(pings() > before, "pings did not resume");
        shutdown.cancel();
        task.await.unwrap();
    }
}
