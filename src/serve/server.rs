//! Sockets: binding them (before anything else can fail late) and serving
//! DNS on them until the shutdown token fires.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{SyncSender, TrySendError};

use crate::observe::metrics::METRICS;
use crate::serve::answer::{Answer, Answerer, Held};
use crate::serve::handler::Handler;
use crate::serve::tcp::TcpLimits;
use crate::serve::wire::Transport;
use crate::sync::lock;

/// Bound sockets, one UDP and one TCP per listen address.
pub struct Listeners {
    /// Blocking sockets: UDP is served by plain threads, see [`run`].
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: Vec<TcpListener>,
    /// Heartbeats of the UDP threads [`run`] will start.
    health: Health,
    /// Which sockets the service manager passed, when it passed any.
    origin: Option<Origin>,
}

/// Heartbeats of the UDP serving threads, for the systemd watchdog: each
/// thread stamps its slot every loop turn (at least every [`IDLE_CHECK`]).
#[derive(Clone)]
pub struct Health {
    epoch: Instant,
    /// Milliseconds since `epoch` of each thread's last turn.
    beats: Arc<[AtomicU64]>,
}

impl Health {
    pub(crate) fn new(threads: usize) -> Health {
        Health {
            epoch: Instant::now(),
            beats: (0..threads).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn beat(&self, thread: usize) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.beats[thread].store(now, Relaxed);
    }

    /// The first UDP thread (by index) silent for longer than `within`.
    pub fn stalled(&self, within: Duration) -> Option<usize> {
        let now = self.epoch.elapsed().as_millis() as u64;
        let within = within.as_millis() as u64;
        self.beats
            .iter()
            .position(|b| now.saturating_sub(b.load(Relaxed)) > within)
    }
}

impl Listeners {
    /// Binds UDP and TCP on every address. Port 0 picks one free port for both.
    pub fn bind(addrs: &[SocketAddr]) -> Result<Listeners, crate::error::RuntimeError> {
        Self::open(addrs, Passed::none())
    }

    /// The sockets for `addrs`: those the service manager passed, and the
    /// rest bound here. A passed socket must be at a listen address (what
    /// `nft-ruleset` lets the agent reach); one missing is bound here, with a
    /// warning that it is not held across restarts.
    pub fn open(
        addrs: &[SocketAddr],
        mut passed: Passed,
    ) -> Result<Listeners, crate::error::RuntimeError> {
        let (mut passed_udp, mut passed_tcp) = passed.take(addrs)?;
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut held = Vec::new();
        let mut bound = Vec::new();
        let bind_err = |addr| move |source| crate::error::RuntimeError::Bind { addr, source };
        for &addr in addrs {
            let u = take_for(&mut passed_udp, addr);
            let t = take_for(&mut passed_tcp, addr);
            let (u_held, t_held) = (u.is_some(), t.is_some());
            if passed.count > 0 && (u.is_none() || t.is_none()) {
                let missing = match (&u, &t) {
                    (None, None) => "UDP and TCP",
                    (None, Some(_)) => "UDP",
                    _ => "TCP",
                };
                tracing::warn!(
                    "listen address {addr}: the service manager passed no {missing} socket for it; \
                     bound here instead, so it is not held while allowdns restarts"
                );
            }
            let (u, t) = match (u, t) {
                (Some(u), Some(t)) => (u, t),
                (None, None) => crate::serve::dad::bind_when_ready(addr, || bind_pair(addr))
                    .map_err(bind_err(addr))?,
                (Some(u), None) => {
                    let at = u.local_addr().map_err(bind_err(addr))?;
                    let t = bind_tcp(at).map_err(bind_err(at))?;
                    (u, t)
                }
                (None, Some(t)) => {
                    let at = t.local_addr().map_err(bind_err(addr))?;
                    let u = bind_udp(at).map_err(bind_err(at))?;
                    (u, t)
                }
            };
            for (proto, at, from_manager) in [
                ("udp", u.local_addr(), u_held),
                ("tcp", t.local_addr(), t_held),
            ] {
                let Ok(at) = at else { continue };
                match from_manager {
                    true => held.push(format!("{proto}://{at}")),
                    false => bound.push(format!("{proto}://{at}")),
                }
            }
            udp.push(u);
            tcp.push(t);
        }
        let health = Health::new(udp.len() * udp_threads());
        let origin = (passed.count > 0).then_some(Origin { held, bound });
        Ok(Listeners {
            udp,
            tcp,
            health,
            origin,
        })
    }

