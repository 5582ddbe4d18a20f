//! DNS over TCP (RFC 7766): length-prefixed messages; queries pipelined on
//! one connection are answered concurrently and each reply is written as soon
//! as it is ready, so replies leave in completion order (clients match them
//! by ID). Every message goes through [`Answerer::answer`], like UDP's.
//!
//! Limits: idle connections are closed; each connection has a bound on
//! queries in flight (reading pauses at it), on messages and on lifetime;
//! a message must arrive whole within `message_timeout` of its first byte
//! (so dribbling bytes cannot hold a connection, slowloris); each client
//! address holds at most `max_connections_per_ip`; at the global bound the
//! connection idle longest (nothing in flight) is closed for the newcomer,
//! and only if there is none is the newcomer closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::observe::metrics::METRICS;
use crate::serve::answer::{Answer, Answerer};
use crate::serve::wire::Transport;
use crate::sync::lock;

/// The TCP limits (the `tcp:` section of the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpLimits {
    /// A connection with nothing in flight and no bytes arriving for this
    /// long is closed (RFC 7766 6.2.3).
    pub idle_timeout: Duration,
    /// Connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Queries in flight per connection; reading pauses at this many.
    pub max_in_flight: usize,
    /// Messages per connection; then it is closed once they are answered.
    pub max_queries: u64,
    /// After this a connection reads no more messages.
    pub max_lifetime: Duration,
    /// A message must be complete this long after its first byte arrived.
    pub message_timeout: Duration,
    /// Connections open at once from one client address.
    pub max_connections_per_ip: usize,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            idle_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_in_flight: 128,
            max_queries: 1 << 20,
            max_lifetime: Duration::from_secs(3600),
            message_timeout: Duration::from_secs(10),
            max_connections_per_ip: 64,
        }
    }
}

/// The connection slots all TCP listeners share, and who holds them.
pub struct Slots {
    permits: Arc<Semaphore>,
    max_per_ip: usize,
    taken: Mutex<Taken>,
    epoch: Instant,
}

#[derive(Default)]
struct Taken {
    next_id: u64,
    per_ip: HashMap<IpAddr, usize>,
    open: HashMap<u64, Open>,
}

/// One open connection, as eviction sees it.
struct Open {
    /// Milliseconds since `Slots::epoch` of its last complete message (or
    /// of its opening): dribbled bytes of an unfinished message don't count.
    since: Arc<AtomicU64>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    close: CancellationToken,
}

/// A held slot; given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    ip: IpAddr,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.lock();
        held.open.remove(&self.id);
        if let Some(n) = held.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Slots {
    pub fn new(limits: &TcpLimits) -> Slots {
        Slots {
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            max_per_ip: limits.max_connections_per_ip.max(1),
            taken: Mutex::default(),
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Taken> {
        lock(&self.taken)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Closes the connection idle longest (none of its queries in flight);
    /// false if every connection is busy.
    fn evict_idlest(&self) -> bool {
        let held = self.lock();
        let idlest = held
            .open
            .values()
            .filter(|o| o.in_flight.available_permits() >= o.max_in_flight)
            .filter(|o| !o.close.is_cancelled())
            .min_by_key(|o| o.since.load(Ordering::Relaxed));
        idlest.map(|o| o.close.cancel()).is_some()
    }

    /// A slot for `peer`, waiting (briefly) for one an eviction frees.
    async fn take(
        self: &Arc<Self>,
        peer: IpAddr,
        since: Arc<AtomicU64>,
        in_flight: Arc<Semaphore>,
        max_in_flight: usize,
        close: CancellationToken,
    ) -> Option<Slot> {
        if self.lock().per_ip.get(&peer).copied().unwrap_or(0) >= self.max_per_ip {
            tracing::debug!(%peer, "too many TCP connections from this address");
            return None;
        }
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if !self.evict_idlest() {
                    return None;
                }
                let waiting = self.permits.clone().acquire_owned();
                tokio::time::timeout(Duration::from_secs(1), waiting)
                    .await
                    .ok()?
                    .ok()?
            }
        };
        let mut held = self.lock();
        // Checked again: others from this address may have got in meanwhile.
        let n = held.per_ip.entry(peer).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        let id = held.next_id;
        held.next_id += 1;
        since.store(self.now_ms(), Ordering::Relaxed);
        held.open.insert(
            id,
            Open {
                since,
                in_flight,
                max_in_flight,
                close,
            },
        );
        drop(held);
        Some(Slot {
            slots: self.clone(),
            id,
            ip: peer,
            _permit: permit,
        })
    }
}

/// Accepts connections until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    answerer: Arc<Answerer>,
    limits: Arc<TcpLimits>,
    connections: Arc<Slots>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let (answerer, limits, shutdown) = (answerer.clone(), limits.clone(), shutdown.clone());
        let connections = connections.clone();
        // Its own task: waiting for an evicted connection's slot must not
        // hold up accepting.
        tokio::spawn(async move {
            let max_in_flight = limits.max_in_flight.max(1);
            let conn = Conn {
                since: Arc::default(),
                in_flight: Arc::new(Semaphore::new(max_in_flight)),
                close: shutdown.child_token(),
                epoch: connections.epoch,
            };
            let taken = connections
                .take(
                    peer.ip(),
                    conn.since.clone(),
                    conn.in_flight.clone(),
                    max_in_flight,
                    conn.close.clone(),
                )
                .await;
            let Some(slot) = taken else {
                METRICS.transports.tcp_rejected.fetch_add(1, Relaxed);
                tracing::debug!(%peer, "too many TCP connections; closing this one");
                return;
            };
            METRICS.transports.tcp_accepted.fetch_add(1, Relaxed);
            METRICS.transports.tcp_open.fetch_add(1, Relaxed);
            connection(stream, peer, answerer, &limits, conn).await;
            METRICS.transports.tcp_open.fetch_sub(1, Relaxed);
            drop(slot);
        });
    }
}

