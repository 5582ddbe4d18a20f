//! What goes into a target's sets: which set an address belongs in, its key
//! in nftables register layout, the range elements of a policy's IP/CIDR
//! destinations, and what allowdns knows of each element's expiry.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::rr::rdata::svcb::SvcParamValue;
use hickory_proto::rr::{RData, Record};
use ipnet::IpNet;

use super::netlink::{Element, NFT_SET_INTERVAL, NFT_SET_TIMEOUT, SetOp};
use crate::policy::firewall::FirewallConfig;
use crate::policy::{Ports, Protocol};

/// The sets one target holds, by the family its table passes.
pub(super) trait TargetSets {
    fn set_name(&self, set: SetId) -> &str;
    fn sets(&self) -> Vec<SetId>;
}

/// One netlink operation per set of `config`: its elements added, or with
/// `delete` withdrawn.
pub(super) fn set_ops<'a>(
    config: &'a FirewallConfig,
    per_set: &'a HashMap<SetId, Vec<Element>>,
    delete: bool,
) -> Vec<SetOp<'a>> {
    per_set
        .iter()
        .map(|(set, elements)| SetOp {
            family: config.family,
            table: &config.table,
            set: config.set_name(*set),
            add: if delete { &[] } else { elements },
            delete: if delete { elements } else { &[] },
        })
        .collect()
}

impl TargetSets for FirewallConfig {
    fn set_name(&self, set: SetId) -> &str {
        match set {
            SetId::V4 => &self.set_v4,
            SetId::V6 => &self.set_v6,
            SetId::V4Ports => &self.set_v4_ports,
            SetId::V6Ports => &self.set_v6_ports,
        }
    }

    fn sets(&self) -> Vec<SetId> {
        let mut sets = Vec::new();
        if self.passes_v4() {
            sets.extend([SetId::V4, SetId::V4Ports]);
        }
        if self.passes_v6() {
            sets.extend([SetId::V6, SetId::V6Ports]);
        }
        sets
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum SetId {
    V4,
    V6,
    V4Ports,
    V6Ports,
}

impl SetId {
    /// Key length and flags the set must have for the elements allowdns writes.
    pub(super) fn expected(self) -> (u32, u32, &'static str) {
        match self {
            SetId::V4 => (4, NFT_SET_TIMEOUT, "type ipv4_addr; flags timeout"),
            SetId::V6 => (16, NFT_SET_TIMEOUT, "type ipv6_addr; flags timeout"),
            SetId::V4Ports => (
                12,
                NFT_SET_TIMEOUT | NFT_SET_INTERVAL,
                "type ipv4_addr . inet_proto . inet_service; flags interval,timeout",
            ),
            SetId::V6Ports => (
                24,
                NFT_SET_TIMEOUT | NFT_SET_INTERVAL,
                "type ipv6_addr . inet_proto . inet_service; flags interval,timeout",
            ),
        }
    }
}

/// An element from a policy's IP/CIDR destination: permanent, or with a
/// kernel timeout when the entry expires, so it ends even if allowdns is down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Static {
    pub(super) set: SetId,
    pub(super) key: Vec<u8>,
    pub(super) key_end: Option<Vec<u8>>,
    /// `None`: permanent.
    pub(super) expires: Option<SystemTime>,
}

impl Static {
    pub(super) fn same_range(&self, other: &Static) -> bool {
        self.set == other.set && self.key == other.key && self.key_end == other.key_end
    }

    pub(super) fn element(&self, now: SystemTime) -> Element {
        Element {
            key: self.key.clone(),
            key_end: self.key_end.clone(),
            timeout: self.expires.map(|at| {
                at.duration_since(now)
                    .unwrap_or_default()
                    .max(Duration::from_secs(1))
            }),
            label: None,
        }
    }
}

/// Entries kept in a target's expiry map before expired ones are pruned.
pub(super) const PRUNE_AT: usize = 200_000;

/// What allowdns knows of element expiries in one target.
#[derive(Default)]
pub(super) struct Expiries {
    /// When each element fed expires, by (set, key).
    pub(super) map: HashMap<(SetId, Vec<u8>), Instant>,
    /// The latest expiry among entries forgotten to bound memory. A key not
    /// in the map may still live in the kernel until then, so it is treated as
    /// expiring then: elements are never shortened.
    pub(super) floor: Option<Instant>,
}

impl Expiries {
    pub(super) fn known(&self, set: SetId, key: &[u8], now: Instant) -> Option<Instant> {
        let floor = self.floor.filter(|f| *f > now);
        match (self.map.get(&(set, key.to_vec())).copied(), floor) {
            (Some(e), Some(f)) => Some(e.max(f)),
            (e, f) => e.or(f),
        }
    }

