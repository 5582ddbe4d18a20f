use super::*;

/// The charging before its fixes, kept as a double: the positive control
/// that the attacks replayed here got through without them.
struct Legacy;

impl Charging for Legacy {
    fn domain<'k>(&self, key: &'k str, _: PatternFacts) -> &'k str {
        registrable(key)
    }
    fn repeats_free(&self) -> bool {
        true
    }
    fn type_bits(&self, _: usize) -> f32 {
        0.0
    }
    fn label_key<'l>(&self, label: &'l [u8]) -> std::borrow::Cow<'l, [u8]> {
        std::borrow::Cow::Owned(label.to_ascii_lowercase())
    }
    fn seen_label_bits(&self, _: f32, _: f32) -> f32 {
        SEEN_LABEL_BITS
    }
    fn tracks_shapes(&self) -> bool {
        false
    }
}

/// The budgets under the double (`legacy`) or the charging in force.
fn budgets(legacy: bool) -> Budgets {
    match legacy {
        true => Budgets::with_charging(Box::new(Legacy)),
        false => Budgets::default(),
    }
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn key(s: &str) -> QueryKey {
    QueryKey::of(&name(s)).unwrap()
}

fn charge(b: &Budgets, limits: &Limits, s: &str) -> Verdict {
    let key = key(s);
    let pattern = format!("*.{}", registrable(key.as_str()));
    b.charge(
        &"a".into(),
        limits,
        &name(s),
        &key,
        PatternFacts::of(&pattern),
        5,
    )
}

#[test]
fn agents_whose_policy_went_are_dropped() {
    let b = Budgets::default();
    charge(&b, &Limits::default(), "x.cdn.test");
    assert_eq!(b.agents(), 1);
    b.retain(|agent| agent == "a");
    assert_eq!(b.agents(), 1);
    b.retain(|_| false);
    assert_eq!(b.agents(), 0);
}

#[test]
fn label_bits_bound_the_alphabet() {
    assert_eq!(label_bits(b"0123"), 4.0 * 11f32.log2());
    assert!((label_bits(b"deadbeef") - 8.0 * 17f32.log2()).abs() < 1e-3);
    assert!((label_bits(b"r4---sn-5hne6nsz") - 16.0 * 37f32.log2()).abs() < 1e-3);
    assert!(label_bits(b"aBc") > label_bits(b"abc"));
}

#[test]
fn a_tunnel_hits_the_hard_limit_then_cools_down_and_re_asks_wait_for_the_drain() {
    let b = Budgets::default();
    let limits = Limits::from_bytes(true, 1024, 2048, 0, 600);
    assert_eq!(charge(&b, &limits, "www.cdn.test"), Verdict::Pass(None));
    let mut passed = 0;
    let mut first_deny = None;
    for i in 0..1000 {
        let n = format!("{:0>60}.t.cdn.test", format!("{i:x}"));
        match charge(&b, &limits, &n) {
            Verdict::Pass(_) => passed += 1,
            Verdict::Deny => {
                first_deny.get_or_insert(i);
            }
        }
    }
    // 60 hex-ish chars ~ 245 bits + overhead per name: ~64 names fit in 16 kbit.
    assert!((40..80).contains(&passed), "{passed}");
    let _ = first_deny.unwrap();
    // A seen name asked upstream again carries a choice too: with the
    // bucket full and no drain it waits; other domains are untouched.
    assert_eq!(charge(&b, &limits, "www.cdn.test"), Verdict::Deny);
    assert!(matches!(
        charge(&b, &limits, "new.other.test"),
        Verdict::Pass(_)
    ));
    assert_eq!(charge(&b, &limits, "tiny.cdn.test"), Verdict::Deny);
}

#[test]
fn soft_limit_marks_and_repeated_names_are_cheap() {
    let b = Budgets::default();
    let limits = Limits::from_bytes(true, 512, 100_000, 0, 600);
    let mut marked = 0;
    for i in 0..200 {
        if charge(&b, &limits, &format!("img{}.static.shop.test", i % 3)) != Verdict::Pass(None) {
            marked += 1;
        }
    }
    assert_eq!(
        marked, 0,
        "three names, asked upstream again and again, cost ~12 bits a time"
    );
    let mut marked = 0;
    for i in 0..200 {
        if charge(&b, &limits, &format!("{i:08x}.shop.test")) == Verdict::Pass(Some(Mark::Soft)) {
            marked += 1;
        }
    }
    assert!(marked > 150, "{marked}");
}

#[test]
fn the_budget_drains() {
    let b = Budgets::default();
    // Drains 1 KiB per second: the full budget is gone in a second.
    let limits = Limits::from_bytes(true, 512, 1024, 60 * 1024, 0);
    for i in 0..100 {
        charge(&b, &limits, &format!("{i:0>50}.x.test"));
    }
    assert_eq!(charge(&b, &limits, "fresh000.x.test"), Verdict::Deny);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    assert!(matches!(
        charge(&b, &limits, "fresh123.x.test"),
        Verdict::Pass(None)
    ));
}

#[test]
fn the_legit_corpus_stays_under_the_soft_limit_without_any_drain() {
    let corpus = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/legit-names.txt"
    ))
    .unwrap();
    let limits = Limits {
        drain_bits_per_sec: 0.0,
        ..Limits::default()
    };
    for legacy in [true, false] {
        let b = budgets(legacy);
        for n in corpus.lines() {
            // As tests/it/exfil.rs allows them: `*.` and the zone's two labels.
            let zone = n.rsplitn(3, '.').take(2).collect::<Vec<_>>();
            let pattern = format!("*.{}.{}", zone[1], zone[0]);
            // A browser's A, AAAA and HTTPS: three questions upstream.
            for _ in 0..3 {
                let v = b.charge(
                    &"a".into(),
                    &limits,
                    &name(n),
                    &key(n),
                    PatternFacts::of(&pattern),
                    5,
                );
                if !legacy {
                    assert_eq!(v, Verdict::Pass(None), "{n}");
                }
            }
        }
        // The heaviest domain, for the docs.
        let agents = b.agents.lock().unwrap();
        let a = agents.get("a").unwrap();
        let max = a.cells[0].iter().map(|c| c.level).fold(0.0, f32::max);
        eprintln!("legacy {legacy}: heaviest cell: {} bytes", max / 8.0);
    }
}

