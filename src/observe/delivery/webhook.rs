//! The webhook sink: one HTTP/1.1 POST of JSON per notification, over a
//! plain TCP connection with a deadline on every step.
//!
//! Plain `http://` only: allowdns carries no TLS stack. Slack and Telegram
//! want https, so they are reached through a relay (usually on localhost)
//! that also holds their tokens; see docs/manual.md, "Alert delivery".

use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::SendError;

/// Why a webhook URL is refused; each carries the URL as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("is empty (expected http://HOST[:PORT]/PATH)")]
    Empty,
    #[error("'{0}' contains spaces or control characters (percent-encode them)")]
    Spaces(String),
    #[error("'{0}' is not a URL (expected http://HOST[:PORT]/PATH)")]
    NotUrl(String),
    #[error(
        "'{0}': https is not supported (allowdns has no TLS client); send to a relay on localhost over http (docs/manual.md, \"Alert delivery\")"
    )]
    Https(String),
    #[error("'{raw}': scheme '{scheme}' is not supported (expected http)")]
    Scheme { raw: String, scheme: String },
    #[error("'{0}' has a #fragment, which is never sent; remove it")]
    Fragment(String),
    #[error("'{0}': user:password@ is not supported; put a token in the path or query")]
    UserInfo(String),
    #[error("'{0}' has no host")]
    NoHost(String),
    #[error("'{0}': '[' without ']' around the IPv6 address")]
    Bracket(String),
    #[error("'{raw}': '{v6}' is not an IPv6 address")]
    NotIpv6 { raw: String, v6: String },
    #[error("'{raw}': unexpected '{after}' after ']'")]
    AfterBracket { raw: String, after: String },
    #[error("'{raw}': '{host}' is not a valid host name or IPv4 address (IPv6 goes in [brackets])")]
    Host { raw: String, host: String },
    #[error("'{raw}': port '{port}' is not a number from 1 to 65535")]
    Port { raw: String, port: String },
}

/// A validated `http://HOST[:PORT][/PATH][?QUERY]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or IP, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// Path and query as sent in the request line; at least `/`.
    pub path: String,
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

