//! `allowdns run`: the kennel. CMD and everything it spawns live in a user,
//! network, mount and PID namespace of their own. The only way out is pasta,
//! through the default-deny ruleset this allowdns feeds; the only DNS is this
//! allowdns, answering inside while its upstream traffic leaves from outside.
//!
//! Each stage is a fresh, single-threaded process (re-executing this binary),
//! so the crate needs no `fork`: `parent` (`allowdns run`, which then enters
//! the kennel's user namespace to feed its sets) → `holder` (creates the
//! namespaces, loads the ruleset, mounts) → `init` (PID 1: /proc, drops every
//! capability) → CMD. `pdeathsig` ties pasta's life to allowdns's. Their
//! flags are in `args`.

mod args;
pub mod error;
mod fds;
mod holder;
mod parent;
mod signals;
mod view;

use std::process::ExitCode;

pub use args::{RunArgs, StageArgs};
pub use parent::run;

/// Where allowdns answers inside the kennel; `resolv.conf` names only it.
pub const DNS: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 53);

/// Runs one internal stage; its exit status is CMD's, or 125 when the stage failed.
pub fn stage(args: StageArgs) -> ExitCode {
    let code = match args.stage.as_str() {
        "holder" => holder::holder(&args),
        "init" => holder::init(&args),
        "pdeathsig" => holder::pdeathsig(&args),
        other => {
            eprintln!("allowdns: unknown kennel stage '{other}'");
            STAGE_FAILED
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(STAGE_FAILED as u8))
}

/// A stage could not set the kennel up; CMD never ran.
pub const STAGE_FAILED: i32 = 125;

/// Whether this process is in the host's user namespace (where uid 0 is real root).
pub fn in_init_userns() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|map| map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
}
