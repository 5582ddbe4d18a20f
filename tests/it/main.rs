//! The integration tests: one binary, one module per area. The harness
//! (`common`) starts the real parts: an upstream, allowdns, DNS clients and
//! network-namespace labs.

mod common;

mod alert_delivery;
mod architecture;
mod audit;
mod audit_schema;
mod authority;
mod bad_input;
mod cache;
mod check;
mod control_netns;
mod demo;
mod deploy;
mod exceptions;
mod exfil;
mod exfil_iodine;
mod exit_codes;
mod fence_netns;
mod firewall_netns;
mod fuzz;
mod kennel;
mod metrics;
mod names;
mod notify;
mod packaging;
mod recursive;
mod reload;
mod resolve;
mod ruleset_reload;
mod shutdown;
mod special_addresses;
mod suggest;
mod systemd;
mod tcp;
mod upstream_share;
