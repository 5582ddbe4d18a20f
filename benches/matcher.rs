//! Micro-benchmark: the cost of one policy decision must not grow with the
//! number of rules. Builds matchers of 10 to 100,000 rules (exact names,
//! `*.` suffixes and a few inner-wildcard globs) and times lookups of allowed,
//! denied and deep names.
//!
//! Run: `cargo bench --bench matcher`

use std::hint::black_box;
use std::time::Instant;

use allowdns::policy::matcher::Matcher;

fn build(rules: usize) -> Matcher {
    let mut m = Matcher::default();
    for i in 0..rules {
        let pattern = match i % 100 {
            0..=59 => format!("api{i}.service{}.example.com", i % 997),
            60..=98 => format!("*.tenant{i}.example.net"),
            // 1% globs with an inner wildcard.
            _ => format!("edge-*-{i}.cdn.example.org"),
        };
        m.insert(&pattern, i as u32);
    }
    m
}

fn main() {
    let names = [
        ("exact hit", "api30.service30.example.com".to_string()),
        (
            "suffix hit, 4 labels deep",
            "a.b.c.tenant60.example.net".to_string(),
        ),
        ("glob hit", "edge-7-99.cdn.example.org".to_string()),
        ("miss, 3 labels", "sketchy-mirror.example.com".to_string()),
        (
            "miss, 12 labels (tunnel)",
            "x1.x2.x3.x4.x5.x6.x7.x8.x9.tunnel.evil.example".to_string(),
        ),
    ];
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10}",
        "lookup", "10 rules", "1k rules", "10k rules", "100k rules"
    );
    let sizes = [10, 1_000, 10_000, 100_000];
    let matchers: Vec<Matcher> = sizes.iter().map(|&n| build(n)).collect();
    for (label, name) in &names {
        let mut row = format!("{label:<28}");
        for m in &matchers {
            let iterations = 2_000_000u32;
            // Warm up caches and branch predictors.
            for _ in 0..10_000 {
                black_box(m.lookup(black_box(name)));
            }
            let start = Instant::now();
            for _ in 0..iterations {
                black_box(m.lookup(black_box(name)));
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(iterations);
            row.push_str(&format!(" {:>7.1} ns", ns));
        }
        println!("{row}");
    }
}
