//! The client side of the control socket: what `allowdns grant`, `revoke`
//! and `status` use to send one request and read its reply.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{ClientError, Reply, Request};

/// The client side: sends one request and returns the reply.
pub async fn request(path: &Path, request: &Request) -> Result<Reply, ClientError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Connect {
            path: path.into(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request).map_err(ClientError::Encode)?;
    text.push('\n');
    // A refusal may arrive before the request is written: read it anyway.
    let written = write.write_all(text.as_bytes()).await;
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(16 << 20);
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .map_err(|_| ClientError::Timeout { path: path.into() })?;
    if line.is_empty() {
        let error = written.err().or(read.err());
        return Err(match error {
            Some(source) => ClientError::Io {
                path: path.into(),
                source,
            },
            None => ClientError::Closed { path: path.into() },
        });
    }
    serde_json::from_str(&line).map_err(|source| ClientError::BadReply {
        path: path.into(),
        source,
    })
}

/// [`request`], with the server's refusal as an error too.
pub async fn ask(path: &Path, request: &Request) -> Result<Reply, ClientError> {
    let reply = self::request(path, request).await?;
    match reply.error {
        Some(error) if !reply.ok => Err(ClientError::Refused(error)),
        _ => Ok(reply),
    }
}
