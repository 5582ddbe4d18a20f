//! The `/metrics` HTTP endpoint: a few concurrent scrapes, bounded in time
//! and size, each answered with the text exposition.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::METRICS;

/// Binds the metrics listener (before the resolver reports ready).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("metrics on {addr}: {e}")))
}

/// Scrapes answered at once; a request beyond this gets 503.
const MAX_SCRAPES: usize = 8;
/// Connections waiting for their request; beyond this the oldest is dropped
/// (see [`crate::observe::idle`]), so idle clients cannot lock out a scrape.
const MAX_WAITING: usize = 64;
/// The whole exchange (request in, reply out) must finish within this.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(5);
/// Longest request head read.
const MAX_REQUEST: usize = 8192;

/// Serves `GET /metrics` until `shutdown`. Plain HTTP/1.1, one request per
/// connection: enough for Prometheus, and no HTTP stack to harden.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_SCRAPES));
    let waiting = crate::observe::idle::Waiting::new(MAX_WAITING);
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Idle or slow clients must neither pile up tasks and sockets nor
        // hold the slots a real scrape needs.
        let ticket = waiting.enter();
        let permits = permits.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SCRAPE_DEADLINE, async move {
                let mut stream = stream;
                let head = tokio::select! {
                    _ = ticket.evicted() => return Ok(()),
                    head = read_head(&mut stream) => head?,
                };
                drop(ticket);
                let Ok(_permit) = permits.try_acquire_owned() else {
                    return reply(&mut stream, "503 Service Unavailable", "busy\n".into()).await;
                };
                respond(&mut stream, &head).await
            })
            .await;
        });
    }
}

async fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

async fn respond(stream: &mut TcpStream, buf: &[u8]) -> io::Result<()> {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", METRICS.render()),
        (Some("GET"), _) => ("404 Not Found", "try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", String::new()),
    };
    reply(stream, status, body).await
}

async fn reply(stream: &mut TcpStream, status: &str, body: String) -> io::Result<()> {
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}