/// Bytes of payload that got through: names passed times the bits each
/// carries, under the double and under the charging in force.
fn leaked(names: &[String], pattern: &str, payload_bits: f32) -> (f32, f32) {
    let facts = PatternFacts::of(pattern);
    let limits = Limits {
        drain_bits_per_sec: 0.0,
        ..Limits::default()
    };
    let run = |legacy: bool| {
        let b = budgets(legacy);
        let passed = names
            .iter()
            .filter(|n| {
                b.charge(&"a".into(), &limits, &name(n), &key(n), facts, 5) != Verdict::Deny
            })
            .count();
        passed as f32 * payload_bits / 8.0
    };
    (run(true), run(false))
}

const HARD: f32 = DEFAULT_HARD_BYTES as f32;

/// The tests' reproducible random numbers (Knuth's MMIX LCG).
struct Lcg(u64);

impl Lcg {
    /// The next state; its high bits are the random ones.
    fn step(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }
}

#[test]
fn letter_case_carries_no_free_information() {
    // casex.py: 3 x 63 'a's, each letter's case a bit.
    let mut rng = Lcg(7);
    let mut bit = || rng.step() >> 63 == 1;
    let names: Vec<String> = (0..3000)
        .map(|_| {
            let label = |bit: &mut dyn FnMut() -> bool| -> String {
                (0..63).map(|_| if bit() { 'A' } else { 'a' }).collect()
            };
            format!(
                "{}.{}.{}.cdn.test",
                label(&mut bit),
                label(&mut bit),
                label(&mut bit)
            )
        })
        .collect();
    let (before, after) = leaked(&names, "*.cdn.test", 189.0);
    eprintln!("case: {before} bytes before, {after} after (hard {HARD})");
    assert!(before > 4.0 * HARD, "positive control: {before}");
    assert!(after < HARD, "{after}");
}

fn under<'a>(key: &'a str, pattern: &str) -> &'a str {
    budget_domain(key, PatternFacts::of(pattern))
}

