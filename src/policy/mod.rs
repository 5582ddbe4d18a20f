//! Policies, as data: the on-disk format ([`file`]), its compilation
//! ([`compile`]) into one agent's [`Policy`] ([`model`]), the loaded
//! [`PolicySet`] ([`set`], read from files by [`load`]), and the name index
//! ([`matcher`]).
//!
//! - [`merge`]: repeated destinations, and how long a merge lasts.
//! - [`breadth`]: over-broad patterns and ranges; public suffixes.
//! - [`expiry`]: `expires:` times.
//! - [`error`]: what can be wrong with one value ([`PolicyError`]).
//! - [`qtypes`], [`doh`], [`exfil_limits`], [`private`], [`firewall`]: the
//!   sections and checks of one entry or one policy.
//! - [`name`], [`special`], [`zones`]: canonical names, special-purpose
//!   ranges, local zones.
//!
//! Loading never stops at the first problem: every error and over-broad
//! pattern across all files is collected with file, line and field.
//! Nothing here imports the layers above (serve, state, fence).

pub mod breadth;
pub mod compile;
pub mod doh;
pub mod error;
pub mod exfil_limits;
pub mod expiry;
pub mod file;
pub mod firewall;
pub mod load;
pub mod matcher;
pub mod merge;
pub mod model;
pub mod name;
pub mod private;
pub mod qtypes;
pub mod set;
pub mod special;
pub mod zones;

pub(crate) use breadth::is_public_suffix;
pub use breadth::{at_or_below, over_broad, registrable_domain};
pub use compile::compile_source;
pub use error::PolicyError;
pub use expiry::parse_rfc3339;
pub use load::{expand_paths, load};
pub use model::{AddressRule, PatternFacts, Policy, Ports, Protocol, Rule};
pub use set::PolicySet;
