//! The one canonical spelling of a name that policies and queries are compared
//! in: A-labels (punycode), lower case, no trailing dot, the root as "".

use hickory_proto::rr::Name;

use super::error::PolicyError;

/// Bytes a query label may contain and still be matched. Anything else (a dot
/// inside a label, a backslash, binary) cannot be spelled in a policy, so the
/// name is denied rather than risk two names sharing one spelling.
fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The canonical key of a query name, or `None` if it cannot be matched.
pub fn query_key(name: &Name) -> Option<String> {
    let mut key = String::with_capacity(name.len());
    for label in name.iter() {
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
    Some(key)
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
        assert_eq!(query_key(&name).unwrap(), "api.company-internal.com");
        assert_eq!(query_key(&Name::root()).unwrap(), "");
    }

    #[test]
    fn query_key_rejects_dots_inside_labels() {
        let name =
            Name::from_labels(vec![b"api.company-internal".as_ref(), b"com".as_ref()]).unwrap();
        assert_eq!(query_key(&name), None);
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
