//! The policy's `exfil:` section: the budget's limits, their defaults, and
//! their validation. The run-time budget that spends them is
//! `serve::exfil`.

use std::path::Path;
use std::time::Duration;

use crate::diagnostics::{Diagnostics, locate};

use super::file;

/// A policy's budget (`exfil:`). Sizes are in bits of estimated information.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// `budget: off` turns the budget (not the qtype filter) off.
    pub enabled: bool,
    pub soft_bits: f32,
    pub hard_bits: f32,
    /// How fast a domain's charge drains.
    pub drain_bits_per_sec: f32,
    /// How long new names stay refused once the hard limit is hit.
    pub cooldown: Duration,
    /// Least time an answer under a wildcard is held (cache, client TTL,
    /// fence element), in seconds: a re-ask within it never leaves.
    pub min_ttl: u32,
}

/// Defaults, in bytes: well above the committed corpus of hard legitimate
/// names (tests/data/legit-names.txt), well below a useful tunnel.
pub const DEFAULT_SOFT_BYTES: u32 = 8 * 1024;
pub const DEFAULT_HARD_BYTES: u32 = 16 * 1024;
pub const DEFAULT_DRAIN_BYTES_PER_MIN: u32 = 480;
pub const DEFAULT_COOLDOWN_SECS: u32 = 600;
/// As long as the fence's own least element lifetime (`firewall.min_ttl`).
pub const DEFAULT_MIN_TTL_SECS: u32 = 30;
/// The most `min_ttl_secs` may be: a day, the cache's default ceiling.
pub const MAX_MIN_TTL_SECS: u32 = 86_400;

impl Default for Limits {
    fn default() -> Self {
        Limits::from_bytes(
            true,
            DEFAULT_SOFT_BYTES,
            DEFAULT_HARD_BYTES,
            DEFAULT_DRAIN_BYTES_PER_MIN,
            DEFAULT_COOLDOWN_SECS,
        )
    }
}

impl Limits {
    pub fn from_bytes(
        enabled: bool,
        soft: u32,
        hard: u32,
        drain_per_min: u32,
        cooldown: u32,
    ) -> Self {
        Limits {
            enabled,
            soft_bits: soft as f32 * 8.0,
            hard_bits: hard as f32 * 8.0,
            drain_bits_per_sec: drain_per_min as f32 * 8.0 / 60.0,
            cooldown: Duration::from_secs(u64::from(cooldown)),
            min_ttl: DEFAULT_MIN_TTL_SECS,
        }
    }
}

/// The `exfil:` section; absent means the defaults.
pub(super) fn compile_exfil(
    file: &Path,
    source: &str,
    raw: Option<file::ExfilV1>,
    diags: &mut Diagnostics,
) -> Limits {
    let Some(raw) = raw else {
        return Limits::default();
    };
    let soft = raw.soft_bytes.unwrap_or(DEFAULT_SOFT_BYTES);
    let hard = raw.hard_bytes.unwrap_or(DEFAULT_HARD_BYTES);
    let enabled = match raw.budget.as_deref() {
        None | Some("on") => true,
        Some("off") => {
            diags.warning(
                file,
                locate(source, "budget", 0),
                Some("exfil.budget".into()),
                "off: new names under wildcards may carry any amount of data out",
            );
            false
        }
        Some(other) => {
            diags.error(
                file,
                locate(source, other, 0),
                Some("exfil.budget".into()),
                format!("'{other}' is not 'on' or 'off'"),
            );
            true
        }
    };
    if hard == 0 || soft > hard {
        diags.error(
            file,
            locate(source, "hard_bytes", 0).or_else(|| locate(source, "soft_bytes", 0)),
            Some("exfil.hard_bytes".into()),
            format!("must be above 0 and at least soft_bytes ({soft})"),
        );
    }
    let min_ttl = raw.min_ttl_secs.unwrap_or(DEFAULT_MIN_TTL_SECS);
    if min_ttl > MAX_MIN_TTL_SECS {
        diags.error(
            file,
            locate(source, "min_ttl_secs", 0),
            Some("exfil.min_ttl_secs".into()),
            format!("{min_ttl} is above {MAX_MIN_TTL_SECS} (a day)"),
        );
    }
    Limits {
        min_ttl: min_ttl.min(MAX_MIN_TTL_SECS),
        ..Limits::from_bytes(
            enabled,
            soft,
            hard,
            raw.drain_bytes_per_minute
                .unwrap_or(DEFAULT_DRAIN_BYTES_PER_MIN),
            raw.cooldown_secs.unwrap_or(DEFAULT_COOLDOWN_SECS),
        )
    }
}
