//! Running the resolver: startup shared by `serve` and `check`, the control
//! socket behind `grant`, `revoke` and `status`, SIGHUP reload and its `--watch` trigger, signals and
//! sd_notify.

pub mod control;
pub mod notify;
pub mod peer_netns;
pub mod privileges;
pub mod reload;
pub mod shutdown;
pub mod startup;
pub mod watch;
