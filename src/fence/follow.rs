//! What a change of the policy in force asks of the fence, as a small trait:
//! the state drives it, the nftables [`Firewall`] implements it, and the
//! state's tests record the calls instead.

use std::time::Duration;

use crate::fence::{FenceError, Firewall};
use crate::policy::PolicySet;

/// A rule that ended, whose elements are to go.
pub struct Ended<'a> {
    pub agent: &'a str,
    pub pattern: &'a str,
    /// The set that ended the rule: for `remember`, an answer decided
    /// against an older set feeds nothing under it.
    pub generation: u64,
    pub remember: Duration,
}

pub trait Fence: Send + Sync {
    /// Whether the fence can follow `policies` at all; changes nothing.
    fn check(&self, policies: &PolicySet) -> Result<(), FenceError>;
    /// Makes the policy-address elements match `policies`.
    fn sync_static(&self, policies: &PolicySet) -> Result<(), FenceError>;
    /// Takes out every element fed under the ended rule; how many.
    fn withdraw(&self, ended: Ended<'_>) -> Result<usize, FenceError>;
    /// Stops tracking rules that ended by themselves.
    fn forget_ended(&self, policies: &PolicySet);
}

impl Fence for Firewall {
    fn check(&self, policies: &PolicySet) -> Result<(), FenceError> {
        Firewall::check(self, policies)
    }
    fn sync_static(&self, policies: &PolicySet) -> Result<(), FenceError> {
        Firewall::sync_static(self, policies)
    }
    fn withdraw(&self, e: Ended<'_>) -> Result<usize, FenceError> {
        Firewall::withdraw(self, e.agent, e.pattern, e.generation, e.remember)
    }
    fn forget_ended(&self, policies: &PolicySet) {
        Firewall::forget_ended(self, policies)
    }
}
