//! Merging entries for one destination: ports are united, and a merge
//! expires with the source that widened it, so a longer-lived source comes
//! back alone once a shorter-lived one ends.

use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

use super::matcher::{Matcher, RuleId};
use super::model::{AddressRule, PatternFacts, Ports, Protocol, Rule};
use super::qtypes;

impl Ports {
    /// Same permissions, whatever the order or duplicates of `listed`.
    fn same_as(&self, other: &Ports) -> bool {
        match (self.any, other.any) {
            (true, true) => true,
            (false, false) => {
                self.listed.iter().all(|p| other.listed.contains(p))
                    && other.listed.iter().all(|p| self.listed.contains(p))
            }
            _ => false,
        }
    }

    fn union(&mut self, other: &Ports) {
        self.any |= other.any;
        for pair in &other.listed {
            self.add(Some(*pair));
        }
    }

    fn add(&mut self, entry: Option<(Protocol, u16)>) {
        match entry {
            None => self.any = true,
            Some(pair) if !self.listed.contains(&pair) => self.listed.push(pair),
            Some(_) => {}
        }
    }
}

#[derive(Default)]
pub(super) struct RuleBuilder {
    pub(super) rules: Vec<Rule>,
    pub(super) addresses: Vec<AddressRule>,
    pub(super) matcher: Matcher,
    /// Every entry as given, kept only when compiling a file.
    pub(super) entries: Vec<Rule>,
    pub(super) address_entries: Vec<AddressRule>,
}

/// The expiry of a merge of two sources, one expiring at `a` and one at `b`
/// (`None`: never). `same_as_later` is whether the merged permissions are
/// exactly those of the later-expiring source alone: then the merge lasts
/// as long as that source. Otherwise it holds only while both sources do,
/// and the rebuild at the earlier expiry brings the later source back alone.
fn merged_expiry(
    a: Option<SystemTime>,
    b: Option<SystemTime>,
    same_as_later: impl FnOnce(bool) -> bool,
) -> Option<SystemTime> {
    // `a_later`: source a lives at least as long as b.
    let a_later = match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a >= b,
    };
    let later = if a_later { a } else { b };
    if same_as_later(a_later) {
        later
    } else {
        a.into_iter().chain(b).min()
    }
}

impl RuleBuilder {
    pub(super) fn name(
        &mut self,
        key: String,
        dynamic: bool,
        ports: Option<(Protocol, u16)>,
        expires: Option<SystemTime>,
        qtypes: Option<Arc<[hickory_proto::rr::RecordType]>>,
    ) {
        let mut rule_ports = Ports::default();
        rule_ports.add(ports);
        let rule = Rule {
            facts: PatternFacts::of(&key),
            pattern: key.into(),
            dynamic,
            ports: rule_ports,
            expires,
            grant: None,
            qtypes,
        };
        self.entries.push(rule.clone());
        self.rule(rule);
    }

    pub(super) fn rule(&mut self, new: Rule) {
        let id = self.rules.len() as RuleId;
        let Some(existing) = self.matcher.insert(&new.pattern, id) else {
            self.rules.push(new);
            return;
        };
        // Repeated destination: merge ports, but a static entry keeps
        // precedence (a dynamic duplicate adds nothing to it).
        let rule = &mut self.rules[existing as usize];
        let old = rule.clone();
        if !new.dynamic || rule.dynamic {
            rule.ports.union(&new.ports);
        }
        let merged = &*rule;
        let same_as =
            |source: &Rule| merged.dynamic == source.dynamic && merged.ports.same_as(&source.ports);
        let expires = merged_expiry(old.expires, new.expires, |old_later| {
            same_as(if old_later { &old } else { &new })
        });
        rule.expires = expires;
        rule.qtypes = qtypes::merge_qtypes(&rule.pattern, &old.qtypes, &new.qtypes);
        if rule.grant.is_some() {
            rule.grant = new.grant;
        }
    }

    pub(super) fn address(
        &mut self,
        net: IpNet,
        ports: Option<(Protocol, u16)>,
        expires: Option<SystemTime>,
    ) {
        let mut rule_ports = Ports::default();
        rule_ports.add(ports);
        let address = AddressRule {
            net,
            ports: rule_ports,
            expires,
        };
        self.address_entries.push(address.clone());
        self.address_rule(address);
    }

