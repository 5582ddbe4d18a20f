//! Micro-benchmark: the special-purpose check on every handed-out address.
//! `special()` (binary search over the table built once) against peers
//! measured in the same run: std's `is_private || is_loopback ||
//! is_link_local` (fewer ranges, no IPv6 embedding) and a linear scan over
//! the same ranges as `IpNet`s (the naive way).
//!
//! Run: `cargo bench --bench special`

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use allowdns::policy::special::{drop_list, special};
use ipnet::IpNet;

fn time(iterations: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..10_000 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}

fn main() {
    let mut nets: Vec<IpNet> = drop_list(false, &[]);
    nets.extend(drop_list(true, &[]));
    let addrs: Vec<IpAddr> = [
        "203.0.113.10",
        "10.9.9.9",
        "169.254.169.254",
        "8.8.8.8",
        "2001:db8::1",
        "fe80::1",
        "2606:4700::6810:84e5",
        "64:ff9b::808:808",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let n = 2_000_000;
    let mut i = 0usize;
    let mut next = || {
        i = (i + 1) % addrs.len();
        addrs[i]
    };
    let table = time(n, || {
        black_box(special(black_box(next())));
    });
    let std = time(n, || {
        let ip = black_box(next());
        black_box(match ip {
            IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_loopback() || v6.is_unicast_link_local(),
        });
    });
    let linear = time(n / 10, || {
        let ip = black_box(next());
        black_box(nets.iter().any(|n| n.contains(&ip)));
    });
    println!("{} IPv4 and IPv6 CIDRs in the drop list", nets.len());
    println!("special() table lookup   {table:>7.1} ns");
    println!(
        "std is_private etc.      {std:>7.1} ns  (ratio {:.2})",
        table / std
    );
    println!(
        "linear scan over CIDRs   {linear:>7.1} ns  (ratio {:.2})",
        table / linear
    );
}