    /// The UDP threads' heartbeats (shared with the threads once [`run`] starts).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The bound addresses, as `proto://addr`, then which came from the
    /// service manager when any did.
    pub fn describe(&self) -> Vec<String> {
        let udp = self
            .udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .map(|a| format!("udp://{a}"));
        let tcp = self
            .tcp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .map(|a| format!("tcp://{a}"));
        let mut words: Vec<String> = udp.chain(tcp).collect();
        if let Some(origin) = &self.origin {
            let list = |v: &[String]| match v {
                [] => "none".to_string(),
                v => v.join(" "),
            };
            words.push(format!(
                "(passed by the service manager: {}; bound here: {})",
                list(&origin.held),
                list(&origin.bound)
            ));
        }
        words
    }
}

/// Which listeners the service manager passed, for the "listening on" line.
struct Origin {
    held: Vec<String>,
    bound: Vec<String>,
}

/// Sockets passed by the service manager (systemd socket activation,
/// `LISTEN_FDS`), which it keeps open while allowdns restarts, so the
/// kernel queues queries meanwhile.
pub struct Passed {
    fds: listenfd::ListenFd,
    count: usize,
}

/// A passed socket allowdns cannot serve, or that `listen:` does not name.
#[derive(Debug, thiserror::Error)]
pub enum PassedError {
    #[error(
        "the service manager passed fd {fd}, which is neither a UDP socket nor a listening TCP socket"
    )]
    NotDns { fd: usize },
    #[error(
        "the service manager passed a socket on {proto}://{addr}, which is not a `listen:` address \
         ({listen}); make the socket unit's Listen lines and `listen:` agree"
    )]
    NotListed {
        proto: &'static str,
        addr: SocketAddr,
        listen: String,
    },
}

impl Passed {
    /// Takes the passed sockets from the environment, unsetting
    /// `LISTEN_FDS` and `LISTEN_PID`: call it before other threads exist.
    pub fn from_env() -> Passed {
        let fds = listenfd::ListenFd::from_env();
        let count = fds.len();
        Passed { fds, count }
    }

    pub fn none() -> Passed {
        Passed {
            fds: listenfd::ListenFd::empty(),
            count: 0,
        }
    }

    /// The passed sockets, ready to serve, each checked against `listen`.
    fn take(&mut self, listen: &[SocketAddr]) -> Result<Taken, crate::error::RuntimeError> {
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let listed = |proto, addr: SocketAddr| {
            if listen.iter().any(|l| matches(*l, addr)) {
                return Ok(());
            }
            let listen = listen.iter().map(ToString::to_string).collect::<Vec<_>>();
            Err(crate::error::RuntimeError::subsystem(
                PassedError::NotListed {
                    proto,
                    addr,
                    listen: listen.join(", "),
                },
            ))
        };
        let local = |r: io::Result<SocketAddr>, fd| {
            r.map_err(|_| crate::error::RuntimeError::subsystem(PassedError::NotDns { fd }))
        };
        for i in 0..self.count {
            let fd = i + 3;
            if let Ok(Some(socket)) = self.fds.take_udp_socket(i) {
                let addr = local(socket.local_addr(), fd)?;
                listed("udp", addr)?;
                let socket = Socket::from(socket);
                grow_receive_buffer(&socket);
                let socket: std::net::UdpSocket = socket.into();
                socket
                    .set_nonblocking(false)
                    .and_then(|()| socket.set_read_timeout(Some(IDLE_CHECK)))
                    .map_err(|source| crate::error::RuntimeError::Bind { addr, source })?;
                udp.push((addr, socket));
                continue;
            }
            let listener = match self.fds.take_tcp_listener(i) {
                Ok(Some(l)) if socket2::SockRef::from(&l).is_listener().unwrap_or(false) => l,
                _ => {
                    return Err(crate::error::RuntimeError::subsystem(PassedError::NotDns {
                        fd,
                    }));
                }
            };
            let addr = local(listener.local_addr(), fd)?;
            listed("tcp", addr)?;
            let listener = listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(listener))
                .map_err(|source| crate::error::RuntimeError::Bind { addr, source })?;
            tcp.push((addr, listener));
        }
        Ok((udp, tcp))
    }
}

/// Passed UDP and TCP sockets, by the address each is bound to.
type Taken = (
    Vec<(SocketAddr, std::net::UdpSocket)>,
    Vec<(SocketAddr, TcpListener)>,
);

/// Whether a socket on `addr` serves the listen address `listen` (port 0
/// there: any port).
fn matches(listen: SocketAddr, addr: SocketAddr) -> bool {
    listen.ip() == addr.ip() && (listen.port() == 0 || listen.port() == addr.port())
}