/// The charge's domain as it was worked out before the pattern's facts
/// were computed at load time, scanning the pattern per question: the
/// reference [`budget_domain`] must agree with.
fn budget_domain_by_pattern<'a>(key: &'a str, pattern: &str) -> &'a str {
    let domain = registrable(key);
    let fixed = match pattern.rfind(['*', '?']) {
        Some(at) => pattern[at..].split_once('.').map_or("", |(_, rest)| rest),
        None => return domain,
    };
    if label_count(fixed) >= label_count(domain) {
        return domain;
    }
    let public = domain.split_once('.').map_or("", |(_, suffix)| suffix);
    last_labels(key, label_count(fixed).max(label_count(public)))
}

#[test]
fn pattern_facts_computed_at_load_agree_with_scanning_the_pattern() {
    use crate::diagnostics::Diagnostics;
    use std::path::Path;
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/");
    let mut patterns: Vec<(String, PatternFacts)> = Vec::new();
    for file in ["names-policy.yaml", "policy.yaml"] {
        let path = Path::new(data).join(file);
        let source = std::fs::read_to_string(&path).unwrap();
        let mut d = Diagnostics::default();
        let policy = crate::policy::compile_source(&path, &source, &mut d)
            .unwrap_or_else(|| panic!("{file}: {:?}", d.errors().collect::<Vec<_>>()));
        for rule in policy.rules.iter().chain(policy.entries()) {
            patterns.push((rule.pattern.to_string(), rule.facts));
        }
    }
    // Shapes the fixtures may lack: a bare `*`, `?`, a wildcard
    // inside a label, several wildcards, a public suffix.
    for p in [
        "*",
        "*.github.io",
        "*.amazonaws.com",
        "img-*.cdn.shop.co.uk",
        "a?c.test",
        "*.*.example.com",
        "x*y.b.test",
        "*.co.uk",
    ] {
        patterns.push((p.to_string(), PatternFacts::of(p)));
    }
    assert!(
        patterns.iter().any(|(_, f)| f.wildcard),
        "positive control: a wildcard"
    );
    assert!(
        patterns.iter().any(|(_, f)| !f.wildcard),
        "positive control: an exact name"
    );

    let tsv = std::fs::read_to_string(format!("{data}names.tsv")).unwrap();
    let mut keys: Vec<String> = tsv
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("name\t"))
        .filter_map(|l| l.split('\t').next())
        .filter_map(|n| Name::from_ascii(n).ok())
        .filter_map(|n| QueryKey::of(&n))
        .map(|k| k.as_str().to_string())
        .collect();
    for (p, _) in &patterns {
        for fill in ["a", "a.b", "x1-y"] {
            keys.push(p.replace(['*', '?'], fill));
        }
    }
    assert!(keys.len() > 100, "{} keys", keys.len());

    let mut pooled = 0;
    for (p, facts) in &patterns {
        assert_eq!(facts.wildcard, is_wildcard(p), "{p}");
        for k in &keys {
            let old = budget_domain_by_pattern(k, p);
            assert_eq!(budget_domain(k, *facts), old, "key {k} under {p}");
            pooled += usize::from(old != registrable(k));
        }
    }
    // Positive control: the pooling branch was taken, not only the default.
    assert!(pooled > 0);
}

#[test]
fn a_wildcard_on_a_public_suffix_shares_one_budget() {
    for (key, pattern, budget) in [
        ("x.github.io", "*.github.io", "github.io"),
        ("a.b.github.io", "*.github.io", "github.io"),
        ("x.api.example.com", "*.api.example.com", "example.com"),
        ("a.b.example.com", "*.example.com", "example.com"),
        ("img-7.cdn.shop.co.uk", "img-*.cdn.shop.co.uk", "shop.co.uk"),
        ("x.co.uk", "*.co.uk", "co.uk"),
        ("a.b.test", "*", "test"),
        ("b1.s3.amazonaws.com", "*.amazonaws.com", "s3.amazonaws.com"),
        ("a.b.test", "a.b.test", "b.test"),
    ] {
        assert_eq!(under(key, pattern), budget, "{key} under {pattern}");
    }
    // psl.py: one 63-char [a-z0-9] label per name right under github.io.
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = Lcg(3);
    let names: Vec<String> = (0..2000)
        .map(|_| {
            let label: String = (0..63)
                .map(|_| ALPHABET[((rng.step() >> 33) % 36) as usize] as char)
                .collect();
            label + ".github.io"
        })
        .collect();
    let (before, after) = leaked(&names, "*.github.io", 63.0 * 36f32.log2());
    eprintln!("public suffix: {before} bytes before, {after} after (hard {HARD})");
    assert!(before > 4.0 * HARD, "positive control: {before}");
    assert!(after < HARD, "{after}");
}

