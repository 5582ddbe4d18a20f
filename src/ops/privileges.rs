//! Capabilities from the executable's file capabilities. The container image
//! sets CAP_NET_ADMIN (feeding the pod's sets) and CAP_NET_BIND_SERVICE (port
//! 53) permitted-only, `=p`: with `=ep` the kernel refuses the exec outright
//! wherever the engine does not grant both, even for `--version`. So allowdns
//! raises what it was permitted itself, before any thread exists; outside
//! such an image (root, systemd) permitted is already effective.

/// Makes every permitted capability effective; a failure leaves them as they
/// were, and whatever then needs one fails with its own clear error.
pub fn raise_permitted() {
    if let Ok(permitted) = caps::read(None, caps::CapSet::Permitted) {
        let _ = caps::set(None, caps::CapSet::Effective, &permitted);
    }
}
