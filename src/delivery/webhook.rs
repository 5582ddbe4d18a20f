//! The webhook sink: one HTTP/1.1 POST of JSON per notification, over a
//! plain TCP connection with a deadline on every step.
//!
//! Plain `http://` only: allowdns carries no TLS stack. Slack and Telegram
//! want https, so they are reached through a relay (usually on localhost)
//! that also holds their tokens; see README, "Alert delivery".

use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::SendError;

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
    pub fn parse(raw: &str) -> Result<HttpUrl, String> {
        if raw.is_empty() {
            return Err("is empty (expected http://HOST[:PORT]/PATH)".into());
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "'{raw}' contains spaces or control characters (percent-encode them)"
            ));
        }
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Err(format!(
                "'{raw}' is not a URL (expected http://HOST[:PORT]/PATH)"
            ));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "http" => {}
            "https" => {
                return Err(format!(
                    "'{raw}': https is not supported (allowdns has no TLS client); \
                     send to a relay on localhost over http (README, \"Alert delivery\")"
                ));
            }
            other => {
                return Err(format!(
                    "'{raw}': scheme '{other}' is not supported (expected http)"
                ));
            }
        }
        let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if path.contains('#') {
            return Err(format!(
                "'{raw}' has a #fragment, which is never sent; remove it"
            ));
        }
        if authority.contains('@') {
            return Err(format!(
                "'{raw}': user:password@ is not supported; put a token in the path or query"
            ));
        }
        if authority.is_empty() {
            return Err(format!("'{raw}' has no host"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((v6, after)) = bracketed.split_once(']') else {
                return Err(format!("'{raw}': '[' without ']' around the IPv6 address"));
            };
            if v6.parse::<Ipv6Addr>().is_err() {
                return Err(format!("'{raw}': '{v6}' is not an IPv6 address"));
            }
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return Err(format!("'{raw}': unexpected '{after}' after ']'")),
                },
            };
            (v6.to_string(), port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if host.is_empty() {
                return Err(format!("'{raw}' has no host"));
            }
            if host.parse::<IpAddr>().is_err() && !is_host_name(host) {
                return Err(format!(
                    "'{raw}': '{host}' is not a valid host name or IPv4 address (IPv6 goes in [brackets])"
                ));
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => {
                    return Err(format!(
                        "'{raw}': port '{p}' is not a number from 1 to 65535"
                    ));
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

/// The webhook sink's transport.
pub struct Webhook {
    pub url: HttpUrl,
    /// Budget for one attempt: connect, send and the response's status line.
    pub timeout: Duration,
}

impl Webhook {
    /// POSTs `body`; Ok on a 2xx status. Never takes past `deadline` (nor
    /// past `timeout`), except for resolving a host name, which the system
    /// resolver bounds.
    pub fn post(&self, body: &str, deadline: Instant) -> Result<(), SendError> {
        let deadline = deadline.min(Instant::now() + self.timeout);
        let addrs: Vec<SocketAddr> = (self.url.host.as_str(), self.url.port)
            .to_socket_addrs()
            .map_err(|e| SendError::retry(format!("cannot resolve {}: {e}", self.url.host)))?
            .collect();
        let mut stream = None;
        let mut last_error = format!("{} resolves to no address", self.url.host);
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, left(deadline)?) {
                Ok(s) => {
                    stream = Some(s);
                    break;
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
        // Only the status line matters; the rest is left unread.
        let mut head = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
            stream
                .set_read_timeout(Some(left(deadline)?))
                .map_err(|e| SendError::retry(format!("socket: {e}")))?;
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
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
        let line = String::from_utf8_lossy(&head);
        let line = line.lines().next().unwrap_or_default();
        let status = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse::<u16>().ok());
        match status {
            Some(200..=299) => Ok(()),
            // Worth retrying: timeouts, rate limits, server trouble.
            Some(408 | 429 | 500..=599) => Err(SendError::retry(format!("answered '{line}'"))),
            Some(_) => Err(SendError::permanent(format!(
                "answered '{line}' (redirects are not followed; a 4xx is not retried)"
            ))),
            None if head.is_empty() => Err(SendError::retry(
                "closed the connection without a response".to_string(),
            )),
            None => Err(SendError::retry(format!(
                "answered something that is not HTTP: '{line}'"
            ))),
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
        let err = |raw: &str| HttpUrl::parse(raw).unwrap_err();
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
        let hook = Webhook {
            url: HttpUrl::parse(&format!("http://127.0.0.1:{port}/in")).unwrap(),
            timeout: Duration::from_secs(5),
        };
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
        let hook = Webhook {
            url: HttpUrl::parse(&format!("http://127.0.0.1:{port}/")).unwrap(),
            timeout: Duration::from_millis(200),
        };
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
}