/// What a connection shares with [`Slots`].
struct Conn {
    /// See [`Open::since`].
    since: Arc<AtomicU64>,
    in_flight: Arc<Semaphore>,
    /// Shutdown, or evicted.
    close: CancellationToken,
    epoch: Instant,
}

/// Reads messages and answers them, concurrently, until the client closes,
/// a limit is reached or shutdown; replies to what was read still go out.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    answerer: Arc<Answerer>,
    limits: &TcpLimits,
    conn: Conn,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let (replies, outgoing) = mpsc::channel::<Vec<u8>>(limits.max_in_flight.max(1));
    let writing = tokio::spawn(write_replies(writer, outgoing, limits.message_timeout));
    let Conn {
        since,
        in_flight,
        close: shutdown,
        epoch,
    } = conn;
    let close_at = tokio::time::Instant::now() + limits.max_lifetime;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut read = 0u64;
    let mut last_activity = tokio::time::Instant::now();
    // When the first byte of the unfinished message in `buf` arrived.
    let mut partial_since: Option<tokio::time::Instant> = None;
    'reading: loop {
        // Every complete message in the buffer, in order.
        let mut start = 0;
        while let Some(len) = buf.get(start..start + 2) {
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let Some(message) = buf.get(start + 2..start + 2 + len) else {
                break;
            };
            let started = Instant::now();
            start += 2 + len;
            read += 1;
            let ms = u64::try_from(started.duration_since(epoch).as_millis()).unwrap_or(u64::MAX);
            since.store(ms, Ordering::Relaxed);
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break 'reading;
            };
            match answerer.answer(message, peer, Transport::Tcp, started) {
                Answer::Nothing => {}
                Answer::Reply(reply) => {
                    if replies.send(reply).await.is_err() {
                        break 'reading;
                    }
                }
                // Waits on the lookup, as this connection's next query
                // would; off the runtime's workers, which serve the rest.
                Answer::Held(held) => {
                    let Ok(reply) = tokio::task::spawn_blocking(move || held.finish()).await else {
                        break 'reading;
                    };
                    if replies.send(reply).await.is_err() {
                        break 'reading;
                    }
                }
                Answer::Upstream(upstream) => {
                    let replies = replies.clone();
                    tokio::spawn(async move {
                        let _ = replies.send(upstream.finish().await).await;
                        drop(permit);
                    });
                }
            }
            if read >= limits.max_queries {
                break 'reading;
            }
        }
        buf.drain(..start);
        // Bytes left over start a new message, timed from now (the read that
        // brought them); with none left, nothing is being timed.
        if buf.is_empty() {
            partial_since = None;
        } else if start > 0 || partial_since.is_none() {
            partial_since = Some(last_activity);
        }
        let message_deadline = async {
            match partial_since {
                Some(at) => tokio::time::sleep_until(at + limits.message_timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            got = reader.read_buf(&mut buf) => match got {
                Ok(0) | Err(_) => break,
                Ok(_) => last_activity = tokio::time::Instant::now(),
            },
            _ = message_deadline => {
                tracing::debug!(%peer, "TCP message not complete in time; connection closed");
                break;
            }
            _ = tokio::time::sleep_until(last_activity + limits.idle_timeout) => {
                // Not idle while answers are still being worked on.
                if in_flight.available_permits() < limits.max_in_flight.max(1) {
                    last_activity = tokio::time::Instant::now();
                } else {
                    tracing::debug!(%peer, "idle TCP connection closed");
                    break;
                }
            }
            _ = tokio::time::sleep_until(close_at) => break,
            _ = shutdown.cancelled() => break,
        }
    }
    // Replies still being worked on keep the writer open until they are sent.
    drop(replies);
    let _ = writing.await;
}

/// Writes replies in the order they are ready, length-prefixed, batching
/// those already waiting into one write. A peer that stops reading for
/// `deadline` loses the connection: returning drops `outgoing`, so the reader
/// and the answers in flight stop at their next send instead of holding the
/// slot for ever.
async fn write_replies(
    mut writer: OwnedWriteHalf,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    deadline: Duration,
) {
    let mut batch = Vec::with_capacity(4096);
    while let Some(reply) = outgoing.recv().await {
        frame(&mut batch, &reply);
        while batch.len() < 64 * 1024
            && let Ok(reply) = outgoing.try_recv()
        {
            frame(&mut batch, &reply);
        }
        match tokio::time::timeout(deadline, writer.write_all(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::debug!("TCP peer not reading; connection closed");
                return;
            }
        }
        batch.clear();
    }
    let _ = writer.shutdown().await;
}

fn frame(batch: &mut Vec<u8>, reply: &[u8]) {
    let len = u16::try_from(reply.len()).unwrap_or(u16::MAX);
    batch.extend_from_slice(&len.to_be_bytes());
    batch.extend_from_slice(&reply[..usize::from(len)]);
}
