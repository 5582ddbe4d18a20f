//! DNS over TCP (RFC 7766): length-prefixed messages; queries pipelined on
//! one connection are answered concurrently and each reply is written as soon
//! as it is ready, so replies leave in completion order (clients match them
//! by ID). Every message goes through [`Answerer::answer`], like UDP's.
//!
//! Limits: idle connections are closed; each connection has a bound on
//! queries in flight (reading pauses at it), on messages and on lifetime;
//! connections over the global bound are closed at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::answer::{Answer, Answerer};
use crate::metrics::METRICS;
use crate::wire::Transport;

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
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            idle_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_in_flight: 128,
            max_queries: 1 << 20,
            max_lifetime: Duration::from_secs(3600),
        }
    }
}

/// Accepts connections until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    answerer: Arc<Answerer>,
    limits: Arc<TcpLimits>,
    connections: Arc<Semaphore>,
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
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            METRICS.transports.tcp_rejected.fetch_add(1, Relaxed);
            tracing::debug!(%peer, "too many TCP connections; closing this one");
            continue;
        };
        METRICS.transports.tcp_accepted.fetch_add(1, Relaxed);
        let (answerer, limits, shutdown) = (answerer.clone(), limits.clone(), shutdown.clone());
        tokio::spawn(async move {
            METRICS.transports.tcp_open.fetch_add(1, Relaxed);
            connection(stream, peer, answerer, &limits, shutdown).await;
            METRICS.transports.tcp_open.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
}

/// Reads messages and answers them, concurrently, until the client closes,
/// a limit is reached or shutdown; replies to what was read still go out.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    answerer: Arc<Answerer>,
    limits: &TcpLimits,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let (replies, outgoing) = mpsc::channel::<Vec<u8>>(limits.max_in_flight.max(1));
    let writing = tokio::spawn(write_replies(writer, outgoing));
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    let close_at = tokio::time::Instant::now() + limits.max_lifetime;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut read = 0u64;
    let mut last_activity = tokio::time::Instant::now();
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
        tokio::select! {
            got = reader.read_buf(&mut buf) => match got {
                Ok(0) | Err(_) => break,
                Ok(_) => last_activity = tokio::time::Instant::now(),
            },
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
/// those already waiting into one write.
async fn write_replies(mut writer: OwnedWriteHalf, mut outgoing: mpsc::Receiver<Vec<u8>>) {
    let mut batch = Vec::with_capacity(4096);
    while let Some(reply) = outgoing.recv().await {
        frame(&mut batch, &reply);
        while batch.len() < 64 * 1024
            && let Ok(reply) = outgoing.try_recv()
        {
            frame(&mut batch, &reply);
        }
        if writer.write_all(&batch).await.is_err() {
            return;
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
