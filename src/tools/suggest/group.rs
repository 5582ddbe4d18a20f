//! Grouping names into entries: siblings under a parent become `*.parent`
//! where that is narrow enough, and groups that look like a DNS tunnel are
//! marked.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, btree_map};
use std::fmt::Write as _;

use super::read::{Seen, reads_as_address};
use super::render::plural;
use super::{MAX_GROUP, MIN_CHILDREN, RANDOM_LABEL_LEN};
use crate::policy;

/// Second-level labels that registries sell names under (`com.ar`, `co.kr`).
/// The public suffix list is short, so `suggest` also refuses to wildcard
/// these under any two-letter country TLD.
pub(super) const REGISTRY_LABELS: &[&str] = &[
    "ac", "co", "com", "edu", "gob", "gov", "govt", "ltd", "mil", "ne", "net", "nic", "nom", "or",
    "org", "plc", "sch",
];

/// One `expected_outbound` entry of the suggestion.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// A name, or `*.parent`.
    pub(super) destination: String,
    /// The names it stands for, sorted.
    pub(super) names: Vec<String>,
    pub(super) seen: Seen,
    /// Why the group looks like a DNS tunnel; such entries are commented out.
    pub(super) tunnel: Option<String>,
}

/// Groups names into entries, sorted by domain (TLD first).
///
/// A parent with at least [`MIN_CHILDREN`] distinct child labels becomes
/// `*.parent`, which covers every name at any depth below it; the widest such
/// parent wins. The parent must not be a TLD, public suffix or registry
/// label, and must be at or below the registrable domain of every name under
/// it: `*.core.windows.net` would cover every `blob.core.windows.net`
/// account. `*.parent` does not match `parent`, so a parent that was itself
/// looked up keeps its own entry.
pub(super) fn group(names: &BTreeMap<String, Seen>) -> Vec<Entry> {
    struct Parent<'a> {
        children: BTreeSet<&'a str>,
        /// Every name below is in the registrable domain at or above it.
        one_domain: bool,
    }
    let mut parents: HashMap<&str, Parent> = HashMap::new();
    for name in names.keys() {
        let domain = policy::registrable_domain(name);
        let mut rest = name.as_str();
        while let Some(dot) = rest.find('.') {
            let (label, parent) = (&rest[..dot], &rest[dot + 1..]);
            let p = parents.entry(parent).or_insert_with(|| Parent {
                children: BTreeSet::new(),
                one_domain: true,
            });
            p.children.insert(label);
            p.one_domain &= domain.is_some_and(|r| policy::at_or_below(parent, r));
            rest = parent;
        }
    }
    let groups = |parent: &str| {
        parents
            .get(parent)
            .is_some_and(|p| p.children.len() >= MIN_CHILDREN && p.one_domain)
            && may_wildcard(parent)
    };
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for (name, seen) in names {
        let mut widest = None;
        let mut rest = name.as_str();
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if groups(rest) {
                widest = Some(rest);
            }
        }
        let destination = match widest {
            Some(parent) => format!("*.{parent}"),
            None => name.clone(),
        };
        match entries.entry(destination) {
            btree_map::Entry::Vacant(slot) => {
                let destination = slot.key().clone();
                slot.insert(Entry {
                    destination,
                    names: vec![name.clone()],
                    seen: seen.clone(),
                    tunnel: None,
                });
            }
            btree_map::Entry::Occupied(mut slot) => {
                let entry = slot.get_mut();
                entry.names.push(name.clone());
                entry.seen.merge(seen);
            }
        }
    }
    let mut entries: Vec<Entry> = entries.into_values().collect();
    for entry in &mut entries {
        if let Some(parent) = entry.destination.strip_prefix("*.") {
            entry.tunnel = tunnel_like(parent, &entry.names);
        }
    }
    entries.sort_by(|a, b| domain_order(&a.destination).cmp(&domain_order(&b.destination)));
    entries
}

/// Why the names of a wildcard group look like data encoded into DNS
/// queries: more than [`MAX_GROUP`] of them, or at least half with a
/// random-looking label below the parent.
pub(super) fn tunnel_like(parent: &str, names: &[String]) -> Option<String> {
    let random = names
        .iter()
        .filter(|name| {
            name.strip_suffix(parent)
                .unwrap_or(name)
                .split('.')
                .any(looks_random)
        })
        .count();
    if names.len() <= MAX_GROUP && random * 2 < names.len() {
        return None;
    }
    let mut why = plural(names.len() as u64, "distinct name");
    if random > 0 {
        let _ = write!(why, ", {random} with random-looking labels");
    }
    Some(why)
}

/// A label of [`RANDOM_LABEL_LEN`] or more characters, at least 3/4 of them
/// digits or consonants: base32 and hex have few vowels, words have many.
pub(super) fn looks_random(label: &str) -> bool {
    let plain = label
        .bytes()
        .filter(|b| b.is_ascii_digit() || (b.is_ascii_lowercase() && !b"aeiou".contains(b)))
        .count();
    label.len() >= RANDOM_LABEL_LEN && plain * 4 >= label.len() * 3
}

/// Whether `*.parent` is narrow enough to suggest.
pub(super) fn may_wildcard(parent: &str) -> bool {
    if policy::is_public_suffix(parent) || reads_as_address(parent) {
        return false;
    }
    match parent.split_once('.') {
        Some((label, tld)) => !(tld.len() == 2 && REGISTRY_LABELS.contains(&label)),
        None => false,
    }
}

/// Labels from the TLD down, so related names sort together and `*.x`
/// right after `x`.
pub(super) fn domain_order(name: &str) -> Vec<&str> {
    name.rsplit('.').collect()
}

/// The parent of a live wildcard among `wildcards` that covers `destination`, if any.
pub(super) fn covered_by<'a>(destination: &str, wildcards: &HashSet<&'a str>) -> Option<&'a str> {
    let (mut rest, wildcard) = match destination.strip_prefix("*.") {
        Some(parent) => (parent, true),
        None => (destination, false),
    };
    if wildcard && let Some(hit) = wildcards.get(rest) {
        return Some(*hit);
    }
    while let Some((_, parent)) = rest.split_once('.') {
        if let Some(hit) = wildcards.get(parent) {
            return Some(*hit);
        }
        rest = parent;
    }
    None
}
