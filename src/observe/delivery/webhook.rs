//! The webhook sink: one POST of JSON per notification, over http or https
//! (ureq with rustls), in the shape the receiver wants (allowdns JSON,
//! Slack, Telegram), with one deadline over resolve, connect, TLS, send and
//! the response head.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::SendError;
use super::notification::Notification;

use crate::sync::lock;

/// Why a webhook URL is refused; each carries the URL as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("is empty (expected http[s]://HOST[:PORT]/PATH)")]
    Empty,
    #[error("'{0}' contains spaces or control characters (percent-encode them)")]
    Spaces(String),
    #[error("'{0}' is not a URL (expected http[s]://HOST[:PORT]/PATH)")]
    NotUrl(String),
    #[error("'{raw}': scheme '{scheme}' is not supported (expected http or https)")]
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

/// A validated `http[s]://HOST[:PORT][/PATH][?QUERY]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// https.
    pub tls: bool,
    /// Host name or IP, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// Path and query as sent in the request line; at least `/`.
    pub path: String,
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
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
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            other => {
                return Err(UrlError::Scheme {
                    raw: raw.into(),
                    scheme: other.into(),
                });
            }
        };
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
            None if tls => 443,
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
        Ok(HttpUrl {
            tls,
            host,
            port,
            path,
        })
    }

    /// `host[:port]`, the port left out when it is the scheme's default.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.tls { 443 } else { 80 } {
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

/// The body a receiver wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// allowdns's own JSON (docs/manual.md), for SIEMs and relays.
    Json,
    /// A Slack incoming webhook: `{"text": ...}`.
    Slack,
    /// Telegram's sendMessage: `{"chat_id": ..., "text": ...}`.
    Telegram { chat_id: String },
}

impl Shape {
    pub fn render(&self, n: &Notification, dropped: u64) -> String {
        match self {
            Shape::Json => n.body(dropped),
            // Slack reads `<...>` as links and `&` as entities; the names in
            // the text come from the agent, so they must not become markup.
            Shape::Slack => {
                serde_json::json!({ "text": slack_escape(&n.text(dropped)) }).to_string()
            }
            // No parse_mode: Telegram shows the text as it is.
            Shape::Telegram { chat_id } => serde_json::json!({
                "chat_id": chat_id,
                "text": n.text(dropped),
                "disable_web_page_preview": true,
            })
            .to_string(),
        }
    }
}

fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Which certificate authorities an https webhook trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The system's store (`/etc/ssl/certs`), read when the sink starts.
    System,
    /// Only these (DER), from `ca_file`.
    Only(Arc<Vec<Vec<u8>>>),
}

/// Resolves a host and port to addresses; blocking, may take long.
pub type HostLookup = Arc<dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync>;

type Resolved = std::io::Result<Vec<SocketAddr>>;

/// ureq's resolver for the webhook: bounded by the attempt's deadline, and
/// at most one lookup thread at a time however long the resolver hangs.
struct Lookup {
    resolver: HostLookup,
    /// A lookup that outlived its attempt; the next attempt waits on it
    /// rather than start another, so a hung resolver costs one thread.
    pending: Mutex<Option<mpsc::Receiver<Resolved>>>,
    /// The running attempt's deadline and the configured timeout.
    attempt: Mutex<(Instant, Duration)>,
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Lookup")
    }
}

#[derive(Debug)]
struct SharedLookup(Arc<Lookup>);

impl ureq::unversioned::resolver::Resolver for SharedLookup {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let addrs = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => self.0.resolve(host, port).map_err(ureq::Error::Io)?,
        };
        let mut out =
            ureq::unversioned::resolver::ArrayVec::from_fn(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        for addr in addrs.into_iter().take(16) {
            out.push(addr);
        }
        if out.is_empty() {
            return Err(ureq::Error::Io(std::io::Error::other(format!(
                "{host} resolves to no address"
            ))));
        }
        Ok(out)
    }
}

impl Lookup {
    /// std's resolver cannot be cancelled, so it runs on a helper thread
    /// that is left behind (and reused by the next attempt) when it takes
    /// too long.
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let (deadline, timeout) = *lock(&self.attempt);
        let mut pending = lock(&self.pending);
        let rx = match pending.take() {
            Some(rx) => rx,
            None => {
                let (tx, rx) = mpsc::sync_channel(1);
                let (resolver, host) = (self.resolver.clone(), host.to_string());
                std::thread::Builder::new()
                    .name("alert-resolve".into())
                    .spawn(move || {
                        let _ = tx.send(resolver(&host, port));
                    })
                    .map_err(|e| {
                        std::io::Error::other(format!("cannot start a resolver thread: {e}"))
                    })?;
                rx
            }
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Ok(addrs)) => Ok(addrs),
            Ok(Err(e)) => Err(std::io::Error::new(
                e.kind(),
                format!("cannot resolve {host}: {e}"),
            )),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                *pending = Some(rx);
                Err(std::io::Error::other(format!(
                    "timed out resolving {host} (timeout {} ms; an IP address in the url avoids the lookup)",
                    timeout.as_millis()
                )))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(std::io::Error::other(format!(
                "cannot resolve {host}: the resolver thread died"
            ))),
        }
    }
}

