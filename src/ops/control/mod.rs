//! The local control socket: `allowdns grant`, `revoke` and `status` talk to
//! the running resolver over a Unix socket, one JSON request and one JSON
//! reply per connection. The socket is mode 0600 from birth, and each peer's
//! credentials are checked too: only root and the daemon's own user may make
//! exceptions. The peer's uid goes into the audit log.
//!
//! This file holds the wire protocol (requests, replies and their views);
//! the rest, one concern each:
//! - `server`: binding the socket, accepting, peer checks, idle clients;
//! - `handle`: carrying out a request against the state;
//! - `validate`: what a grant's names, reasons and durations may be;
//! - `client`: the side `allowdns grant`, `revoke` and `status` use;
//! - `render`: `status` for humans;
//! - `error`: refusals and client and socket errors.

mod client;
mod error;
mod handle;
mod render;
mod server;
mod validate;

use serde::{Deserialize, Serialize};

use crate::observe::audit::schema::GrantLife;
/// A grant's terms, as replies and the audit log both write them.
pub use crate::observe::audit::schema::GrantTerms;
use crate::state::grants::Grant;

pub use client::{ask, request};
pub use error::{ClientError, Refusal, SocketError};
pub use render::render;
pub use server::{Bound, bind, serve};

/// Where `allowdns grant` and `status` look by default (systemd's RuntimeDirectory).
pub const DEFAULT_SOCKET: &str = "/run/allowdns/control.sock";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Grant {
        agent: String,
        name: String,
        for_secs: u64,
        reason: String,
    },
    Revoke {
        agent: String,
        name: String,
    },
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set for `grant`: the canonical pattern and when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted: Option<GrantView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub policies: Vec<PolicyView>,
    pub grants: Vec<GrantView>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyView {
    pub agent: String,
    pub file: String,
    pub mode: Mode,
    pub clients: Vec<String>,
    /// Name rules in force (file rules still live, plus grants).
    pub rules: usize,
    pub addresses: usize,
    pub firewall: Option<String>,
    /// File entries with an `expires`, and when.
    pub expiring: Vec<(String, String)>,
}

/// A policy's mode, as `status` shows it: the policy file's own choice.
pub use crate::policy::file::Mode;

/// A grant as control replies show it. Not `observe::audit::schema::GrantLife`: the
/// audit line always writes `revoked_by` (null until revoked), this omits it when unset.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantView {
    #[serde(flatten)]
    pub terms: GrantTerms,
    /// Set on a revoke reply: who revoked it (`uid` is the granter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<u32>,
}

impl From<&Grant> for GrantView {
    fn from(g: &Grant) -> Self {
        let life = GrantLife::from(g);
        GrantView {
            terms: life.terms,
            revoked_by: life.revoked_by,
        }
    }
}

impl Reply {
    fn error(refusal: Refusal) -> Self {
        Reply {
            ok: false,
            error: Some(refusal.to_string()),
            granted: None,
            status: None,
        }
    }

    fn ok() -> Self {
        Reply {
            ok: true,
            error: None,
            granted: None,
            status: None,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_is_serialised_as_before() {
        assert_eq!(serde_json::to_string(&Mode::Learn).unwrap(), r#""learn""#);
        assert_eq!(
            serde_json::to_string(&Mode::Enforce).unwrap(),
            r#""enforce""#
        );
        assert_eq!(Mode::Learn.to_string(), "learn");
    }

    /// Replies and audit lines share the grant's terms, flattened: the
    /// bytes stay as they were, and a reply still refuses unknown fields.
    #[test]
    fn grants_are_written_as_before_and_replies_refuse_unknown_fields() {
        let terms = r#""agent":"a","pattern":"*.x.example","reason":"r","granted_at":"2026-01-01T00:00:00Z","expires":"2026-01-01T01:00:00Z","uid":1000"#;
        let view: GrantView = serde_json::from_str(&format!("{{{terms}}}")).unwrap();
        assert_eq!((view.terms.uid, view.revoked_by), (Some(1000), None));
        assert_eq!(
            serde_json::to_string(&view).unwrap(),
            format!("{{{terms}}}")
        );
        let revoked: GrantView =
            serde_json::from_str(&format!("{{{terms},\"revoked_by\":0}}")).unwrap();
        assert_eq!(revoked.revoked_by, Some(0));
        let life = GrantLife {
            terms: view.terms,
            revoked_by: None,
        };
        assert_eq!(
            serde_json::to_string(&life).unwrap(),
            format!("{{{terms},\"revoked_by\":null}}")
        );
        let e = serde_json::from_str::<GrantView>(&format!("{{{terms},\"extra\":1}}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `extra`"), "{e}");
    }
}
