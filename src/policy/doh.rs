//! Public DNS-over-HTTPS/TLS resolvers: a policy that allows one lets the
//! agent resolve any name through it, past the policy, so `check` warns.

use super::qtypes::is_wildcard;

/// Well-known DNS-over-HTTPS/TLS endpoints: allowing one lets the agent
/// resolve anything past the policy, over an encrypted channel.
pub const DOH_ENDPOINTS: &[&str] = &[
    "dns.google",
    "dns.google.com",
    "dns64.dns.google",
    "8888.google",
    "cloudflare-dns.com",
    "one.one.one.one",
    "1dot1dot1dot1.cloudflare-dns.com",
    "security.cloudflare-dns.com",
    "family.cloudflare-dns.com",
    "mozilla.cloudflare-dns.com",
    "chrome.cloudflare-dns.com",
    "dns.quad9.net",
    "dns9.quad9.net",
    "dns10.quad9.net",
    "dns11.quad9.net",
    "doh.opendns.com",
    "dns.opendns.com",
    "doh.familyshield.opendns.com",
    "dns.adguard.com",
    "dns.adguard-dns.com",
    "unfiltered.adguard-dns.com",
    "family.adguard-dns.com",
    "dns.nextdns.io",
    "doh.cleanbrowsing.org",
    "doh.dns.sb",
    "dns.controld.com",
    "freedns.controld.com",
    "doh.mullvad.net",
    "dns.mullvad.net",
    "base.dns.mullvad.net",
    "dns.alidns.com",
    "doh.pub",
    "dns.twnic.tw",
    "doh.libredns.gr",
    "dns.switch.ch",
    "odvr.nic.cz",
    "ordns.he.net",
    "doh.xfinity.com",
    "dns0.eu",
    "zero.dns0.eu",
];

/// The first well-known DoH/DoT endpoint a canonical pattern allows.
pub fn doh_endpoint(key: &str) -> Option<&'static str> {
    if is_wildcard(key) {
        let glob = wildmatch::WildMatch::new(key);
        DOH_ENDPOINTS.iter().copied().find(|e| glob.matches(e))
    } else {
        DOH_ENDPOINTS.iter().copied().find(|e| *e == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doh_endpoints_are_found_under_patterns() {
        assert_eq!(doh_endpoint("dns.google"), Some("dns.google"));
        assert_eq!(doh_endpoint("*.google"), Some("dns.google"));
        assert_eq!(
            doh_endpoint("*.cloudflare-dns.com"),
            Some("1dot1dot1dot1.cloudflare-dns.com")
        );
        assert_eq!(doh_endpoint("www.google.com"), None);
        assert_eq!(doh_endpoint("*.example.com"), None);
    }
}