/// The webhook sink's transport.
pub struct Webhook {
    pub url: HttpUrl,
    /// Budget for one attempt: resolve, connect, TLS, send, and the
    /// response's status and headers.
    pub timeout: Duration,
    shape: Shape,
    /// Whom https trusts, for the message when a certificate is refused.
    trusting: &'static str,
    agent: ureq::Agent,
    lookup: Arc<Lookup>,
}

impl Webhook {
    pub fn new(url: HttpUrl, timeout: Duration, shape: Shape, trust: &Trust) -> Webhook {
        Webhook::with_resolver(
            url,
            timeout,
            shape,
            trust,
            Arc::new(|host, port| (host, port).to_socket_addrs().map(Iterator::collect)),
        )
    }

    pub fn with_resolver(
        url: HttpUrl,
        timeout: Duration,
        shape: Shape,
        trust: &Trust,
        resolver: HostLookup,
    ) -> Webhook {
        let roots: Vec<ureq::tls::Certificate<'static>> = match trust {
            // Read only for https: a plain-http sink needs no store.
            Trust::System if url.tls => system_roots(&url),
            Trust::System => Vec::new(),
            Trust::Only(ders) => ders
                .iter()
                .map(|d| ureq::tls::Certificate::from_der(d).to_owned())
                .collect(),
        };
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
            .build();
        let config = ureq::Agent::config_builder()
            // Statuses are read here: 4xx is permanent, 5xx is retried.
            .http_status_as_error(false)
            .max_redirects(0)
            // A proxy from the environment would silently reroute alerts.
            .proxy(None)
            .user_agent(format!("allowdns/{}", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build();
        let lookup = Arc::new(Lookup {
            resolver,
            pending: Mutex::new(None),
            attempt: Mutex::new((Instant::now(), timeout)),
        });
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            SharedLookup(lookup.clone()),
        );
        let trusting = match trust {
            Trust::System => "the system CA store",
            Trust::Only(_) => "only the CAs in ca_file",
        };
        Webhook {
            url,
            timeout,
            shape,
            trusting,
            agent,
            lookup,
        }
    }

    /// The body for one notification, in the receiver's shape.
    pub fn render(&self, n: &Notification, dropped: u64) -> String {
        self.shape.render(n, dropped)
    }

    /// POSTs `body`; Ok on a 2xx final status. Never takes past `deadline`
    /// nor past `timeout`, resolving a host name included.
    pub fn post(&mut self, body: &str, deadline: Instant) -> Result<(), SendError> {
        let deadline = deadline.min(Instant::now() + self.timeout);
        let budget = left(deadline)?;
        *lock(&self.lookup.attempt) = (deadline, self.timeout);
        let sent = self
            .agent
            .post(self.url.to_string())
            .config()
            .timeout_global(Some(budget))
            .build()
            .header("Content-Type", "application/json")
            .send(body);
        let response =
            sent.map_err(|e| SendError::retry(describe(e, self.timeout, self.trusting)))?;
        let status = response.status();
        let line = format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or_default()
        );
        let line = line.trim_end();
        match status.as_u16() {
            200..=299 => Ok(()),
            // Worth retrying: timeouts, rate limits, server trouble.
            408 | 429 | 500..=599 => Err(SendError::retry(format!("answered '{line}'"))),
            _ => Err(SendError::permanent(format!(
                "answered '{line}' (redirects are not followed; a 4xx is not retried)"
            ))),
        }
    }
}

/// The system's CA certificates; none found is logged, and every https
/// attempt then fails saying the certificate is not trusted.
fn system_roots(url: &HttpUrl) -> Vec<ureq::tls::Certificate<'static>> {
    let found = rustls_native_certs::load_native_certs();
    for e in found.errors.iter().take(3) {
        tracing::warn!("alert delivery: webhook {url}: reading the system CA store: {e}");
    }
    if found.certs.is_empty() {
        tracing::error!(
            "alert delivery: webhook {url}: no CA certificates in the system store; \
             https will fail (install ca-certificates, or set alerts.notify.webhook.ca_file)"
        );
    }
    found
        .certs
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect()
}