    pub(super) fn prune(&mut self, now: Instant) {
        if self.map.len() <= PRUNE_AT {
            return;
        }
        self.map.retain(|_, e| *e > now);
        if self.map.len() > PRUNE_AT {
            let latest = self.map.values().max().copied();
            self.floor = self.floor.max(latest);
            self.map.clear();
        }
    }
}

/// Whether a policy range element contains a single concatenated key.
pub(super) fn covers(range: &Static, key: &[u8]) -> bool {
    let Some(end) = &range.key_end else {
        return range.key == key;
    };
    if range.key.len() != key.len() || end.len() != key.len() {
        return false;
    }
    // Fields: address, protocol (1 byte padded to 4), port (2 bytes padded to 4).
    let addr = key.len() - 8;
    let fields = [(0, addr), (addr, addr + 1), (addr + 4, addr + 6)];
    fields
        .iter()
        .all(|&(a, b)| range.key[a..b] <= key[a..b] && key[a..b] <= end[a..b])
}

/// The targets opened at startup. Which one a policy feeds follows from its
/// Every address a record hands out: A, AAAA, and HTTPS/SVCB address hints.
pub(super) fn addresses(record: &Record) -> Vec<IpAddr> {
    let svcb = match &record.data {
        RData::A(a) => return vec![IpAddr::V4(a.0)],
        RData::AAAA(a) => return vec![IpAddr::V6(a.0)],
        RData::HTTPS(https) => &https.0,
        RData::SVCB(svcb) => svcb,
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for (_, value) in &svcb.svc_params {
        match value {
            SvcParamValue::Ipv4Hint(hint) => out.extend(hint.0.iter().map(|a| IpAddr::V4(a.0))),
            SvcParamValue::Ipv6Hint(hint) => out.extend(hint.0.iter().map(|a| IpAddr::V6(a.0))),
            _ => {}
        }
    }
    out
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// `addr . proto . port`, each field padded to 4 bytes as nftables registers are.
fn concat(ip: &[u8], proto: u8, port: u16) -> Vec<u8> {
    let mut key = ip.to_vec();
    key.extend_from_slice(&[proto, 0, 0, 0]);
    key.extend_from_slice(&port.to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    key
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    }
}

/// Keys for a DNS-fed address: the plain set for any port, else one
/// concatenated key per allowed (protocol, port).
pub(super) fn dynamic_keys(ip: IpAddr, ports: &Ports) -> Vec<(SetId, Vec<u8>)> {
    let (plain, with_ports) = if ip.is_ipv4() {
        (SetId::V4, SetId::V4Ports)
    } else {
        (SetId::V6, SetId::V6Ports)
    };
    let bytes = ip_bytes(ip);
    if ports.any || ports.listed.is_empty() {
        return vec![(plain, bytes)];
    }
    ports
        .listed
        .iter()
        .map(|&(proto, port)| (with_ports, concat(&bytes, proto_number(proto), port)))
        .collect()
}

/// Range elements for an IP/CIDR destination (permanent until the caller sets `expires`).
pub(super) fn static_elements(config: &FirewallConfig, net: IpNet, ports: &Ports) -> Vec<Static> {
    let set = match net {
        IpNet::V4(_) if config.passes_v4() => SetId::V4Ports,
        IpNet::V6(_) if config.passes_v6() => SetId::V6Ports,
        _ => return Vec::new(),
    };
    let (first, last) = (ip_bytes(net.network()), ip_bytes(net.broadcast()));
    let ranges: Vec<((u8, u16), (u8, u16))> = if ports.any || ports.listed.is_empty() {
        vec![((0, 0), (255, 65535))]
    } else {
        ports
            .listed
            .iter()
            .map(|&(p, port)| ((proto_number(p), port), (proto_number(p), port)))
            .collect()
    };
    ranges
        .into_iter()
        .map(|((p0, port0), (p1, port1))| Static {
            set,
            key: concat(&first, p0, port0),
            key_end: Some(concat(&last, p1, port1)),
            expires: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_address_hints_are_handed_out_addresses() {
        use hickory_proto::rr::rdata::svcb::{IpHint, SVCB, SvcParamKey};
        use hickory_proto::rr::rdata::{A, AAAA, HTTPS};
        let svcb = SVCB::new(
            1,
            hickory_proto::rr::Name::root(),
            vec![
                (
                    SvcParamKey::Ipv4Hint,
                    SvcParamValue::Ipv4Hint(IpHint(vec![A::new(192, 0, 2, 7)])),
                ),
                (
                    SvcParamKey::Ipv6Hint,
                    SvcParamValue::Ipv6Hint(IpHint(vec![AAAA::new(
                        0x2001, 0xdb8, 0, 0, 0, 0, 0, 7,
                    )])),
                ),
            ],
        );
        let record = Record::from_rdata(
            hickory_proto::rr::Name::root(),
            60,
            RData::HTTPS(HTTPS(svcb)),
        );
        assert_eq!(
            addresses(&record),
            vec![
                "192.0.2.7".parse::<IpAddr>().unwrap(),
                "2001:db8::7".parse().unwrap()
            ]
        );
    }

    #[test]
    fn keys_follow_nftables_register_layout() {
        let ports = Ports {
            any: false,
            listed: vec![(Protocol::Tcp, 443)],
        };
        let keys = dynamic_keys("192.0.2.1".parse().unwrap(), &ports);
        assert_eq!(
            keys,
            vec![(SetId::V4Ports, vec![192, 0, 2, 1, 6, 0, 0, 0, 1, 187, 0, 0])]
        );
        let any = Ports {
            any: true,
            listed: vec![],
        };
        assert_eq!(
            dynamic_keys("2001:db8::1".parse().unwrap(), &any)[0]
                .1
                .len(),
            16
        );
        let config = FirewallConfig::with_defaults();
        let e = static_elements(&config, "10.0.0.0/8".parse().unwrap(), &any);
        assert_eq!(e[0].key, vec![10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            e[0].key_end.as_ref().unwrap(),
            &vec![10, 255, 255, 255, 255, 0, 0, 0, 255, 255, 0, 0]
        );
    }
}