    pub(super) fn address_rule(&mut self, new: AddressRule) {
        let Some(existing) = self.addresses.iter_mut().find(|a| a.net == new.net) else {
            self.addresses.push(new);
            return;
        };
        let old = existing.clone();
        existing.ports.union(&new.ports);
        let merged = &existing.ports;
        existing.expires = merged_expiry(old.expires, new.expires, |old_later| {
            merged.same_as(if old_later { &old.ports } else { &new.ports })
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use crate::diagnostics::Diagnostics;
    use crate::policy::{
        PatternFacts, Policy, PolicySet, Ports, Protocol, Rule, compile_source, parse_rfc3339,
    };

    fn at(secs: u64) -> String {
        humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(secs)).to_string()
    }

    fn compile_str(src: &str) -> Policy {
        let mut d = Diagnostics::default();
        let p = compile_source(Path::new("p.yaml"), src, &mut d);
        let errors: Vec<String> = d.errors().map(|e| e.to_string()).collect();
        p.unwrap_or_else(|| panic!("{errors:?}"))
    }

    fn time(raw: &str) -> Option<SystemTime> {
        Some(parse_rfc3339(raw).unwrap())
    }

    fn grant(pattern: &str, expires: SystemTime) -> Rule {
        Rule {
            pattern: pattern.into(),
            dynamic: false,
            ports: Ports {
                any: true,
                listed: Vec::new(),
            },
            expires: Some(expires),
            grant: Some("r".into()),
            qtypes: None,
            facts: PatternFacts::of(pattern),
        }
    }

    /// `a.example`'s rule a second after `t`, without grants.
    fn rule_after(p: &Policy, t: &str) -> Rule {
        let later = p.effective(&[], time(t).unwrap() + Duration::from_secs(1));
        later.rule_for("a.example").unwrap().clone()
    }

    const PORT_443: &str = "agent_name: a\nexpected_outbound:\n  - destination: a.example\n    port: 443\n    protocol: TCP\n";

    #[test]
    fn a_grant_widening_a_permanent_rule_lasts_only_as_long_as_the_grant() {
        let p = compile_str(PORT_443);
        let now = SystemTime::now();
        let ends = now + Duration::from_secs(1800);
        let e = p.effective(&[grant("a.example", ends)], now);
        let rule = e.rule_for("a.example").unwrap();
        assert!(rule.ports.any);
        assert_eq!(
            rule.expires,
            Some(ends),
            "not permanent: the any-port part is the grant's"
        );
        // Once it ends, the file rule is back alone, permanent and port-bound.
        let after = p.effective(&[grant("a.example", ends)], ends + Duration::from_secs(1));
        let rule = after.rule_for("a.example").unwrap();
        assert_eq!((rule.ports.any, rule.expires), (false, None));
        assert_eq!(rule.ports.listed, [(Protocol::Tcp, 443)]);
    }

    #[test]
    fn a_grant_adding_nothing_keeps_the_permanent_rule_permanent() {
        let p = compile_str("agent_name: a\nexpected_outbound:\n  - destination: a.example\n");
        let now = SystemTime::now();
        let e = p.effective(&[grant("a.example", now + Duration::from_secs(60))], now);
        assert_eq!(e.rule_for("a.example").unwrap().expires, None);
    }

    #[test]
    fn file_duplicates_expire_with_the_source_that_widened_them() {
        let (t1, t2) = (at(600), at(1200));
        // Permanent 443 plus any-port until t1: any-port until t1.
        let p = compile_str(&format!(
            "{PORT_443}  - destination: a.example\n    expires: \"{t1}\"\n"
        ));
        let rule = p.rule_for("a.example").unwrap();
        assert!(rule.ports.any);
        assert_eq!(rule.expires, time(&t1));
        let rule = rule_after(&p, &t1);
        assert_eq!((rule.ports.any, rule.expires), (false, None));

        // 443 until t2 plus any-port until t1 < t2: any-port until t1, then 443 until t2.
        let p = compile_str(&format!(
            "agent_name: a\nexpected_outbound:\n  - destination: a.example\n    port: 443\n    protocol: TCP\n    expires: \"{t2}\"\n  - destination: a.example\n    expires: \"{t1}\"\n"
        ));
        assert_eq!(p.rule_for("a.example").unwrap().expires, time(&t1));
        let rule = rule_after(&p, &t1);
        assert_eq!((rule.ports.any, rule.expires), (false, time(&t2)));

        // Any-port until t1 and until t2: the later one covers the merge.
        let p = compile_str(&format!(
            "agent_name: a\nexpected_outbound:\n  - destination: a.example\n    expires: \"{t1}\"\n  - destination: a.example\n    expires: \"{t2}\"\n"
        ));
        assert_eq!(p.rule_for("a.example").unwrap().expires, time(&t2));

        // Same ports, one permanent: permanent.
        let p = compile_str(&format!(
            "{PORT_443}  - destination: a.example\n    port: 443\n    protocol: TCP\n    expires: \"{t1}\"\n"
        ));
        assert_eq!(p.rule_for("a.example").unwrap().expires, None);
    }

    #[test]
    fn three_sources_merge_safely() {
        let (t1, t2) = (at(600), at(1200));
        // any until t1, 443 until t2, 80 forever.
        let p = compile_str(&format!(
            "agent_name: a\nexpected_outbound:\n  - destination: a.example\n    expires: \"{t1}\"\n  - destination: a.example\n    port: 443\n    protocol: TCP\n    expires: \"{t2}\"\n  - destination: a.example\n    port: 80\n    protocol: TCP\n"
        ));
        assert_eq!(p.rule_for("a.example").unwrap().expires, time(&t1));
        let rule = rule_after(&p, &t1);
        assert!(!rule.ports.any && rule.ports.listed.len() == 2);
        assert_eq!(rule.expires, time(&t2));
        let rule = rule_after(&p, &t2);
        assert_eq!(rule.ports.listed, [(Protocol::Tcp, 80)]);
        assert_eq!(rule.expires, None);
    }

    #[test]
    fn an_ignored_dynamic_duplicate_keeps_the_static_expiry() {
        let t1 = at(600);
        let p = compile_str(&format!(
            "agent_name: a\nexpected_outbound:\n  - destination: a.example\n    port: 443\n    protocol: TCP\n    expires: \"{t1}\"\nallowed_dynamic_resolution:\n  - a.example\n"
        ));
        let rule = p.rule_for("a.example").unwrap();
        assert!(!rule.dynamic && !rule.ports.any);
        assert_eq!(
            rule.expires,
            time(&t1),
            "a permanent dynamic duplicate must not make it permanent"
        );
        let rule = rule_after(&p, &t1);
        assert!(rule.dynamic && rule.expires.is_none());
    }

    #[test]
    fn address_duplicates_expire_with_the_source_that_widened_them() {
        let t1 = at(600);
        let p = compile_str(&format!(
            "agent_name: a\nexpected_outbound:\n  - destination: 192.0.2.1\n    port: 443\n    protocol: TCP\n  - destination: 192.0.2.1\n    expires: \"{t1}\"\n  - destination: 192.0.2.2\n  - destination: 192.0.2.2\n    expires: \"{t1}\"\n"
        ));
        assert_eq!(p.addresses.len(), 2);
        assert!(p.addresses[0].ports.any);
        assert_eq!(p.addresses[0].expires, time(&t1));
        assert_eq!(
            p.addresses[1].expires, None,
            "any-port forever covers the merge"
        );
        assert_eq!(p.address_entries().len(), 4);
        let later = p.effective(&[], time(&t1).unwrap() + Duration::from_secs(1));
        let a = &later.addresses[0];
        assert_eq!((a.ports.any, a.expires), (false, None));
        assert_eq!(a.ports.listed, [(Protocol::Tcp, 443)]);
        assert_eq!(later.addresses.len(), 2);
    }

    #[test]
    fn next_expiry_after_skips_what_already_expired() {
        let (t1, t2) = (at(600), at(1200));
        let p = compile_str(&format!(
            "agent_name: a\nexpected_outbound:\n  - destination: a.example\n    expires: \"{t1}\"\n  - destination: 192.0.2.1\n    expires: \"{t2}\"\n"
        ));
        let (t1, t2) = (time(&t1).unwrap(), time(&t2).unwrap());
        assert_eq!(p.next_expiry_after(SystemTime::now()), Some(t1));
        // At t1 the file still holds the expired entry: the next deadline is t2, never t1 again.
        assert_eq!(p.next_expiry(), Some(t1));
        assert_eq!(p.next_expiry_after(t1), Some(t2));
        assert_eq!(p.next_expiry_after(t2), None);
        let set = PolicySet::index(vec![Arc::new(p)]);
        assert_eq!(set.next_expiry_after(t1), Some(t2));
        assert_eq!(set.next_expiry_after(t2 + Duration::from_secs(5)), None);
    }
}
