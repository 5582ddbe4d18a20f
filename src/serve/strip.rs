//! Special-purpose addresses out of an answer, at answer time: A and AAAA
//! records whole, HTTPS/SVCB address hints one by one, and any address in
//! the authority section. The table is policy data (`policy::special`).

use std::net::IpAddr;

use hickory_proto::rr::rdata::svcb::{SvcParamKey, SvcParamValue};
use hickory_proto::rr::{RData, Record};

use crate::policy::special::special;

/// Removes from `answers` every special address `opens` does not allow: A and AAAA
/// records whole, and addresses from HTTPS/SVCB hints. Returns what went,
/// and whether the answer had address records and has none left (NODATA).
pub fn strip(answers: &mut Vec<Record>, opens: &dyn Fn(IpAddr) -> bool) -> (Vec<IpAddr>, bool) {
    let mut stripped = Vec::new();
    let closed = |ip: IpAddr| special(ip).is_some() && !opens(ip);
    let mut had_addresses = false;
    answers.retain_mut(|record| {
        let ip = match &mut record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            RData::HTTPS(https) => {
                strip_hints(&mut https.0.svc_params, &closed, &mut stripped);
                return true;
            }
            RData::SVCB(svcb) => {
                strip_hints(&mut svcb.svc_params, &closed, &mut stripped);
                return true;
            }
            _ => return true,
        };
        had_addresses = true;
        if closed(ip) {
            stripped.push(ip);
            return false;
        }
        true
    });
    let emptied = had_addresses
        && !stripped.is_empty()
        && !answers
            .iter()
            .any(|r| matches!(r.data, RData::A(_) | RData::AAAA(_)));
    (stripped, emptied)
}

/// Keeps only SOA and NS records in an authority section; the addresses of
/// A and AAAA records removed are added to `stripped` (for the audit).
pub fn keep_authority(authority: &mut Vec<Record>, stripped: &mut Vec<IpAddr>) {
    authority.retain(|record| match &record.data {
        RData::SOA(_) | RData::NS(_) => true,
        RData::A(a) => {
            stripped.push(IpAddr::V4(a.0));
            false
        }
        RData::AAAA(a) => {
            stripped.push(IpAddr::V6(a.0));
            false
        }
        _ => false,
    });
}

fn strip_hints(
    params: &mut Vec<(SvcParamKey, SvcParamValue)>,
    closed: &dyn Fn(IpAddr) -> bool,
    stripped: &mut Vec<IpAddr>,
) {
    let mut out = |ip: IpAddr| {
        let drop = closed(ip);
        if drop {
            stripped.push(ip);
        }
        !drop
    };
    params.retain_mut(|(_, value)| match value {
        // An empty hint is malformed on the wire: the key goes with its last address.
        SvcParamValue::Ipv4Hint(hint) => {
            hint.0.retain(|a| out(IpAddr::V4(a.0)));
            !hint.0.is_empty()
        }
        SvcParamValue::Ipv6Hint(hint) => {
            hint.0.retain(|a| out(IpAddr::V6(a.0)));
            !hint.0.is_empty()
        }
        _ => true,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;
    use hickory_proto::rr::rdata::svcb::{IpHint, SVCB};
    use hickory_proto::rr::rdata::{A, AAAA, HTTPS};

    #[test]
    fn stripping_removes_records_and_hints() {
        let name = Name::from_ascii("x.cdn.test.").unwrap();
        let a = |s: &str| Record::from_rdata(name.clone(), 60, RData::A(A(s.parse().unwrap())));
        let mut answers = vec![a("169.254.169.254"), a("203.0.113.5")];
        let (gone, empty) = strip(&mut answers, &|_| false);
        assert_eq!(gone, vec!["169.254.169.254".parse::<IpAddr>().unwrap()]);
        assert!(!empty);
        assert_eq!(answers.len(), 1);
        let mut answers = vec![a("10.9.9.9")];
        assert!(strip(&mut answers, &|_| false).1, "nothing left: NODATA");
        let mut answers = vec![a("10.9.9.9")];
        let (gone, _) = strip(&mut answers, &|ip| {
            "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap().contains(&ip)
        });
        assert!(gone.is_empty() && answers.len() == 1, "opted in");
        let https = SVCB::new(
            1,
            Name::root(),
            vec![
                (
                    SvcParamKey::Ipv4Hint,
                    SvcParamValue::Ipv4Hint(IpHint(vec![A("10.1.1.1".parse().unwrap())])),
                ),
                (
                    SvcParamKey::Ipv6Hint,
                    SvcParamValue::Ipv6Hint(IpHint(vec![
                        AAAA("fe80::1".parse().unwrap()),
                        AAAA("2001:db8::1".parse().unwrap()),
                    ])),
                ),
            ],
        );
        let mut answers = vec![Record::from_rdata(
            name.clone(),
            60,
            RData::HTTPS(HTTPS(https)),
        )];
        let (gone, empty) = strip(&mut answers, &|_| false);
        assert_eq!(gone.len(), 2);
        assert!(!empty, "an HTTPS record without hints is still an answer");
        let RData::HTTPS(h) = &answers[0].data else {
            panic!()
        };
        assert_eq!(h.0.svc_params.len(), 1, "the emptied ipv4hint went");
    }
}
