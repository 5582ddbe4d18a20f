//! The one canonical spelling of a name that policies and queries are compared
//! in: A-labels (punycode), lower case, no trailing dot, the root as "".

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use hickory_proto::rr::Name;

use super::error::PolicyError;

/// Bytes a query label may contain and still be matched. Anything else (a dot
/// inside a label, a backslash, binary) cannot be spelled in a policy, so the
/// name is denied rather than risk two names sharing one spelling.
fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// A question's name in the one spelling the matcher, the local zones, the
/// cache and the exfiltration budget all compare: lower case ASCII, no
/// trailing dot, the root as "". Computed once per question (and once per
/// CNAME hop) and passed along, so no step respells the name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryKey(Box<str>);

impl QueryKey {
    /// The key of a name a policy can match, or `None` when a label holds a
    /// byte no policy can spell (such a name is denied).
    pub fn of(name: &Name) -> Option<QueryKey> {
        // `Name::len` counts a dot per label, one more than the key has:
        // the exact size, so boxing the key does not reallocate it.
        QueryKey::of_labels(name.iter(), name.len().saturating_sub(1))
    }

    /// [`QueryKey::of`] from the name's labels as they are on the wire
    /// (`len`: the key's length, for its allocation), without decoding a
    /// [`Name`] first.
    pub fn of_labels<'a>(labels: impl Iterator<Item = &'a [u8]>, len: usize) -> Option<QueryKey> {
        let mut key = String::with_capacity(len);
        for label in labels {
            if !key.is_empty() {
                key.push('.');
            }
            for &b in label {
                if !is_label_byte(b) {
                    return None;
                }
                key.push(b.to_ascii_lowercase() as char);
            }
        }
        Some(QueryKey(key.into()))
    }

    /// A key for any name, for what is looked up without being matched
    /// (CNAME targets, learn mode, zone file owners): [`QueryKey::of`] where
    /// it exists, else the escaped presentation form. The two never
    /// collide: an escaped form always holds a byte (`\`, `*`) no key of
    /// [`QueryKey::of`] holds.
    pub fn of_any(name: &Name) -> QueryKey {
        QueryKey::of(name).unwrap_or_else(|| {
            let ascii = name.to_lowercase().to_ascii();
            QueryKey(ascii.strip_suffix('.').unwrap_or(&ascii).into())
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<QueryKey> for String {
    fn from(key: QueryKey) -> String {
        key.0.into()
    }
}

impl std::fmt::Display for QueryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which policy a question is answered under, as plain data: what the cache
/// partitions, merges upstream questions and shares upstream slots by.
///
/// A hash of `agent_name` rather than an index a loader hands out: it needs
/// no registry (a policy compiled anywhere, in a test or a tool, has its
/// id), it is the same for the same agent across reloads (so its cache and
/// in-flight questions carry over, as the agent's entries should), and it
/// has no cap (the metrics table has 256 slots; agents past it still get a
/// cache partition and an upstream share of their own). Agent names are unique in a
/// set and written by the operator; 64 bits make a collision among even a
/// million agents a one in 10^7 event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(pub u64);

/// A map keyed by [`PolicyId`]: the id is a hash already, so it is used as
/// its own hash rather than hashed again on every lookup.
pub type PolicyIdMap<V> = HashMap<PolicyId, V, BuildHasherDefault<IdHasher>>;

/// The identity hash of a [`PolicyId`] (see [`PolicyIdMap`]).
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is reached from `PolicyId`; anything else still hashes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl PolicyId {
    pub fn of(agent: &str) -> PolicyId {
        // Fixed keys: the same name gets the same id for the process's life.
        let mut h = std::hash::DefaultHasher::new();
        agent.hash(&mut h);
        PolicyId(h.finish())
    }
}

/// Turns a policy name or pattern into its canonical key.
///
/// `*` and `?` are kept (they are wildmatch globs); every other character must
/// be valid in a host name once Unicode labels are converted to A-labels.
pub fn pattern_key(raw: &str) -> Result<String, PolicyError> {
    let trimmed = raw.trim();
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
    let raw = || raw.to_string();
    if trimmed.is_empty() {
        return Err(PolicyError::EmptyName { raw: raw() });
    }
    let mut labels = Vec::new();
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(PolicyError::EmptyLabel { raw: raw() });
        }
        let label = if label.is_ascii() {
            label.to_ascii_lowercase()
        } else if label.contains(['*', '?']) {
            return Err(PolicyError::WildcardIdn {
                label: label.to_string(),
                raw: raw(),
            });
        } else {
            let name = Name::from_utf8(label).map_err(|e| PolicyError::BadIdn {
                label: label.to_string(),
                raw: raw(),
                why: e.to_string(),
            })?;
            let ascii = name.to_ascii();
            ascii.trim_end_matches('.').to_ascii_lowercase()
        };
        if label.len() > 63 {
            return Err(PolicyError::LongLabel { label, raw: raw() });
        }
        if let Some(bad) = label
            .bytes()
            .find(|&b| !is_label_byte(b) && b != b'*' && b != b'?')
        {
            return Err(PolicyError::BadCharacter {
                bad: bad as char,
                raw: raw(),
            });
        }
        labels.push(label);
    }
    let key = labels.join(".");
    if key.len() > 253 {
        return Err(PolicyError::LongName { raw: raw() });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keys_are_lowercase_without_trailing_dot() {
        let name = Name::from_ascii("API.Company-Internal.COM.").unwrap();
        assert_eq!(
            String::from(QueryKey::of(&name).unwrap()),
            "api.company-internal.com"
        );
        assert_eq!(String::from(QueryKey::of(&Name::root()).unwrap()), "");
    }

    #[test]
    fn any_name_has_a_key_and_matchable_names_keep_theirs() {
        let plain = Name::from_labels(vec![b"-X".as_ref(), b"Test".as_ref()]).unwrap();
        assert_eq!(QueryKey::of_any(&plain).as_str(), "-x.test");
        let dotted = Name::from_labels(vec![b"A.b".as_ref(), b"test".as_ref()]).unwrap();
        assert_eq!(QueryKey::of(&dotted), None);
        let escaped = QueryKey::of_any(&dotted);
        assert_eq!(escaped.as_str(), "a\\.b.test");
        let wild = Name::from_ascii("*.test.").unwrap();
        assert_eq!(QueryKey::of_any(&wild).as_str(), "*.test");
    }

    #[test]
    fn policy_ids_are_stable_and_distinct() {
        assert_eq!(PolicyId::of("agent-299"), PolicyId::of("agent-299"));
        assert_ne!(PolicyId::of("agent-299"), PolicyId::of("agent-300"));
    }

    #[test]
    fn query_key_rejects_dots_inside_labels() {
        let name =
            Name::from_labels(vec![b"api.company-internal".as_ref(), b"com".as_ref()]).unwrap();
        assert!(QueryKey::of(&name).is_none());
    }

    #[test]
    fn patterns_are_normalized_to_a_labels() {
        assert_eq!(
            pattern_key("Weather.Service.com.").unwrap(),
            "weather.service.com"
        );
        assert_eq!(
            pattern_key("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(pattern_key("*.Example.com").unwrap(), "*.example.com");
        assert_eq!(
            pattern_key("a..b"),
            Err(PolicyError::EmptyLabel { raw: "a..b".into() })
        );
        assert!(pattern_key("a b.com").is_err());
        assert!(pattern_key("*ü.com").is_err());
        assert!(pattern_key("").is_err());
    }
}