impl HttpUrl {
    /// Parses and checks scheme, host and port; errors quote the input.
    pub fn parse(raw: &str) -> Result<HttpUrl, UrlError> {
        if raw.is_empty() {
            return Err(UrlError::Empty);
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UrlError::Spaces(raw.into()));
        }
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Err(UrlError::NotUrl(raw.into()));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "http" => {}
            "https" => {
                return Err(UrlError::Https(raw.into()));
            }
            other => {
                return Err(UrlError::Scheme {
                    raw: raw.into(),
                    scheme: other.into(),
                });
            }
        }
        let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if path.contains('#') {
            return Err(UrlError::Fragment(raw.into()));
        }
        if authority.contains('@') {
            return Err(UrlError::UserInfo(raw.into()));
        }
        if authority.is_empty() {
            return Err(UrlError::NoHost(raw.into()));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((v6, after)) = bracketed.split_once(']') else {
                return Err(UrlError::Bracket(raw.into()));
            };
            if v6.parse::<Ipv6Addr>().is_err() {
                return Err(UrlError::NotIpv6 {
                    raw: raw.into(),
                    v6: v6.into(),
                });
            }
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => {
                        return Err(UrlError::AfterBracket {
                            raw: raw.into(),
                            after: after.into(),
                        });
                    }
                },
            };
            (v6.to_string(), port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if host.is_empty() {
                return Err(UrlError::NoHost(raw.into()));
            }
            if host.parse::<IpAddr>().is_err() && !is_host_name(host) {
                return Err(UrlError::Host {
                    raw: raw.into(),
                    host: host.into(),
                });
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => {
                    return Err(UrlError::Port {
                        raw: raw.into(),
                        port: p.into(),
                    });
                }
            },
        };
        let path = match path.chars().next() {
            None => "/".to_string(),
            Some('?') => format!("/{path}"),
            Some(_) => path.to_string(),
        };
        Ok(HttpUrl { host, port, path })
    }

    /// `host[:port]` as the Host header wants it.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// True for loopback IPs and `localhost`: the only hosts where plain
    /// http does not cross a network.
    pub fn is_local(&self) -> bool {
        self.host == "localhost"
            || self.host.ends_with(".localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Resolves a host and port to addresses; blocking, may take long.
pub type Resolver = Arc<dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync>;

type Resolved = std::io::Result<Vec<SocketAddr>>;

/// The webhook sink's transport.
pub struct Webhook {
    pub url: HttpUrl,
    /// Budget for one attempt: resolve, connect, send, and the final status line.
    pub timeout: Duration,
    resolver: Resolver,
    /// A lookup that outlived its attempt; the next attempt waits on it
    /// rather than start another, so a hung resolver costs one thread.
    pending: Option<mpsc::Receiver<Resolved>>,
}

impl Webhook {
    pub fn new(url: HttpUrl, timeout: Duration) -> Webhook {
        Webhook::with_resolver(
            url,
            timeout,
            Arc::new(|host, port| (host, port).to_socket_addrs().map(Iterator::collect)),
        )
    }

    pub fn with_resolver(url: HttpUrl, timeout: Duration, resolver: Resolver) -> Webhook {
        Webhook {
            url,
            timeout,
            resolver,
            pending: None,
        }
    }

    /// POSTs `body`; Ok on a 2xx final status. Never takes past `deadline`
    /// nor past `timeout`, resolving a host name included.
    pub fn post(&mut self, body: &str, deadline: Instant) -> Result<(), SendError> {
        let deadline = deadline.min(Instant::now() + self.timeout);
        let addrs = self.resolve(deadline)?;
        let mut stream = None;
        let mut last_error = format!("{} resolves to no address", self.url.host);
        for (i, addr) in addrs.iter().enumerate() {
            // An equal share of what is left, so one black-holed address
            // cannot use up the budget of the others.
            let share = left(deadline)? / (addrs.len() - i) as u32;
            match TcpStream::connect_timeout(addr, share.max(Duration::from_millis(1))) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    last_error =
                        format!("connect {addr}: timed out after {} ms", share.as_millis());
                }
                Err(e) => last_error = format!("connect {addr}: {e}"),
            }
        }
        let Some(mut stream) = stream else {
            return Err(SendError::retry(last_error));
        };
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: allowdns/{}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.url.path,
            self.url.authority(),
            env!("CARGO_PKG_VERSION"),
            body.len(),
        );
        stream
            .set_write_timeout(Some(left(deadline)?))
            .and_then(|()| stream.write_all(request.as_bytes()))
            .map_err(|e| SendError::retry(io_text("sending the request", &e, self.timeout)))?;
        let (status, line) = final_status(&mut stream, deadline, self.timeout)?;
        match status {
            200..=299 => Ok(()),
            // Worth retrying: timeouts, rate limits, server trouble.
            408 | 429 | 500..=599 => Err(SendError::retry(format!("answered '{line}'"))),
            101 => Err(SendError::permanent(format!(
                "answered '{line}' to a request that asked for no upgrade"
            ))),
            _ => Err(SendError::permanent(format!(
                "answered '{line}' (redirects are not followed; a 4xx is not retried)"
            ))),
        }
    }

    /// The host's addresses within `deadline`. std's resolver cannot be
    /// cancelled, so it runs on a helper thread that is left behind (and
    /// reused by the next attempt) when it takes too long.
    fn resolve(&mut self, deadline: Instant) -> Result<Vec<SocketAddr>, SendError> {
        if let Ok(ip) = self.url.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.url.port)]);
        }
        let rx = match self.pending.take() {
            Some(rx) => rx,
            None => {
                let (tx, rx) = mpsc::sync_channel(1);
                let (resolver, host, port) =
                    (self.resolver.clone(), self.url.host.clone(), self.url.port);
                std::thread::Builder::new()
                    .name("alert-resolve".into())
                    .spawn(move || {
                        let _ = tx.send(resolver(&host, port));
                    })
                    .map_err(|e| {
                        SendError::retry(format!("cannot start a resolver thread: {e}"))
                    })?;
                rx
            }
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Ok(addrs)) => Ok(addrs),
            Ok(Err(e)) => Err(SendError::retry(format!(
                "cannot resolve {}: {e}",
                self.url.host
            ))),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.pending = Some(rx);
                Err(SendError::retry(format!(
                    "timed out resolving {} (timeout {} ms; an IP address in the url avoids the lookup)",
                    self.url.host,
                    self.timeout.as_millis()
                )))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(SendError::retry(format!(
                "cannot resolve {}: the resolver thread died",
                self.url.host
            ))),
        }
    }
}

/// Longest status or header line read from a response.
const MAX_LINE: usize = 4096;

