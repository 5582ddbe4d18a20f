//! One question's path, top to bottom: sockets → wire → answer → decide →
//! (local zone | cache | upstream) → special addresses → fence → audit → reply.
//!
//! UDP and TCP meet in [`answer::answer`]; [`wire`] owns the RFC-mandated
//! checks for both. Nothing here owns the policy's lifecycle: the query path
//! reads the snapshot [`crate::state`] publishes.

pub mod answer;
pub mod batch;
pub mod cache;
pub mod dad;
pub mod decide;
pub mod egress;
pub mod exfil;
pub mod fast;
pub mod forward;
pub mod handler;
pub mod resolve;
pub mod server;
pub mod service;
pub mod strip;
pub mod tcp;
pub mod upstream;
pub mod wire;