#[test]
fn reused_labels_are_charged_for_the_choice_they_carry() {
    // 256 words, 8 a name: 64 bits of payload a name.
    let words: Vec<String> = (0..256).map(|i| format!("w{i:03}")).collect();
    let mut rng = Lcg(3);
    let names: Vec<String> = (0..8000)
        .map(|_| {
            let mut n = String::new();
            for _ in 0..8 {
                n.push_str(&words[(rng.step() >> 56) as usize]);
                n.push('.');
            }
            n + "cdn.test"
        })
        .collect();
    let (before, after) = leaked(&names, "*.cdn.test", 64.0);
    eprintln!("reused labels: {before} bytes before, {after} after (hard {HARD})");
    assert!(before > 2.0 * HARD, "positive control: {before}");
    assert!(after < HARD, "{after}");
}

/// A re-ask channel: 256 names paid once, then one byte of
/// the secret per question, each the choice of an already-seen name
/// (TTL 0 answers send every one upstream).
#[test]
fn re_asked_names_are_charged_for_the_choice_they_carry() {
    let names: Vec<String> = (0..=255u8).map(|i| format!("{i:02x}.cdn.test")).collect();
    let mut rng = Lcg(5);
    let secret: Vec<u8> = (0..65_536).map(|_| (rng.step() >> 56) as u8).collect();
    let asked: Vec<String> = names
        .iter()
        .cloned()
        .chain(secret.iter().map(|&byte| names[usize::from(byte)].clone()))
        .collect();
    // 8 bits a question, the 256 purchases carry none.
    let (before, after) = leaked(&asked, "*.cdn.test", 8.0);
    let (before, after) = (before - 256.0, after - 256.0);
    eprintln!("re-asked names: {before} bytes before, {after} after (hard {HARD})");
    assert!(before >= 65_536.0, "positive control: {before}");
    assert!(after < HARD, "{after}");
}

/// Tunnel-shaped names (300 unique 40-hex labels, ~6 KB, under the soft
/// limit) are flagged within the first few; no legitimate name is.
#[test]
fn tunnel_shaped_names_are_flagged_early_and_the_corpus_never() {
    let facts = PatternFacts::of("*.cdn.test");
    let mut rng = Lcg(9);
    let names: Vec<String> = (0..300)
        .map(|_| {
            let label: String = (0..40)
                .map(|_| b"0123456789abcdef"[(rng.step() >> 60) as usize] as char)
                .collect();
            format!("{label}.t.cdn.test")
        })
        .collect();
    let first_mark = |legacy: bool| {
        let b = budgets(legacy);
        names.iter().position(|n| {
            b.charge(&"a".into(), &Limits::default(), &name(n), &key(n), facts, 5)
                != Verdict::Pass(None)
        })
    };
    assert_eq!(first_mark(true), None, "positive control: silent before");
    assert_eq!(first_mark(false), Some(SHAPE_NAMES as usize - 1));

    let corpus = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/legit-names.txt"
    ))
    .unwrap();
    let (mut shaped, mut top) = (0, 0.0f32);
    for n in corpus.lines() {
        let bits = n
            .split('.')
            .map(|l| run_bits(l.as_bytes()))
            .fold(0.0, f32::max);
        top = top.max(bits);
        shaped += usize::from(bits > SHAPE_RUN_BITS);
    }
    eprintln!(
        "tunnel shape: {shaped} of {} corpus names (longest run {top} bits)",
        corpus.lines().count()
    );
    assert_eq!(shaped, 0);
    assert!(top > 100.0, "positive control: the corpus has long ids");
}