/// Reads responses until a final one and returns its status and status
/// line. Interim (1xx) responses and their headers are skipped (RFC 9110
/// §15.2); a bare LF ends a line as well as CRLF (RFC 9112 §2.2). The rest
/// of the final response is left unread.
fn final_status(
    stream: &mut TcpStream,
    deadline: Instant,
    timeout: Duration,
) -> Result<(u16, String), SendError> {
    let mut lines = Lines {
        stream,
        buf: Vec::with_capacity(256),
        deadline,
        timeout,
    };
    let mut first = true;
    loop {
        let line = match lines.next()? {
            Some(line) => line,
            None if first => {
                return Err(SendError::retry(
                    "closed the connection without a response".to_string(),
                ));
            }
            None => {
                return Err(SendError::retry(
                    "closed the connection after an interim response".to_string(),
                ));
            }
        };
        first = false;
        let Some(status) = status_code(&line) else {
            return Err(SendError::retry(format!(
                "answered something that is not HTTP: '{line}'"
            )));
        };
        if !(100..=199).contains(&status) || status == 101 {
            return Ok((status, line));
        }
        // Headers of the interim response, up to the empty line.
        loop {
            match lines.next()? {
                Some(header) if !header.is_empty() => {}
                Some(_) => break,
                None => {
                    return Err(SendError::retry(format!(
                        "closed the connection after '{line}'"
                    )));
                }
            }
        }
    }
}

/// `HTTP/1.x SP 3DIGIT [SP reason]` to the code.
fn status_code(line: &str) -> Option<u16> {
    let rest = line.strip_prefix("HTTP/1.")?.as_bytes();
    if rest.len() < 5 || !rest[0].is_ascii_digit() || rest[1] != b' ' {
        return None;
    }
    let code = &rest[2..5];
    if !code.iter().all(u8::is_ascii_digit) || rest.get(5).is_some_and(|&b| b != b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// Lines off a stream, each read bounded by the deadline.
struct Lines<'a> {
    stream: &'a mut TcpStream,
    /// Read but not yet returned.
    buf: Vec<u8>,
    deadline: Instant,
    timeout: Duration,
}

impl Lines<'_> {
    /// The next line without its CRLF or LF; None on a clean end of stream.
    fn next(&mut self) -> Result<Option<String>, SendError> {
        let mut chunk = [0u8; 512];
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.buf.len() > MAX_LINE {
                let start = String::from_utf8_lossy(&self.buf[..80]).into_owned();
                return Err(SendError::retry(format!(
                    "answered something that is not HTTP: a line of more than {MAX_LINE} bytes starting '{start}'"
                )));
            }
            self.stream
                .set_read_timeout(Some(left(self.deadline)?))
                .map_err(|e| SendError::retry(format!("socket: {e}")))?;
            match self.stream.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => {
                    let partial = String::from_utf8_lossy(&self.buf).into_owned();
                    return Err(SendError::retry(format!(
                        "closed the connection in the middle of '{partial}'"
                    )));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(SendError::retry(io_text(
                        "waiting for the response",
                        &e,
                        self.timeout,
                    )));
                }
            }
        }
    }
}

/// Time left before `deadline`, or a timeout error.
fn left(deadline: Instant) -> Result<Duration, SendError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(SendError::retry("timed out".to_string()))
    } else {
        Ok(left)
    }
}

