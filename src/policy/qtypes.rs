//! What a rule answers: the `qtypes:` lists (parsing, merging) and the
//! default for wildcards, which answer only address types so that TXT, NULL
//! and private types (the DNS tunnels' favourites) stay shut.

use std::sync::Arc;

use hickory_proto::rr::RecordType;

use super::Rule;

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
        None => !is_wildcard(&rule.pattern) || ADDRESS_TYPES.contains(&qtype),
    }
}

/// Parses a `qtypes` list: type names (`TXT`, `NULL`, `ANY`, ...) or
/// `TYPEnnn`. An error names the offending entry.
pub fn parse_qtypes(list: &[String]) -> Result<Arc<[RecordType]>, (String, String)> {
    let mut types = Vec::with_capacity(list.len());
    for raw in list {
        let upper = raw.trim().to_ascii_uppercase();
        let parsed = match upper.strip_prefix("TYPE") {
            Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n
                .parse::<u16>()
                .map(RecordType::from)
                .map_err(|_| "TYPEnnn needs a number up to 65535".to_string()),
            _ => upper
                .parse::<RecordType>()
                .map_err(|_| "unknown record type (use a name like TXT or TYPE65300)".to_string())
                .and_then(|t| match t {
                    RecordType::Unknown(_) => Err("unknown record type".to_string()),
                    t => Ok(t),
                }),
        };
        match parsed {
            Ok(RecordType::AXFR | RecordType::IXFR) => {
                return Err((raw.clone(), "zone transfers are never answered".into()));
            }
            Ok(t) if !types.contains(&t) => types.push(t),
            Ok(_) => {}
            Err(why) => return Err((raw.clone(), why)),
        }
    }
    if types.is_empty() {
        return Err((
            String::new(),
            "lists no type; leave qtypes out for the default".into(),
        ));
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
        assert!(parse_qtypes(&["AXFR".into()]).is_err());
        let m = merge_qtypes("*.x.test", &Some(t), &None).unwrap();
        assert!(m.contains(&RecordType::A) && m.contains(&RecordType::TXT));
        assert_eq!(
            merge_qtypes("x.test", &None, &Some([RecordType::TXT].into())),
            None
        );
    }
}
