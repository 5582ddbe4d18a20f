//! `expires:` values: RFC 3339 times, and what an entry's expiry means at
//! load time (already past: a warning and the entry is skipped).

use std::path::Path;
use std::time::SystemTime;

use time::format_description::well_known::Rfc3339;

use super::error::PolicyError;
use crate::diagnostics::{Diagnostics, locate};

/// An entry's `expires`: `Some(None)` for none, `Some(Some(t))` for a future
/// time, `None` when the entry must be skipped (already expired, with a
/// warning, or malformed, with an error).
pub(super) fn entry_expiry(
    file: &Path,
    source: &str,
    field: Option<String>,
    raw: &Option<String>,
    now: SystemTime,
    diags: &mut Diagnostics,
) -> Option<Option<SystemTime>> {
    let Some(raw) = raw else {
        return Some(None);
    };
    let line = || locate(source, raw, 0);
    match parse_rfc3339(raw) {
        Ok(at) if at <= now => {
            diags.warning(
                file,
                line(),
                field,
                format!("expired at {raw}; entry ignored"),
            );
            None
        }
        Ok(at) => Some(Some(at)),
        Err(e) => {
            diags.error(file, line(), field, e.to_string());
            None
        }
    }
}

/// Parses an RFC 3339 time: `YYYY-MM-DDTHH:MM:SS[.frac]` then `Z` or an
/// offset `+HH:MM`/`-HH:MM` (HH <= 23, MM <= 59). `t` and `z` may be lower
/// case, as RFC 3339 allows, and a space may stand for the `T`.
pub fn parse_rfc3339(raw: &str) -> Result<SystemTime, PolicyError> {
    let raw = raw.trim();
    let bad = |why: String| PolicyError::Time {
        raw: raw.to_string(),
        why,
    };
    // The crate takes any byte between date and time; RFC 3339 means a `T`
    // (and its note allows a space), so a typo there is not read as one.
    if raw
        .as_bytes()
        .get(10)
        .is_some_and(|b| !matches!(b, b'T' | b't' | b' '))
    {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SS[.fraction]".into()));
    }
    let at = time::OffsetDateTime::parse(raw, &Rfc3339).map_err(|e| bad(e.to_string()))?;
    // Audit lines, alerts and `status` print times as RFC 3339 in UTC
    // (1970 to 9999): a time outside that range could not be shown.
    const LAST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(0..=LAST).contains(&at.unix_timestamp()) {
        return Err(bad("out of range (years 1970 to 9999, in UTC)".into()));
    }
    Ok(SystemTime::from(at))
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;
    use crate::policy::PolicyError;

    #[test]
    fn times_that_cannot_be_printed_back_are_refused() {
        for bad in [
            "1969-12-31T23:00:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59-23:59",
        ] {
            let e = parse_rfc3339(bad).unwrap_err();
            assert!(e.to_string().contains("out of range"), "{bad}: {e}");
        }
        assert!(parse_rfc3339("9999-12-31T23:59:59Z").is_ok());
        assert!(parse_rfc3339("1970-01-01T00:00:00Z").is_ok());
    }

    #[test]
    fn rfc3339_lower_case_and_strict_offsets() {
        let utc = parse_rfc3339("2026-11-30T23:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-11-30t23:00:00z").unwrap(), utc);
        assert_eq!(parse_rfc3339("2026-11-30t23:00:00-00:00").unwrap(), utc);
        assert_eq!(parse_rfc3339("2026-12-01T22:59:00+23:59").unwrap(), utc);
        for bad in [
            "2026-11-30T23:00:00+99:99",
            "2026-11-30T23:00:00+24:00",
            "2026-11-30T23:00:00+23:60",
            "2026-11-30T23:00:00++1:00",
            "2026-11-30T23:00:00-0:000",
            "2026-11-30T23:00:00+0100",
            "2026-11-30T23:00:00+01:0a",
            "2026-11-30T23:00:00Z+01:00",
            "2026-11-30T23:00:00+00:00+01:00",
            "2026-11-30T23:00:00.Z",
            "2026-11-30T23:00:00.5x+01:00",
            "2026-11-30x23:00:00Z",
            "2026-11-30T23:00:00é1:00",
            "Z",
            "",
        ] {
            let e = parse_rfc3339(bad).expect_err(bad).to_string();
            assert!(
                e.starts_with(&format!("'{bad}' is not an RFC 3339 time")),
                "{e}"
            );
        }
    }

    #[test]
    fn rfc3339_errors_carry_the_input() {
        let e = parse_rfc3339(" 2026-11-30T23:00:00+0100 ").unwrap_err();
        assert!(
            matches!(&e, PolicyError::Time { raw, .. } if raw == "2026-11-30T23:00:00+0100"),
            "{e:?}"
        );
        // A space may stand for the T, as before.
        assert_eq!(
            parse_rfc3339("2026-11-30 23:00:00Z"),
            parse_rfc3339("2026-11-30T23:00:00Z")
        );
    }

    #[test]
    fn rfc3339_offsets_are_applied() {
        let utc = parse_rfc3339("2026-11-30T23:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-12-01T00:00:00+01:00").unwrap(), utc);
        assert_eq!(parse_rfc3339("2026-11-30T18:30:00-04:30").unwrap(), utc);
        assert!(parse_rfc3339("2026-11-30T23:00:00.250Z").unwrap() > utc);
        for bad in [
            "next tuesday",
            "2026-11-30",
            "2026-11-30T23:00:00+1",
            "2026-11-30T23:00:00",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
