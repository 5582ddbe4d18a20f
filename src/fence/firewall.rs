//! The targets opened at startup, and which one each policy feeds: the
//! face of the fence to the rest of allowdns. An answer's addresses become
//! keys here and go to their target before the reply leaves.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::rr::{RData, Record};

use super::error::{FeedError, FenceError, TargetId};
use super::handed::{Handed, HandedOut};
use super::keys::{PRUNE_AT, SetId, Static, addresses, dynamic_keys, static_elements};
use super::takeover::label;
use super::target::Target;
use crate::policy::{Policy, PolicySet, Rule};
use crate::sync::lock;

/// The targets opened at startup. Which one a policy feeds follows from its
/// own `firewall:` config, so the policy in force and its target never disagree.
pub struct Firewall {
    /// One per distinct `firewall:` config, in the order policies name them.
    pub(super) targets: Vec<Target>,
    /// Which name each address was handed out for, to name it in alerts.
    pub handed: HandedOut,
}

impl Firewall {
    /// Opens a socket per target and checks every set; changes nothing, so
    /// `check` can use it. `None` when no policy feeds a firewall.
    pub fn open(policies: &PolicySet) -> Result<Option<Firewall>, FenceError> {
        let mut targets: Vec<Target> = Vec::new();
        for config in policies.policies.iter().filter_map(|p| p.firewall.as_ref()) {
            if !targets.iter().any(|t| &t.config == config) {
                targets.push(Target::open(config)?);
            }
        }
        Ok((!targets.is_empty()).then_some(Firewall {
            targets,
            handed: HandedOut::default(),
        }))
    }

    fn target_for(&self, policy: &Policy) -> Option<&Target> {
        let config = policy.firewall.as_ref()?;
        self.targets.iter().find(|t| &t.config == config)
    }

    /// Whether every policy feeds a target opened at startup (opening netlink
    /// sockets in new namespaces needs a restart). Changes nothing.
    pub fn check(&self, policies: &PolicySet) -> Result<(), FenceError> {
        for policy in &policies.policies {
            if let Some(config) = &policy.firewall
                && self.target_for(policy).is_none()
            {
                return Err(FenceError::NotOpen {
                    agent: policy.agent.to_string(),
                    target: TargetId::of(config),
                });
            }
        }
        Ok(())
    }

    /// Makes the policy-address elements match the policies' IP/CIDR
    /// destinations, in every target. Elements of an expiring entry carry a
    /// kernel timeout to its end.
    pub fn sync_static(&self, policies: &PolicySet) -> Result<(), FenceError> {
        let now = SystemTime::now();
        for target in &self.targets {
            let mut wanted: Vec<Static> = Vec::new();
            for policy in &policies.policies {
                if policy.firewall.as_ref() != Some(&target.config) {
                    continue;
                }
                for address in policy
                    .addresses
                    .iter()
                    .filter(|a| a.expires.is_none_or(|at| now < at))
                {
                    for e in static_elements(&target.config, address.net, &address.ports) {
                        let e = Static {
                            expires: address.expires,
                            ..e
                        };
                        match wanted.iter_mut().find(|w| w.same_range(&e)) {
                            // The same range from two entries lives as long as the longer one.
                            Some(w) => {
                                w.expires = w.expires.zip(e.expires).map(|(a, b)| a.max(b));
                            }
                            None => wanted.push(e),
                        }
                    }
                }
            }
            target.replace_static(wanted, now)?;
            let monitor = policies
                .policies
                .iter()
                .any(|p| p.monitor && p.firewall.as_ref() == Some(&target.config));
            target.sync_monitor(monitor)?;
        }
        Ok(())
    }

    /// Takes out, at once, every element fed under `agent`'s expiring rule
    /// `pattern` (a revoke, a shortened grant, a reload that drops it),
    /// instead of letting them run to their timeout. `generation` is the
    /// policy set that no longer has the rule: an answer decided against an
    /// older one feeds nothing under it from now on, for at least `remember`
    /// (the longest an answer may be on its way). Addresses other names also
    /// led to go too; they are fed again on their next answer.
    pub fn withdraw(
        &self,
        agent: &str,
        pattern: &str,
        generation: u64,
        remember: Duration,
    ) -> Result<usize, FenceError> {
        let mut total = 0;
        let mut first_error = None;
        // Every target records the withdrawal, even after one failed.
        for target in &self.targets {
            match target.withdraw(agent, pattern, generation, remember) {
                Ok(n) => total += n,
                Err(source) => {
                    first_error.get_or_insert(FenceError::Withdraw {
                        target: TargetId::of(&target.config),
                        pattern: pattern.to_string(),
                        source,
                    });
                }
            }
        }
        first_error.map_or(Ok(total), Err)
    }

    /// Stops tracking keys for expiring rules no longer in force; their
    /// elements age out by their own timeouts.
    pub fn forget_ended(&self, policies: &PolicySet) {
        for target in &self.targets {
            let mut by_rule = lock(&target.by_rule);
            by_rule.fed.retain(|(agent, pattern), _| {
                policies.by_agent(agent).is_some_and(|p| {
                    p.rules
                        .iter()
                        .chain(&p.learn)
                        .any(|r| r.pattern == *pattern && withdrawable(p, r))
                })
            });
        }
    }