/// Takes the passed socket for `listen`, if any.
fn take_for<T>(passed: &mut Vec<(SocketAddr, T)>, listen: SocketAddr) -> Option<T> {
    let at = passed.iter().position(|(a, _)| matches(listen, *a))?;
    Some(passed.remove(at).1)
}

fn bind_pair(addr: SocketAddr) -> io::Result<(std::net::UdpSocket, TcpListener)> {
    // With port 0 the kernel picks the UDP port; TCP may find it taken, so retry.
    let attempts = if addr.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = bind_udp(addr)?;
        let bound = udp.local_addr()?;
        match bind_tcp(bound) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let udp = socket(addr, Type::DGRAM, Protocol::UDP)?;
    grow_receive_buffer(&udp);
    udp.bind(&addr.into())?;
    udp.set_nonblocking(false)?;
    // Lets UDP threads notice shutdown while idle.
    udp.set_read_timeout(Some(IDLE_CHECK))?;
    Ok(udp.into())
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let tcp = socket(addr, Type::STREAM, Protocol::TCP)?;
    tcp.set_reuse_address(true)?;
    tcp.bind(&addr.into())?;
    tcp.listen(1024)?;
    TcpListener::from_std(tcp.into())
}

fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        // Keep v4 and v6 listeners independent, as listed.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// The UDP receive buffer asked for: room for a burst of a few thousand
/// queries while serving threads wait for a CPU (a reload compiling on a
/// 2-core machine), instead of the kernel dropping them.
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// Sets [`UDP_RECEIVE_BUFFER`]: forced past `net.core.rmem_max` where allowed
/// (CAP_NET_ADMIN), else as far as that limit goes.
fn grow_receive_buffer(udp: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt::RcvBufForce};
    if setsockopt(udp, RcvBufForce, &UDP_RECEIVE_BUFFER).is_err() {
        let _ = udp.set_recv_buffer_size(UDP_RECEIVE_BUFFER);
    }
    if let Ok(size) = udp.recv_buffer_size()
        && size < UDP_RECEIVE_BUFFER
    {
        tracing::info!(
            bytes = size,
            "UDP receive buffer is capped by net.core.rmem_max; raise it to absorb bursts"
        );
    }
}

/// How often an idle UDP thread checks for shutdown (and beats).
pub const IDLE_CHECK: Duration = Duration::from_millis(200);

/// UDP serving threads per socket.
fn udp_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8)
}

