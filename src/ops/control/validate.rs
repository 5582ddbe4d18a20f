//! What a grant may be: its agent and reason plain bounded text (they
//! reach the audit log and alerts), its name a valid, not over-broad
//! pattern, its duration within [`MAX_GRANT`].

use std::time::{Duration, SystemTime};

use super::Refusal;
use crate::policy::name::pattern_key;
use crate::state::grants::{Grant, MAX_GRANT};

/// Limits on the free-text fields that reach the audit log and alerts.
const MAX_REASON_CHARS: usize = 512;
const MAX_AGENT_CHARS: usize = 255;

pub(super) fn validate_grant(
    agent: &str,
    name: &str,
    for_secs: u64,
    reason: &str,
    uid: Option<u32>,
) -> Result<Grant, Refusal> {
    validate_agent(agent)?;
    let pattern = valid_name(name)?;
    if let Some(why) = crate::policy::over_broad(&pattern) {
        return Err(Refusal::OverBroad {
            pattern: pattern.to_string(),
            why: why.to_string(),
        });
    }
    if reason.trim().is_empty() {
        return Err(Refusal::NoReason);
    }
    check_text("--reason", reason, MAX_REASON_CHARS)?;
    let duration = Duration::from_secs(for_secs);
    if duration.is_zero() || duration > MAX_GRANT {
        return Err(Refusal::Duration { secs: for_secs });
    }
    let now = SystemTime::now();
    Ok(Grant {
        agent: agent.into(),
        pattern: pattern.into(),
        reason: reason.trim().into(),
        granted_at: now,
        expires: now + duration,
        uid,
        revoked_by: None,
    })
}

pub(super) fn validate_agent(agent: &str) -> Result<(), Refusal> {
    check_text("--agent", agent, MAX_AGENT_CHARS)
}

/// The canonical pattern for a name as given, or why it is not one.
pub(super) fn valid_name(name: &str) -> Result<String, Refusal> {
    pattern_key(name).map_err(|e| Refusal::BadName {
        name: name.into(),
        why: e.to_string(),
    })
}

/// Free text bound for logs and alerts: bounded, and without characters
/// that could forge log lines or reorder what a reader sees.
fn check_text(field: &'static str, value: &str, max_chars: usize) -> Result<(), Refusal> {
    let count = value.chars().count();
    if count > max_chars {
        return Err(Refusal::TooLong {
            field,
            count,
            max: max_chars,
            head: value.chars().take(40).collect(),
        });
    }
    // Bidi overrides and isolates: they make a log line read differently from what it holds.
    let bidi = |c: char| matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if let Some(c) = value.chars().find(|&c| c.is_control() || bidi(c)) {
        return Err(Refusal::ControlCharacter {
            field,
            value: value.into(),
            code: u32::from(c),
        });
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::control::Reply;
    use crate::state::StateError;

    #[test]
    fn reasons_and_agents_are_plain_bounded_text() {
        let grant = |agent: &str, reason: &str| {
            validate_grant(agent, "a.example", 60, reason, Some(0)).map_err(|e| e.to_string())
        };
        assert!(grant("agent", "INC-42 vendor débogage").is_ok());
        let e = grant("agent", "ok\nforged line").unwrap_err();
        assert!(e.contains("--reason") && e.contains("U+000A"), "{e}");
        let e = grant("agent", "rtl \u{202e} trick").unwrap_err();
        assert!(e.contains("--reason") && e.contains("U+202E"), "{e}");
        let e = grant("agent", &"x".repeat(513)).unwrap_err();
        assert!(e.contains("--reason is 513 characters"), "{e}");
        assert!(grant("agent", &"é".repeat(512)).is_ok());
        assert!(
            grant("agent", " ")
                .unwrap_err()
                .contains("needs a --reason")
        );
        let e = grant("a\u{1b}[2J", "r").unwrap_err();
        assert!(e.contains("--agent") && e.contains("U+001B"), "{e}");
        let e = grant(&"a".repeat(256), "r").unwrap_err();
        assert!(e.contains("--agent is 256 characters"), "{e}");
        let e = grant("agent", "r");
        assert_eq!(e.unwrap().revoked_by, None);
        assert!(
            validate_grant("agent", "*.com.ar", 60, "r", None)
                .unwrap_err()
                .to_string()
                .contains("over-broad")
        );
    }

    #[test]
    fn refusals_read_as_the_wire_protocol_always_said() {
        let e = validate_grant("agent", "a.example", 0, "r", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--for must be between 1 s and {} (longer exceptions belong in the policy file)",
                humantime::format_duration(MAX_GRANT)
            )
        );
        let e = validate_grant("agent", "bad..name", 60, "r", None).unwrap_err();
        assert!(
            matches!(&e, Refusal::BadName { name, .. } if name == "bad..name"),
            "{e}"
        );
        assert_eq!(
            Refusal::Busy.to_string(),
            "busy: 16 requests in progress; try again"
        );
        assert_eq!(Refusal::NoRequest.to_string(), "no request within 4 s");
        let e = Refusal::from(StateError::NoGrant {
            agent: "a".into(),
            pattern: "x.example".into(),
        });
        assert_eq!(e.to_string(), "agent 'a' has no grant for 'x.example'");
        let reply = serde_json::to_string(&Reply::error(e)).unwrap();
        assert_eq!(
            reply,
            r#"{"ok":false,"error":"agent 'a' has no grant for 'x.example'"}"#
        );
    }
}
