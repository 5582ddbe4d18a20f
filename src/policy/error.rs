//! What can be wrong with one value of a policy. Each variant carries the
//! offending input; the loader adds file, line and field around it.

use ipnet::IpNet;

/// One bad value in a policy (or in a name handed to `grant`/`revoke`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// An `expires:` value that is not an RFC 3339 time.
    #[error("'{raw}' is not an RFC 3339 time (like 2026-12-31T18:00:00Z): {why}")]
    Time { raw: String, why: String },
    /// A destination or client that is neither an address nor a CIDR.
    #[error("'{raw}' is not an IP address or CIDR")]
    NotAnAddress { raw: String },
    /// A CIDR with host bits set: which network was meant is ambiguous.
    #[error("'{raw}' has host bits set; did you mean {network}?")]
    HostBits { raw: String, network: IpNet },
    /// A name with nothing in it (after trimming and the trailing dot).
    #[error("empty name")]
    EmptyName { raw: String },
    /// Two dots in a row, or a leading dot.
    #[error("empty label in '{raw}'")]
    EmptyLabel { raw: String },
    /// `*` or `?` next to Unicode: the A-label form cannot keep the glob.
    #[error(
        "label '{label}' in '{raw}' mixes a wildcard with non-ASCII characters; \
         write it in A-label (xn--) form"
    )]
    WildcardIdn { label: String, raw: String },
    /// A Unicode label IDNA refuses.
    #[error("label '{label}' in '{raw}' is not a valid IDN: {why}")]
    BadIdn {
        label: String,
        raw: String,
        why: String,
    },
    #[error("label '{label}' in '{raw}' is longer than 63 bytes")]
    LongLabel { label: String, raw: String },
    /// A byte no query name can match (a space, a slash, ...).
    #[error("character '{bad}' is not allowed in a name ('{raw}')")]
    BadCharacter { bad: char, raw: String },
    #[error("'{raw}' is longer than 253 bytes")]
    LongName { raw: String },
    /// A `qtypes` entry that names no type allowdns answers.
    #[error("'{raw}': {why}")]
    Qtype { raw: String, why: &'static str },
    /// `qtypes: []`.
    #[error("lists no type; leave qtypes out for the default")]
    NoQtypes,
}
