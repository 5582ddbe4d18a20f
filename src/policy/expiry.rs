//! `expires:` values: RFC 3339 times, and what an entry's expiry means at
//! load time (already past: a warning and the entry is skipped).

use std::path::Path;
use std::time::SystemTime;

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
            diags.error(file, line(), field, e);
            None
        }
    }
}

/// Parses an RFC 3339 time: `YYYY-MM-DDTHH:MM:SS[.frac]` then `Z` or an
/// offset `+HH:MM`/`-HH:MM` (HH <= 23, MM <= 59). `t` and `z` may be lower
/// case, as RFC 3339 allows.
pub fn parse_rfc3339(raw: &str) -> Result<SystemTime, String> {
    let raw = raw.trim();
    let bad =
        |why: &str| format!("'{raw}' is not an RFC 3339 time (like 2026-12-31T18:00:00Z): {why}");
    let (local, east_secs) = if let Some(local) = raw.strip_suffix(['Z', 'z']) {
        (local, 0i64)
    } else {
        let (local, offset) = raw
            .len()
            .checked_sub(6)
            .and_then(|at| raw.split_at_checked(at))
            .ok_or_else(|| bad("no Z or +HH:MM offset at the end"))?;
        let b = offset.as_bytes();
        let digit = |i: usize| b[i].is_ascii_digit();
        let sign = match b[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(bad("no Z or +HH:MM offset at the end")),
        };
        if !(digit(1) && digit(2) && b[3] == b':' && digit(4) && digit(5)) {
            return Err(bad(&format!("offset '{offset}' is not +HH:MM or -HH:MM")));
        }
        let hours = i64::from((b[1] - b'0') * 10 + (b[2] - b'0'));
        let minutes = i64::from((b[4] - b'0') * 10 + (b[5] - b'0'));
        if hours > 23 || minutes > 59 {
            return Err(bad(&format!("offset '{offset}' is out of range")));
        }
        (local, sign * (hours * 3600 + minutes * 60))
    };
    // Date and time with optional fraction, nothing else: humantime alone
    // would also take a `Z` or `+00:00` here, doubling the offset.
    let b = local.as_bytes();
    let fraction_ok = match b.get(19..) {
        None | Some([]) => true,
        Some([b'.', digits @ ..]) => !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    if b.len() < 19 || !fraction_ok || !local.is_ascii() {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SS[.fraction]"));
    }
    let local = if b[10] == b't' {
        format!("{}T{}", &local[..10], &local[11..])
    } else {
        local.to_string()
    };
    let local = humantime::parse_rfc3339_weak(&local).map_err(|e| bad(&e.to_string()))?;
    let shift = std::time::Duration::from_secs(east_secs.unsigned_abs());
    // East of UTC means the same local time happened earlier in UTC.
    let utc = if east_secs >= 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    };
    utc.ok_or_else(|| bad("out of range"))
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;

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
            let e = parse_rfc3339(bad).expect_err(bad);
            assert!(
                e.starts_with(&format!("'{bad}' is not an RFC 3339 time")),
                "{e}"
            );
        }
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