/// One failed attempt in words: which phase timed out, or what TLS refused.
fn describe(e: ureq::Error, timeout: Duration, trusting: &str) -> String {
    let ms = timeout.as_millis();
    match e {
        ureq::Error::Timeout(ureq::Timeout::Global) => format!("timed out (timeout {ms} ms)"),
        ureq::Error::Timeout(phase) => format!("timed out ({phase}; timeout {ms} ms)"),
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "closed the connection without a response".to_string()
        }
        ureq::Error::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            format!("timed out ({e}; timeout {ms} ms)")
        }
        ureq::Error::Io(e) => match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(tls) => format!("TLS refused: {tls} (trusting {trusting})"),
            None => e.to_string(),
        },
        ureq::Error::Rustls(e) => format!("TLS refused: {e} (trusting {trusting})"),
        ureq::Error::Tls(e) => format!("TLS refused: {e}"),
        other => other.to_string(),
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// Accepts one connection and reads from it up to `end` (a request's
    /// body ends with it), within 10 s.
    pub(in super::super) fn accept_request(
        listener: &TcpListener,
        end: &[u8],
    ) -> (TcpStream, Vec<u8>) {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(end) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        (s, got)
    }

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
    fn slack_text_cannot_carry_markup() {
        assert_eq!(
            slack_escape("a <https://evil.example|click> & b"),
            "a &lt;https://evil.example|click&gt; &amp; b"
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let err = |raw: &str| HttpUrl::parse(raw).unwrap_err().to_string();
        let u = HttpUrl::parse("https://hooks.slack.com/services/T0/B0/X").unwrap();
        assert_eq!((u.tls, u.port), (true, 443));
        assert_eq!(u.to_string(), "https://hooks.slack.com/services/T0/B0/X");
        assert_eq!(
            HttpUrl::parse("https://h:8443/").unwrap().to_string(),
            "https://h:8443/"
        );
        for (url, why) in [
            ("ftp://h/", "scheme 'ftp'"),
            ("127.0.0.1:9000", "not a URL"),
            ("http://:80/", "no host"),
            ("http:///x", "no host"),
            ("http://h:0/", "port '0'"),
            ("http://h:99999/", "port '99999'"),
            ("http://h:x/", "port 'x'"),
            ("http://u:p@h/", "user:password@"),
            ("http://h/#top", "fragment"),
            ("http://bad_host/", "'bad_host' is not a valid host"),
            ("http://[::1/", "without ']'"),
            ("http://[1.2.3.4]/", "not an IPv6"),
            ("http://h/a b", "spaces"),
        ] {
            assert!(err(url).contains(why), "{url}: {}", err(url));
        }
    }

    #[test]
    fn posts_json_and_reads_the_status() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            // One connection a request: a kept-alive one could carry the
            // second request before this server closes it, which resets it.
            let mut replies = [
                "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
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
            Shape::Json,
            &Trust::System,
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
        let lower = requests[0].to_ascii_lowercase();
        assert!(
            lower.contains(&format!("\r\nhost: 127.0.0.1:{port}\r\n")),
            "{lower}"
        );
        assert!(lower.contains("\r\ncontent-type: application/json\r\n"));
        assert!(lower.contains("\r\ncontent-length: 7\r\n"));
    }

    #[test]
    fn a_receiver_that_never_answers_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut hook = Webhook::new(
            HttpUrl::parse(&format!("http://127.0.0.1:{port}/")).unwrap(),
            Duration::from_millis(200),
            Shape::Json,
            &Trust::System,
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
        assert!(e.message.contains("refused"), "{e:?}");
    }

    /// Answers one request with `pieces`, each written after its pause, then closes.
    fn answer_in_pieces(
        pieces: Vec<(u64, &'static [u8])>,
    ) -> (Webhook, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = accept_request(&listener, b"{}");
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
            Shape::Json,
            &Trust::System,
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
            e.permanent && e.message.contains("'404 Not Found'"),
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
        let mut pieces: Vec<(u64, &'static [u8])> = vec![(0, b"HTTP/1.1 200 OK\r\nX-Slow: ")];
        pieces.extend(std::iter::repeat_n((100, &b"a"[..]), 30));
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
    fn a_reply_that_is_not_http_is_retried() {
        let e = post(vec![(
            0,
            b"SSH-2.0-OpenSSH
",
        )])
        .unwrap_err();
        assert!(!e.permanent, "{e:?}");
        let e = post(vec![(0, b"")]).unwrap_err();
        assert!(!e.permanent, "{e:?}");
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
            Shape::Json,
            &Trust::System,
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
        assert!(e.message.contains("refused"), "{e:?}");
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
            Shape::Json,
            &Trust::System,
            Arc::new(move |_, _| Ok(vec![hole_addr, good_addr])),
        );
        let started = Instant::now();
        hook.post("{}", Instant::now() + Duration::from_secs(10))
            .unwrap();
        // The black hole took its share (ureq gives the first address the
        // largest), and the second address was still reached within the
        // attempt's budget (plus scheduling slack on a loaded machine).
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        server.join().unwrap();
    }
}
