//! The compiled allowlist of one policy: pure data, no I/O.
//!
//! A decision costs one hash lookup per label of the query name, whatever the
//! number of rules:
//! - `exact`: names that match only themselves;
//! - `suffix`: `*.x` patterns, keyed by `x`, which match any depth below `x`
//!   but not `x` itself;
//! - `globs`: patterns with inner wildcards (`api-*.x`), bucketed by the
//!   longest whole-label suffix every match must end in, so wildmatch only runs
//!   on the few globs that share the query's suffix.

// foldhash: a decision hashes every suffix of the name; SipHash was 1% of a denial.
use foldhash::HashMap;
use std::collections::hash_map::Entry;

use wildmatch::WildMatch;

/// Index of a rule in its policy's rule list.
pub type RuleId = u32;

#[derive(Debug, Default)]
pub struct Matcher {
    exact: HashMap<Box<str>, RuleId>,
    suffix: HashMap<Box<str>, RuleId>,
    globs: HashMap<Box<str>, Vec<(WildMatch, RuleId)>>,
}

/// How a canonical pattern key is matched.
#[derive(Debug, PartialEq, Eq)]
pub enum PatternKind<'a> {
    Exact(&'a str),
    /// `*.x`: everything strictly below `x`.
    Suffix(&'a str),
    /// Anything else with `*` or `?`; the bucket is its whole-label suffix.
    Glob {
        bucket: &'a str,
    },
}

pub fn classify(key: &str) -> PatternKind<'_> {
    if !key.contains(['*', '?']) {
        return PatternKind::Exact(key);
    }
    if let Some(rest) = key.strip_prefix("*.")
        && !rest.contains(['*', '?'])
    {
        return PatternKind::Suffix(rest);
    }
    let last = key.rfind(['*', '?']).map_or(0, |i| i + 1);
    let tail = &key[last..];
    let bucket = tail.find('.').map_or("", |i| &tail[i + 1..]);
    PatternKind::Glob { bucket }
}

impl Matcher {
    /// Adds a canonical pattern key. Returns the rule already holding the same
    /// pattern, if any; the first one keeps it.
    pub fn insert(&mut self, key: &str, id: RuleId) -> Option<RuleId> {
        let slot = match classify(key) {
            PatternKind::Exact(name) => self.exact.entry(name.into()),
            PatternKind::Suffix(suffix) => self.suffix.entry(suffix.into()),
            PatternKind::Glob { bucket } => {
                let globs = self.globs.entry(bucket.into()).or_default();
                let pattern = WildMatch::new(key);
                if let Some((_, existing)) = globs.iter().find(|(g, _)| *g == pattern) {
                    return Some(*existing);
                }
                globs.push((pattern, id));
                return None;
            }
        };
        match slot {
            Entry::Occupied(existing) => Some(*existing.get()),
            Entry::Vacant(vacant) => {
                vacant.insert(id);
                None
            }
        }
    }

    /// The rule that allows `name` (a canonical query key), most specific first:
    /// the exact name, then each shorter suffix, globs before `*.` patterns at
    /// the same level, and root-bucket globs last.
    pub fn lookup(&self, name: &str) -> Option<RuleId> {
        if let Some(&id) = self.exact.get(name) {
            return Some(id);
        }
        let mut rest = name;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(id) = self.glob_lookup(rest, name) {
                return Some(id);
            }
            if let Some(&id) = self.suffix.get(rest) {
                return Some(id);
            }
        }
        self.glob_lookup("", name)
    }

    fn glob_lookup(&self, bucket: &str, name: &str) -> Option<RuleId> {
        if self.globs.is_empty() {
            return None;
        }
        self.globs
            .get(bucket)?
            .iter()
            .find(|(glob, _)| glob.matches(name))
            .map(|&(_, id)| id)
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.suffix.len() + self.globs.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(patterns: &[&str]) -> Matcher {
        let mut m = Matcher::default();
        for (i, p) in patterns.iter().enumerate() {
            m.insert(p, i as RuleId);
        }
        m
    }

    #[test]
    fn classify_patterns() {
        assert_eq!(classify("a.b"), PatternKind::Exact("a.b"));
        assert_eq!(classify("*.a.b"), PatternKind::Suffix("a.b"));
        assert_eq!(classify("api-*.a.b"), PatternKind::Glob { bucket: "a.b" });
        assert_eq!(classify("*foo.a.b"), PatternKind::Glob { bucket: "a.b" });
        assert_eq!(classify("*"), PatternKind::Glob { bucket: "" });
        assert_eq!(classify("a.*"), PatternKind::Glob { bucket: "" });
        assert_eq!(classify("*.*.b"), PatternKind::Glob { bucket: "b" });
    }

    #[test]
    fn exact_names_match_only_themselves() {
        let m = matcher(&["weather.service.com"]);
        assert_eq!(m.lookup("weather.service.com"), Some(0));
        assert_eq!(m.lookup("x.weather.service.com"), None);
        assert_eq!(m.lookup("service.com"), None);
    }

    #[test]
    fn suffix_patterns_match_any_depth_but_not_the_apex() {
        let m = matcher(&["*.company-internal.com"]);
        assert_eq!(m.lookup("api.company-internal.com"), Some(0));
        assert_eq!(m.lookup("a.b.c.company-internal.com"), Some(0));
        assert_eq!(m.lookup("company-internal.com"), None);
        assert_eq!(m.lookup("evilcompany-internal.com"), None);
        assert_eq!(m.lookup("company-internal.com.attacker.example"), None);
    }

    #[test]
    fn globs_and_precedence() {
        let m = matcher(&[
            "*.example.com",
            "api-*.example.com",
            "api-1.example.com",
            "*",
        ]);
        assert_eq!(m.lookup("api-1.example.com"), Some(2));
        assert_eq!(m.lookup("api-2.example.com"), Some(1));
        assert_eq!(m.lookup("www.example.com"), Some(0));
        assert_eq!(m.lookup("anything.org"), Some(3));
    }

    #[test]
    fn duplicates_keep_the_first() {
        let mut m = Matcher::default();
        assert_eq!(m.insert("a.com", 0), None);
        assert_eq!(m.insert("a.com", 1), Some(0));
        assert_eq!(m.insert("x*.com", 2), None);
        assert_eq!(m.insert("x*.com", 3), Some(2));
        assert_eq!(m.len(), 2);
    }
}