    /// Adds every address in `answers` to the agent's sets, before the reply
    /// leaves. Records of a family the target cannot pass are removed, and
    /// TTLs are capped at `max_ttl` so no client caches past its element.
    ///
    /// The answer was decided against the policy set of `generation`, which
    /// a revoke or reload may have replaced while it was on its way. Under the lock that withdrawals take: if the
    /// rule was withdrawn by a later set, or its `expires` has passed,
    /// nothing is fed (SERVFAIL).
    pub fn feed_decided_at(
        &self,
        policy: &Policy,
        rule: &Rule,
        generation: u64,
        answers: &mut Vec<Record>,
    ) -> Result<(), FeedError> {
        let Some(target) = self.target_for(policy) else {
            return match &policy.firewall {
                // Cannot happen after `check`; never hand out what the fence would not pass.
                Some(config) => Err(FeedError::NotOpen {
                    target: TargetId::of(config),
                }),
                None => Ok(()),
            };
        };
        let config = &target.config;
        answers.retain(|r| match &r.data {
            RData::A(_) => config.passes_v4(),
            RData::AAAA(_) => config.passes_v6(),
            _ => true,
        });
        // An element allowed by an expiring rule (a grant, `expires:`) lives
        // no longer than the rule, plus grace.
        let rule_left = rule.expires.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            u32::try_from(left.as_secs()).unwrap_or(u32::MAX)
        });
        // Monitor mode's catch-all feeds nothing: the monitor set passes
        // what it resolves, and the connection is alerted with its name.
        let monitored = policy.monitor
            && policy
                .learn
                .as_ref()
                .is_some_and(|l| l.pattern == rule.pattern);
        let handed = answers.first().map(|r| Handed {
            name: crate::observe::audit::display_name(&r.name),
            agent: policy.agent.clone(),
            rule: rule.pattern.clone(),
            ports: rule.ports.clone(),
            fed: !monitored,
        });
        let mut given: Vec<(IpAddr, u32)> = Vec::new();
        let mut wanted: Vec<(SetId, Vec<u8>, u32)> = Vec::new();
        for record in answers.iter_mut() {
            record.ttl = record.ttl.min(config.max_ttl);
            let lifetime = record
                .ttl
                .clamp(config.min_ttl, config.max_ttl)
                .min(rule_left.unwrap_or(u32::MAX));
            for ip in addresses(record) {
                if (ip.is_ipv4() && !config.passes_v4()) || (ip.is_ipv6() && !config.passes_v6()) {
                    continue;
                }
                given.push((ip, lifetime));
                if monitored {
                    continue;
                }
                for (set, key) in dynamic_keys(ip, &rule.ports) {
                    wanted.push((set, key, lifetime));
                }
            }
        }
        // Remembered once the addresses are surely handed out.
        let remember = |fed: Result<(), FeedError>| {
            if let (Ok(()), Some(handed)) = (&fed, &handed) {
                let now = Instant::now();
                for (ip, lifetime) in &given {
                    self.handed.record(*ip, handed, *lifetime, now);
                }
            }
            fed
        };
        if wanted.is_empty() {
            return remember(Ok(()));
        }
        let failed = |source| FeedError::Update {
            target: TargetId::of(config),
            source,
        };
        // Read back by the next run's take-over: who it was handed to, for what.
        let label = handed.as_ref().map(|h| label(&h.agent, &h.name));
        let label = label.as_deref();
        if !withdrawable(policy, rule) {
            return remember(target.feed(wanted, label).map_err(failed));
        }
        // Held through the update, so a withdraw cannot slip between the
        // check that the rule still stands and the add.
        let mut by_rule = lock(&target.by_rule);
        let key = (policy.agent.clone(), rule.pattern.clone());
        let ended = rule.expires.is_some_and(|end| end <= SystemTime::now());
        if ended || !by_rule.may_feed(&key, generation) {
            return Err(FeedError::Ended {
                agent: policy.agent.to_string(),
                pattern: rule.pattern.to_string(),
            });
        }
        let keys = by_rule.fed.entry(key).or_default();
        keys.extend(wanted.iter().map(|(set, key, _)| (*set, key.clone())));
        if keys.len() > PRUNE_AT {
            // Keys whose elements already timed out need no withdrawal.
            let expiries = lock(&target.expiries);
            let now = Instant::now();
            keys.retain(|(set, key)| expiries.known(*set, key, now).is_some_and(|e| e > now));
        }
        remember(target.feed(wanted, label).map_err(failed))
    }
}

/// Rules whose fed elements may have to go before their timeout: expiring
/// ones (a revoke) and learn mode's catch-all (a switch to enforce).
pub fn withdrawable(policy: &Policy, rule: &Rule) -> bool {
    rule.expires.is_some()
        || policy
            .learn
            .as_ref()
            .is_some_and(|l| l.pattern == rule.pattern)
}