fn io_text(during: &str, e: &std::io::Error, timeout: Duration) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("timed out {during} (timeout {} ms)", timeout.as_millis())
        }
        _ => format!("{during}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://127.0.0.1:9000/allowdns?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 9000, "/allowdns?x=1")
        );
        assert!(u.is_local());
        let u = HttpUrl::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8080, "/")
        );
        assert_eq!(u.to_string(), "http://[::1]:8080/");
        let u = HttpUrl::parse("HTTP://Relay.Example?t=1").unwrap();
        assert_eq!(u.to_string(), "http://relay.example/?t=1");
        assert!(!u.is_local());
        assert!(HttpUrl::parse("http://localhost:1/").unwrap().is_local());
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let err = |raw: &str| HttpUrl::parse(raw).unwrap_err().to_string();
        assert!(err("https://hooks.slack.com/x").contains("https is not supported"));
        assert!(err("ftp://h/").contains("scheme 'ftp'"));
        assert!(err("127.0.0.1:9000").contains("not a URL"));
        assert!(err("http://:80/").contains("no host"));
        assert!(err("http:///x").contains("no host"));
        assert!(err("http://h:0/").contains("port '0'"));
        assert!(err("http://h:99999/").contains("port '99999'"));
        assert!(err("http://h:x/").contains("port 'x'"));
        assert!(err("http://u:p@h/").contains("user:password@"));
        assert!(err("http://h/#top").contains("fragment"));
        assert!(err("http://bad_host/").contains("'bad_host' is not a valid host"));
        assert!(err("http://[::1/").contains("without ']'"));
        assert!(err("http://[1.2.3.4]/").contains("not an IPv6"));
        assert!(err("http://h/a b").contains("spaces"));
    }

    #[test]
    fn posts_json_and_reads_the_status() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut replies = [
                "HTTP/1.1 204 No Content\r\n\r\n",
                "HTTP/1.0 404 Nope\r\n\r\n",
            ]
            .iter();
            let mut requests = Vec::new();
            for reply in replies.by_ref() {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !String::from_utf8_lossy(&got).ends_with("{\"a\":1}") {
                    let n = s.read(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(reply.as_bytes()).unwrap();
                requests.push(String::from_utf8(got).unwrap());
            }
            requests
        });
        let mut hook = Webhook::new(
            HttpUrl::parse(&format!("http://127.0.0.1:{port}/in")).unwrap(),
            Duration::from_secs(5),
        );
        let far = Instant::now() + Duration::from_secs(10);
        hook.post("{\"a\":1}", far).unwrap();
        let e = hook.post("{\"a\":1}", far).unwrap_err();
        assert!(e.permanent && e.message.contains("404"), "{e:?}");
        let requests = server.join().unwrap();
        assert!(
            requests[0].starts_with("POST /in HTTP/1.1\r\n"),
            "{}",
            requests[0]
        );
        assert!(requests[0].contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")));
        assert!(requests[0].contains("\r\nContent-Type: application/json\r\n"));
        assert!(requests[0].contains("\r\nContent-Length: 7\r\n"));
    }

    #[test]
    fn a_receiver_that_never_answers_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut hook = Webhook::new(
            HttpUrl::parse(&format!("http://127.0.0.1:{port}/")).unwrap(),
            Duration::from_millis(200),
        );
        // Connected by the kernel's backlog, never accepted nor answered.
        let e = hook
            .post("{}", Instant::now() + Duration::from_secs(10))
            .unwrap_err();
        assert!(!e.permanent);
        assert!(e.message.contains("timed out"), "{e:?}");
        drop(listener);
        let e = hook
            .post("{}", Instant::now() + Duration::from_secs(10))
            .unwrap_err();
        assert!(e.message.contains("connect 127.0.0.1"), "{e:?}");
    }

    /// Answers one request with `pieces`, each written after its pause, then closes.
    fn answer_in_pieces(
        pieces: Vec<(u64, &'static [u8])>,
    ) -> (Webhook, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.ends_with(b"{}") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            for (pause_ms, bytes) in pieces {
                std::thread::sleep(Duration::from_millis(pause_ms));
                if s.write_all(bytes).is_err() {
                    return; // The client gave up: the test says whether it should have.
                }
            }
        });
        let hook = Webhook::new(
            HttpUrl::parse(&format!("http://127.0.0.1:{port}/")).unwrap(),
            Duration::from_secs(5),
        );
        (hook, server)
    }

    fn post(pieces: Vec<(u64, &'static [u8])>) -> Result<(), SendError> {
        let (mut hook, server) = answer_in_pieces(pieces);
        let result = hook.post("{}", Instant::now() + Duration::from_secs(10));
        drop(hook);
        server.join().unwrap();
        result
    }

    #[test]
    fn a_status_line_split_across_reads() {
        post(vec![
            (0, b"HTTP/1.1 2"),
            (50, b"00 OK\r"),
            (50, b"\nContent-Length: 0\r\n\r\n"),
        ])
        .unwrap();
        let e = post(vec![(0, b"HTTP/1.1 4"), (50, b"04 Not Found\r\n\r\n")]).unwrap_err();
        assert!(
            e.permanent && e.message.contains("'HTTP/1.1 404 Not Found'"),
            "{e:?}"
        );
    }

    #[test]
    fn bytes_dribbled_within_the_deadline_are_read() {
        let pieces = b"HTTP/1.1 204 No Content\r\n\r\n"
            .chunks(1)
            .map(|b| (10, b))
            .collect();
        post(pieces).unwrap();
    }

    #[test]
    fn dribbling_cannot_stretch_an_attempt_past_its_timeout() {
        let mut pieces: Vec<(u64, &'static [u8])> = vec![(0, b"HTTP/1.1 2")];
        pieces.extend(std::iter::repeat_n((100, &b"0"[..]), 30));
        let (mut hook, server) = answer_in_pieces(pieces);
        hook.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let e = hook
            .post("{}", Instant::now() + Duration::from_secs(10))
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(!e.permanent && e.message.contains("timed out"), "{e:?}");
        drop(hook);
        server.join().unwrap();
    }

    #[test]
    fn interim_responses_are_skipped() {
        post(vec![
            (0, b"HTTP/1.1 100 Continue\r\n\r\n"),
            (30, b"HTTP/1.1 102 Processing\r\nX-Progress: 1\r\n\r\n"),
            (30, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ])
        .unwrap();
        // The final status decides, not the interim one.
        let e = post(vec![(
            0,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\n\r\n",
        )])
        .unwrap_err();
        assert!(!e.permanent && e.message.contains("503"), "{e:?}");
        let e = post(vec![(0, b"HTTP/1.1 100 Continue\r\n\r\n")]).unwrap_err();
        assert!(
            !e.permanent && e.message.contains("after an interim"),
            "{e:?}"
        );
        let e = post(vec![(0, b"HTTP/1.1 101 Switching Protocols\r\n\r\n")]).unwrap_err();
        assert!(e.permanent, "{e:?}");
    }

    #[test]
    fn a_bare_lf_ends_a_line() {
        post(vec![(0, b"HTTP/1.1 200 OK\nContent-Length: 0\n\n")]).unwrap();
        post(vec![(
            0,
            b"HTTP/1.1 100 Continue\n\nHTTP/1.0 201 Created\n\n",
        )])
        .unwrap();
        let e = post(vec![(
            0,
            b"HTTP/1.1 100 Continue\nX: y\n\nHTTP/1.1 404 No\n\n",
        )])
        .unwrap_err();
        assert!(
            e.permanent && e.message.contains("'HTTP/1.1 404 No'"),
            "{e:?}"
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_code("HTTP/1.0 204"), Some(204));
        assert_eq!(status_code("HTTP/1.1 100 "), Some(100));
        for bad in [
            "HTTP/1.1 20",
            "HTTP/1.1 2000",
            "HTTP/1.1 20x OK",
            "HTTP/2 200",
            "ICY 200 OK",
            "",
        ] {
            assert_eq!(status_code(bad), None, "{bad}");
        }
        let e = post(vec![(0, b"SSH-2.0-OpenSSH\r\n")]).unwrap_err();
        assert!(e.message.contains("not HTTP"), "{e:?}");
        let e = post(vec![(0, b"")]).unwrap_err();
        assert!(e.message.contains("without a response"), "{e:?}");
    }

    #[test]
    fn a_slow_resolver_is_bounded_and_not_piled_up() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let c = calls.clone();
        let mut hook = Webhook::with_resolver(
            HttpUrl::parse("http://relay.invalid:1/").unwrap(),
            Duration::from_millis(200),
            Arc::new(move |_, _| {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(700));
                Ok(vec![closed])
            }),
        );
        let far = Instant::now() + Duration::from_secs(10);
        for _ in 0..2 {
            let started = Instant::now();
            let e = hook.post("{}", far).unwrap_err();
            assert!(
                e.message.contains("timed out resolving relay.invalid"),
                "{e:?}"
            );
            assert!(
                started.elapsed() < Duration::from_millis(400),
                "{:?}",
                started.elapsed()
            );
        }
        // The second attempt waited on the first lookup instead of starting one.
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        std::thread::sleep(Duration::from_millis(500));
        let e = hook.post("{}", far).unwrap_err();
        assert!(e.message.contains(&format!("connect {closed}")), "{e:?}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_black_holed_address_leaves_time_for_the_next() {
        // A listener whose accept queue is full drops SYNs: connect hangs.
        let hole =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        hole.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        hole.listen(0).unwrap();
        let hole_addr = hole.local_addr().unwrap().as_socket().unwrap();
        let _filler = TcpStream::connect(hole_addr).unwrap();
        let good = TcpListener::bind("127.0.0.1:0").unwrap();
        let good_addr = good.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = good.accept().unwrap();
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.ends_with(b"{}") {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        });
        let mut hook = Webhook::with_resolver(
            HttpUrl::parse("http://relay.test:1/").unwrap(),
            Duration::from_millis(1000),
            Arc::new(move |_, _| Ok(vec![hole_addr, good_addr])),
        );
        let started = Instant::now();
        hook.post("{}", Instant::now() + Duration::from_secs(10))
            .unwrap();
        // About half the budget went to the black hole.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(900),
            "{took:?}"
        );
        server.join().unwrap();
    }
}
