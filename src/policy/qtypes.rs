//! What a rule answers: the `qtypes:` lists (parsing, merging) and the
//! default for wildcards, which answer only address types so that TXT, NULL
//! and private types (the DNS tunnels' favourites) stay shut.

use std::sync::Arc;

use hickory_proto::rr::RecordType;

use super::Rule;
use super::error::PolicyError;

/// What a wildcard answers when its entry lists no `qtypes`.
pub const ADDRESS_TYPES: [RecordType; 5] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::CNAME,
    RecordType::HTTPS,
    RecordType::SVCB,
];

/// Whether a pattern (canonical key) is a wildcard or glob rather than one name.
pub fn is_wildcard(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// Whether `rule` answers `qtype`: its `qtypes` if listed, else address
/// types for wildcards and every type for exact names.
pub fn qtype_allowed(rule: &Rule, qtype: RecordType) -> bool {
    match &rule.qtypes {
        Some(listed) => listed.contains(&qtype),
        None => !rule.facts.wildcard || ADDRESS_TYPES.contains(&qtype),
    }
}

/// How many types a wildcard rule answers: each upstream question under it
/// chooses one of them, which the exfiltration budget charges.
pub fn answered_types(rule: &Rule) -> usize {
    rule.qtypes
        .as_ref()
        .map_or(ADDRESS_TYPES.len(), |listed| listed.len())
}

/// Parses a `qtypes` list: type names (`TXT`, `NULL`, `ANY`, ...) or
/// `TYPEnnn`. An error names the offending entry.
pub fn parse_qtypes(list: &[String]) -> Result<Arc<[RecordType]>, PolicyError> {
    let mut types = Vec::with_capacity(list.len());
    for raw in list {
        let bad = |why| PolicyError::Qtype {
            raw: raw.clone(),
            why,
        };
        let upper = raw.trim().to_ascii_uppercase();
        let parsed = match upper.strip_prefix("TYPE") {
            Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n
                .parse::<u16>()
                .map(RecordType::from)
                .map_err(|_| bad("TYPEnnn needs a number up to 65535")),
            _ => upper
                .parse::<RecordType>()
                .map_err(|_| bad("unknown record type (use a name like TXT or TYPE65300)"))
                .and_then(|t| match t {
                    RecordType::Unknown(_) => Err(bad("unknown record type")),
                    t => Ok(t),
                }),
        };
        match parsed? {
            RecordType::AXFR | RecordType::IXFR => {
                return Err(bad("zone transfers are never answered"));
            }
            t if !types.contains(&t) => types.push(t),
            _ => {}
        }
    }
    if types.is_empty() {
        return Err(PolicyError::NoQtypes);
    }
    Ok(types.into())
}

/// The `qtypes` of two entries for the same pattern, merged: what either answers.
pub fn merge_qtypes(
    pattern: &str,
    a: &Option<Arc<[RecordType]>>,
    b: &Option<Arc<[RecordType]>>,
) -> Option<Arc<[RecordType]>> {
    let default: &[RecordType] = if is_wildcard(pattern) {
        &ADDRESS_TYPES
    } else {
        return None; // an exact entry without a list answers everything
    };
    let (a, b) = match (a, b) {
        (None, None) => return None,
        (Some(a), Some(b)) => (&a[..], &b[..]),
        (Some(a), None) | (None, Some(a)) => (&a[..], default),
    };
    let mut out: Vec<RecordType> = a.to_vec();
    for t in b {
        if !out.contains(t) {
            out.push(*t);
        }
    }
    Some(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qtypes_parse_and_merge() {
        let t = parse_qtypes(&["txt".into(), "TYPE65300".into(), "NULL".into()]).unwrap();
        assert_eq!(
            &*t,
            &[
                RecordType::TXT,
                RecordType::Unknown(65300),
                RecordType::NULL
            ]
        );
        assert!(parse_qtypes(&["BOGUS".into()]).is_err());
        assert_eq!(
            parse_qtypes(&["TXT".into(), "axfr".into()]),
            Err(PolicyError::Qtype {
                raw: "axfr".into(),
                why: "zone transfers are never answered"
            })
        );
        assert_eq!(parse_qtypes(&[]), Err(PolicyError::NoQtypes));
        let m = merge_qtypes("*.x.test", &Some(t), &None).unwrap();
        assert!(m.contains(&RecordType::A) && m.contains(&RecordType::TXT));
        assert_eq!(
            merge_qtypes("x.test", &None, &Some([RecordType::TXT].into())),
            None
        );
    }
}