/// Serves until `shutdown` fires, then stops accepting and returns.
///
/// UDP is served the way unbound does it: a few OS threads per socket, each
/// blocking in `recvmmsg` ([`crate::serve::batch`]), answering denials, refusals, local zones and cache
/// hits inline. No task spawn, channel hop or cross-thread wake-up per packet.
/// Only questions that need the upstream become tasks on the runtime, and
/// those are bounded. TCP is served on the runtime ([`crate::serve::tcp`]). Both
/// go through one [`Answerer`].
pub async fn run(
    listeners: Listeners,
    handler: Arc<Handler>,
    tcp: TcpLimits,
    pending: crate::serve::answer::PendingLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let answerer = Arc::new(Answerer::with_limits(handler, pending));
    let runtime = tokio::runtime::Handle::current();
    let (held, to_finish) = std::sync::mpsc::sync_channel::<HeldJob>(HELD_QUEUE);
    let lookups = std::thread::Builder::new()
        .name("lookups".into())
        .spawn(move || {
            for (denial, socket, to) in to_finish {
                send(&socket, &denial.finish(), to);
            }
        })?;
    *lock(&METRICS.transports.udp_listeners) = listeners
        .udp
        .iter()
        .filter_map(|s| s.try_clone().ok().map(std::os::fd::OwnedFd::from))
        .collect();
    let threads = listeners.health.beats.len() / listeners.udp.len().max(1);
    let mut udp_threads = Vec::new();
    for (s, socket) in listeners.udp.into_iter().enumerate() {
        for i in 0..threads {
            let socket = socket.try_clone()?;
            let ctx = UdpContext {
                socket: Arc::new(socket),
                answerer: answerer.clone(),
                runtime: runtime.clone(),
                held: held.clone(),
                shutdown: shutdown.clone(),
                health: listeners.health.clone(),
                slot: s * threads + i,
            };
            // Named by heartbeat slot, as the watchdog reports it.
            let name = format!("udp-{}", s * threads + i);
            udp_threads.push(std::thread::Builder::new().name(name).spawn(move || {
                let served = ctx.serve();
                // Its heartbeat stops too: the watchdog will withhold pings.
                if let Err(e) = &served {
                    tracing::error!(error = %e, "UDP serving thread stopped");
                }
                served
            })?);
        }
    }
    // The threads hold the only senders now: the lookups end with them.
    drop(held);
    let connections = Arc::new(crate::serve::tcp::Slots::new(&tcp));
    let tcp = Arc::new(tcp);
    let accepting: Vec<_> = listeners
        .tcp
        .into_iter()
        .map(|listener| {
            tokio::spawn(crate::serve::tcp::serve(
                listener,
                answerer.clone(),
                tcp.clone(),
                connections.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    shutdown.cancelled().await;
    for accept in accepting {
        let _ = accept.await;
    }
    let joined = tokio::task::spawn_blocking(move || {
        let served = udp_threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(io::Error::other("UDP thread panicked")))
            })
            .collect::<io::Result<Vec<()>>>();
        // Held denials still queued are sent and audited before the end.
        let _ = lookups.join();
        served
    })
    .await
    .map_err(io::Error::other)?;
    lock(&METRICS.transports.udp_listeners).clear();
    // Let upstream-bound answers still in flight finish (and be audited).
    answerer
        .drain(crate::state::ANSWER_DEADLINE + Duration::from_secs(1))
        .await;
    joined.map(drop)
}

/// What one UDP thread needs.
struct UdpContext {
    socket: Arc<std::net::UdpSocket>,
    answerer: Arc<Answerer>,
    /// Where upstream-bound questions are continued.
    runtime: tokio::runtime::Handle,
    /// Where held denials are finished.
    held: SyncSender<HeldJob>,
    shutdown: CancellationToken,
    health: Health,
    /// This thread's heartbeat slot.
    slot: usize,
}

impl UdpContext {
    fn serve(self) -> io::Result<()> {
        let mut batch = crate::serve::batch::Batch::new();
        let mut replies = Vec::with_capacity(crate::serve::batch::BATCH);
        while !self.shutdown.is_cancelled() {
            self.health.beat(self.slot);
            let count = match batch.receive(&self.socket) {
                Ok(n) => n,
                // Timeouts (idle), and ICMP errors from earlier sends.
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e),
            };
            // One clock read for a batch: its datagrams were all queued by now.
            let started = Instant::now();
            for i in 0..count {
                let (query, src) = batch.get(i);
                let Some(src) = src.filter(|s| s.port() != 0) else {
                    continue;
                };
                match self.answerer.answer(query, src, Transport::Udp, started) {
                    Answer::Nothing => {}
                    Answer::Reply(reply) => replies.push((reply, src)),
                    Answer::Upstream(upstream) => {
                        let socket = self.socket.clone();
                        self.runtime.spawn(async move {
                            send(&socket, &upstream.finish().await, src);
                        });
                    }
                    // With the queue full, finished here without the
                    // lookup: a serving thread never waits on /proc, and
                    // the denial is still answered, alerted and audited.
                    Answer::Held(denial) => {
                        if let Err(
                            TrySendError::Full((denial, socket, to))
                            | TrySendError::Disconnected((denial, socket, to)),
                        ) = self.held.try_send((denial, self.socket.clone(), src))
                        {
                            METRICS.attribution_queue_full.fetch_add(1, Relaxed);
                            send(&socket, &denial.finish_unlooked(), to);
                        }
                    }
                }
            }
            batch.send(&self.socket, &replies);
            replies.clear();
        }
        Ok(())
    }
}

/// A held denial (a lookup of its asker, then its reply), from any UDP
/// thread, finished in turn on a thread of its own: the /proc search holds
/// up that one reply, not the queries behind it on the serving thread.
type HeldJob = (Box<Held>, Arc<std::net::UdpSocket>, SocketAddr);

/// Held denials waiting; lookups are rate-limited (attribution's own
/// rate), so the queue fills only in a burst of alerted denials.
const HELD_QUEUE: usize = 256;

fn send(socket: &std::net::UdpSocket, reply: &[u8], to: SocketAddr) {
    if let Err(e) = socket.send_to(reply, to) {
        tracing::debug!(error = %e, %to, "UDP send failed");
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_names_the_first_silent_thread() {
        let health = Health::new(3);
        for i in 0..3 {
            health.beat(i);
        }
        assert_eq!(health.stalled(Duration::from_secs(5)), None);
        std::thread::sleep(Duration::from_millis(60));
        health.beat(0);
        health.beat(2);
        assert_eq!(health.stalled(Duration::from_millis(30)), Some(1));
        health.beat(1);
        assert_eq!(health.stalled(Duration::from_millis(30)), None);
    }
}
