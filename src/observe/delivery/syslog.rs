//! The syslog sink: one datagram per notification, severity warning, to a
//! Unix datagram socket (`/dev/log` by default) or a UDP collector.
//!
//! Two formats. RFC 3164 (`<PRI>Mmm dd hh:mm:ss allowdns[PID]: MSG`) is what
//! syslog(3) writes to `/dev/log`, and the only one journald parses there
//! (systemd issue #19251); it is the default for `socket`. RFC 5424
//! (`<PRI>1 TIMESTAMP HOST allowdns PID MSGID - MSG`, MSGID `denied_lookups`,
//! `stripped_addresses` or `exfiltration`) is the default
//! for a UDP `address`. Timestamps are UTC. MSG is the same JSON object the
//! webhook receives, on one line, so a SIEM (Wazuh's JSON decoder, rsyslog's
//! mmjsonparse) reads every field.

// Hand-written framing, not the `syslog` crate: its RFC 5424 formatter takes a numeric MSGID (ours are names such as `denied_lookups`) and its RFC 3164 one stamps local time (ours UTC).
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::SendError;
use super::settings::SettingError;

/// Facility names as syslog.conf spells them, with their codes.
const FACILITIES: [(&str, u8); 20] = [
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];
/// RFC 5424 severity 4: a denied lookup is worth a look, not a page at night.
const SEVERITY_WARNING: u8 = 4;
const APP_NAME: &str = "allowdns";

/// A facility name to its code; errors list the valid names.
pub fn facility(name: &str) -> Result<u8, SettingError> {
    FACILITIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, code)| *code)
        .ok_or_else(|| {
            let names: Vec<&str> = FACILITIES.iter().map(|(n, _)| *n).collect();
            SettingError::Facility {
                name: name.to_string(),
                expected: names.join(", "),
            }
        })
}

/// The facility's name, for log lines.
pub fn facility_name(code: u8) -> &'static str {
    FACILITIES
        .iter()
        .find(|(_, c)| *c == code)
        .map_or("?", |(n, _)| *n)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Rfc3164,
    Rfc5424,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Rfc3164 => "rfc3164",
            Format::Rfc5424 => "rfc5424",
        })
    }
}

impl Format {
    pub fn parse(raw: &str) -> Result<Format, SettingError> {
        match raw {
            "rfc3164" => Ok(Format::Rfc3164),
            "rfc5424" => Ok(Format::Rfc5424),
            _ => Err(SettingError::Format(raw.to_string())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A local syslog daemon's Unix datagram socket.
    Socket(PathBuf),
    /// A collector over UDP.
    Udp(SocketAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Socket(path) => write!(f, "unix:{}", path.display()),
            Target::Udp(addr) => write!(f, "udp://{addr}"),
        }
    }
}

/// Validated syslog settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogSettings {
    pub target: Target,
    pub facility: u8,
    pub format: Format,
}

/// Formats one message. `host` is left out of RFC 3164 on a local socket, as
/// syslog(3) does: the daemon adds its own. `msg_id` is RFC 5424's MSGID
/// (the event kind): it lets a collector route these without parsing MSG.
pub fn format_message(
    settings: &SyslogSettings,
    host: Option<&str>,
    pid: u32,
    ts: SystemTime,
    msg_id: &str,
    msg: &str,
) -> String {
    let pri = u16::from(settings.facility) * 8 + u16::from(SEVERITY_WARNING);
    match settings.format {
        Format::Rfc3164 => {
            // "2024-01-02T03:04:05Z" -> "Jan  2 03:04:05"
            let iso = humantime::format_rfc3339_seconds(ts).to_string();
            let month = iso
                .get(5..7)
                .and_then(|m| m.parse::<usize>().ok())
                .and_then(|m| {
                    [
                        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                        "Nov", "Dec",
                    ]
                    .get(m.wrapping_sub(1))
                })
                .copied()
                .unwrap_or("Jan");
            let day = iso.get(8..10).unwrap_or("01").trim_start_matches('0');
            let time = iso.get(11..19).unwrap_or("00:00:00");
            let host = match (&settings.target, host) {
                (Target::Udp(_), Some(h)) => format!("{} ", header_safe(h)),
                _ => String::new(),
            };
            format!("<{pri}>{month} {day:>2} {time} {host}{APP_NAME}[{pid}]: {msg}")
        }
        Format::Rfc5424 => format!(
            "<{pri}>1 {} {} {APP_NAME} {pid} {msg_id} - {msg}",
            humantime::format_rfc3339_millis(ts),
            host.map_or_else(|| "-".to_string(), header_safe),
        ),
    }
}

/// Header fields are printable ASCII without spaces (RFC 5424 PRINTUSASCII).
fn header_safe(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if cleaned.is_empty() {
        "-".to_string()
    } else {
        cleaned
    }
}

/// The syslog sink's transport; the socket is opened once and reused.
pub struct Syslog {
    pub settings: SyslogSettings,
    /// This machine's name, for the header.
    pub host: Option<String>,
    /// Budget for one send (a full /dev/log queue blocks a datagram send).
    pub timeout: Duration,
    socket: Option<Socket>,
}

enum Socket {
    Unix(UnixDatagram),
    Udp(UdpSocket),
}

impl Syslog {
    pub fn new(settings: SyslogSettings, host: Option<String>, timeout: Duration) -> Syslog {
        Syslog {
            settings,
            host,
            timeout,
            socket: None,
        }
    }

