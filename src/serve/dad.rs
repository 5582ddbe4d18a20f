//! IPv6 duplicate address detection: an address just added to an interface
//! is tentative for a second or two, and binding it fails with
//! EADDRNOTAVAIL. `serve` waits for it (bounded) instead of failing; `run`
//! waits before starting CMD.

use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

/// The longest a bind waits for a tentative address.
pub const WAIT: Duration = Duration::from_secs(5);

/// `IFA_F_TENTATIVE` in the flags column of `if_inet6`.
const TENTATIVE: u32 = 0x40;

/// The tentative addresses listed in an `if_inet6` file (`/proc/PID/net/if_inet6`).
pub fn tentative_addresses(file: &Path) -> Vec<Ipv6Addr> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(4)?, 16).ok()?;
            let addr = u128::from_str_radix(f.first()?, 16).ok()?;
            (flags & TENTATIVE != 0).then(|| Ipv6Addr::from(addr))
        })
        .collect()
}

/// Whether `addr` is tentative in this thread's network namespace.
fn is_tentative(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V6(v6) => {
            tentative_addresses(Path::new("/proc/thread-self/net/if_inet6")).contains(v6.ip())
        }
        SocketAddr::V4(_) => false,
    }
}

/// Runs `bind` once; when it fails with EADDRNOTAVAIL on an address that is
/// tentative, says so and tries again until the address is ready or [`WAIT`] is over.
pub fn bind_when_ready<T>(
    addr: SocketAddr,
    mut bind: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let start = Instant::now();
    let mut said = false;
    loop {
        match bind() {
            Err(e)
                if e.kind() == io::ErrorKind::AddrNotAvailable
                    && start.elapsed() < WAIT
                    && is_tentative(&addr) =>
            {
                if !said {
                    tracing::warn!(
                        "{addr}: the address is tentative (IPv6 duplicate address detection); \
                         waiting up to {} s for it",
                        WAIT.as_secs()
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(bound) => {
                if said {
                    tracing::info!("{addr}: ready after {} ms", start.elapsed().as_millis());
                }
                return Ok(bound);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tentative_flag_is_read_from_if_inet6() {
        let file = std::env::temp_dir().join(format!("allowdns-dad-unit-{}", std::process::id()));
        std::fs::write(
            &file,
            "00000000000000000000000000000001 01 80 10 80       lo\n\
             20010db8000000000000000000000005 04 40 00 c0     eth0\n\
             fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n",
        )
        .unwrap();
        let got = tentative_addresses(&file);
        let _ = std::fs::remove_file(&file);
        assert_eq!(got, ["2001:db8::5".parse::<Ipv6Addr>().unwrap()]);
    }
}
