//! Breadth checks, and the one public-suffix module: whether a pattern or an
//! address range allows far more than one service (names anyone can
//! register, huge CIDRs). Also used by `tools/suggest` and the exfiltration
//! budget (registrable domains).

use ipnet::IpNet;

use super::matcher::{PatternKind, classify};

/// Shortest prefixes `check` accepts silently: a /8 is the largest block an
/// IPv4 registry hands out, a /32 a whole IPv6 provider allocation.
const BROAD_V4: u8 = 8;
const BROAD_V6: u8 = 32;

/// Why an address destination opens far more than one service, if it does.
pub(super) fn over_broad_net(net: &IpNet) -> Option<String> {
    let (len, limit, family) = match net {
        IpNet::V4(n) => (n.prefix_len(), BROAD_V4, "IPv4"),
        IpNet::V6(n) => (n.prefix_len(), BROAD_V6, "IPv6"),
    };
    if len == 0 {
        Some(format!(
            "over-broad: {net} is every {family} address; the firewall would pass anything"
        ))
    } else if len < limit {
        Some(format!(
            "over-broad: {net} spans 2^{} {family} addresses (shorter than /{limit})",
            net.max_prefix_len() - len
        ))
    } else {
        None
    }
}

/// Suffixes under which anyone can get names, on top of the public suffix
/// list (which has only deeper entries under some of these).
const EXTRA_PUBLIC_SUFFIXES: &[&str] = &[
    "co.uk",
    "org.uk",
    "ac.uk",
    "gov.uk",
    "com.au",
    "net.au",
    "org.au",
    "co.jp",
    "ne.jp",
    "or.jp",
    "com.br",
    "com.cn",
    "com.mx",
    "co.nz",
    "co.za",
    "co.in",
    "com.tr",
    "com.sg",
    "github.io",
    "gitlab.io",
    "herokuapp.com",
    "appspot.com",
    "blogspot.com",
    "cloudfront.net",
    "azurewebsites.net",
    "amazonaws.com",
    "s3.amazonaws.com",
    "vercel.app",
    "netlify.app",
    "pages.dev",
    "workers.dev",
    "web.app",
    "firebaseapp.com",
    "ngrok.io",
    "ngrok-free.app",
    "trycloudflare.com",
    "onrender.com",
    "fly.dev",
    "repl.co",
    "glitch.me",
    "duckdns.org",
];

/// Whether anyone can register names directly under `name` (a canonical
/// key): a TLD, a public suffix list entry (ICANN or private, like
/// `com.ar` or `r2.dev`), or one of [`EXTRA_PUBLIC_SUFFIXES`].
pub(crate) fn is_public_suffix(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    !name.contains('.')
        || EXTRA_PUBLIC_SUFFIXES.contains(&name)
        || psl::suffix(name.as_bytes())
            .is_some_and(|s| s.is_known() && s.as_bytes() == name.as_bytes())
}

/// Whether `name` is `domain` or below it (both canonical, `name` a suffix
/// of the same looked-up name).
pub fn at_or_below(name: &str, domain: &str) -> bool {
    name.strip_suffix(domain)
        .is_some_and(|head| head.is_empty() || head.ends_with('.'))
}

/// The registrable domain a canonical name is in, by the public suffix list
/// (`psl::domain_str`) and by [`is_public_suffix`] (which adds
/// suffixes such as `co.uk`), whichever is narrower. `None` when the name is
/// itself a suffix.
pub fn registrable_domain(name: &str) -> Option<&str> {
    let listed = psl::domain_str(name)?;
    if !at_or_below(name, listed) {
        return None;
    }
    let mut rest = name;
    let ours = loop {
        let (_, parent) = rest.split_once('.')?;
        if is_public_suffix(parent) {
            break rest;
        }
        rest = parent;
    };
    Some(if ours.len() > listed.len() {
        ours
    } else {
        listed
    })
}

/// Why a canonical pattern allows names an attacker can register, if it does.
pub fn over_broad(key: &str) -> Option<String> {
    Some(match classify(key) {
        PatternKind::Exact(name) if is_public_suffix(name) => {
            format!("'{key}' is a public suffix, not a host")
        }
        PatternKind::Suffix(suffix) if is_public_suffix(suffix) => format!(
            "'{key}' allows every name under the public suffix '{suffix}', including attackers'"
        ),
        PatternKind::Glob { bucket } if is_public_suffix(bucket) => {
            format!("'{key}' spans names anyone can register (its fixed part is only '{bucket}')")
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::over_broad;
    use crate::policy::name;

    #[test]
    fn public_suffixes_come_from_the_list() {
        let broad = [
            "*.com.ar",
            "*.r2.dev",
            "com.ar",
            "*.com",
            "*.co.uk",
            "*.github.io",
            "*.amazonaws.com",
            "*.pages.dev",
            "*.herokuapp.com",
            "*.blogspot.com",
            "x*.r2.dev",
        ];
        let fine = [
            "*.example.com",
            "*.foo.com.ar",
            "*.bucket.r2.dev",
            "api.example.com",
        ];
        let cases = broad.map(|p| (p, true)).into_iter();
        for (pattern, is_broad) in cases.chain(fine.map(|p| (p, false))) {
            let key = name::pattern_key(pattern).unwrap();
            assert_eq!(over_broad(&key).is_some(), is_broad, "{pattern}");
        }
    }
}