    pub fn send(&mut self, msg_id: &str, msg: &str, deadline: Instant) -> Result<(), SendError> {
        let text = format_message(
            &self.settings,
            self.host.as_deref(),
            std::process::id(),
            SystemTime::now(),
            msg_id,
            msg,
        );
        let budget = deadline
            .min(Instant::now() + self.timeout)
            .saturating_duration_since(Instant::now());
        if budget.is_zero() {
            return Err(SendError::retry("timed out".to_string()));
        }
        let result = match (self.socket.take(), &self.settings.target) {
            (Some(socket), _) => Ok(socket),
            (None, Target::Socket(_)) => UnixDatagram::unbound().map(Socket::Unix),
            (None, Target::Udp(addr)) => {
                let any: SocketAddr = if addr.is_ipv4() {
                    "0.0.0.0:0".parse().expect("static address")
                } else {
                    "[::]:0".parse().expect("static address")
                };
                UdpSocket::bind(any).map(Socket::Udp)
            }
        };
        let socket = result.map_err(|e| SendError::retry(format!("cannot open a socket: {e}")))?;
        let sent = match (&socket, &self.settings.target) {
            (Socket::Unix(s), Target::Socket(path)) => s
                .set_write_timeout(Some(budget))
                .and_then(|()| s.send_to(text.as_bytes(), path)),
            (Socket::Udp(s), Target::Udp(addr)) => s
                .set_write_timeout(Some(budget))
                .and_then(|()| s.send_to(text.as_bytes(), addr)),
            _ => unreachable!("the socket is opened for its target"),
        };
        match sent {
            Ok(_) => {
                self.socket = Some(socket);
                Ok(())
            }
            // The socket is dropped: a fresh one next time.
            Err(e) => Err(SendError::retry(format!("send: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(target: Target, format: Format) -> SyslogSettings {
        SyslogSettings {
            target,
            facility: facility("local3").unwrap(),
            format,
        }
    }

    #[test]
    fn facilities() {
        assert_eq!(facility("auth"), Ok(4));
        assert_eq!(facility("local7"), Ok(23));
        assert!(
            facility("security")
                .unwrap_err()
                .to_string()
                .contains("authpriv")
        );
        assert_eq!(facility_name(4), "auth");
    }

    #[test]
    fn both_formats() {
        let ts = SystemTime::UNIX_EPOCH + Duration::from_millis(1_704_164_645_250);
        let local = settings(Target::Socket("/dev/log".into()), Format::Rfc3164);
        assert_eq!(
            format_message(&local, Some("box"), 42, ts, "denied_lookups", "{}"),
            "<156>Jan  2 03:04:05 allowdns[42]: {}"
        );
        let udp = Target::Udp("127.0.0.1:514".parse().unwrap());
        assert_eq!(
            format_message(
                &settings(udp.clone(), Format::Rfc3164),
                Some("box"),
                42,
                ts,
                "denied_lookups",
                "{}"
            ),
            "<156>Jan  2 03:04:05 box allowdns[42]: {}"
        );
        assert_eq!(
            format_message(
                &settings(udp, Format::Rfc5424),
                Some("my box"),
                42,
                ts,
                "denied_lookups",
                "{}"
            ),
            "<156>1 2024-01-02T03:04:05.250Z mybox allowdns 42 denied_lookups - {}"
        );
    }

    #[test]
    fn sends_over_udp() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        collector
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let target = Target::Udp(collector.local_addr().unwrap());
        let mut sink = Syslog::new(
            settings(target, Format::Rfc5424),
            Some("h".into()),
            Duration::from_secs(1),
        );
        sink.send(
            "denied_lookups",
            "{\"x\":1}",
            Instant::now() + Duration::from_secs(5),
        )
        .unwrap();
        let mut buf = [0u8; 2048];
        let n = collector.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(got.starts_with("<156>1 "), "{got}");
        assert!(
            got.ends_with(&format!(
                " h allowdns {} denied_lookups - {{\"x\":1}}",
                std::process::id()
            )),
            "{got}"
        );
    }

    #[test]
    fn a_missing_socket_is_an_error_to_retry() {
        let mut sink = Syslog::new(
            settings(
                Target::Socket("/nonexistent/allowdns-test.sock".into()),
                Format::Rfc3164,
            ),
            None,
            Duration::from_secs(1),
        );
        let e = sink
            .send(
                "denied_lookups",
                "{}",
                Instant::now() + Duration::from_secs(5),
            )
            .unwrap_err();
        assert!(!e.permanent && e.message.contains("send"), "{e:?}");
    }
}
