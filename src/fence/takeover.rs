//! Elements a previous run left in the sets: on start, those the policy in
//! force still allows are taken over (kept, and withdrawn like any other on
//! a revoke), the rest withdrawn at once. An element says why it is there in
//! its nft comment: the agent it was handed to and the name it answered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::Name;

use super::error::{FenceError, TargetId};
use super::firewall::{Firewall, withdrawable};
use super::handed::Handed;
use super::keys::{SetId, dynamic_keys, set_ops};
use super::netlink::{Element, Listed};
use super::target::Target;
use crate::policy::name::QueryKey;
use crate::policy::{Policy, PolicySet, Rule};
use crate::sync::lock;

/// The label an element is fed with.
pub(super) fn label(agent: &str, name: &str) -> String {
    format!("{agent} {name}")
}

/// One element of a previous run withdrawn because the policy in force does
/// not allow it.
#[derive(Debug)]
pub struct Withdrawn {
    pub target: TargetId,
    pub address: IpAddr,
    /// The agent and name its label gives, when it has one.
    pub agent: Option<String>,
    pub name: Option<String>,
    pub reason: String,
}

/// What the take-over did.
#[derive(Debug, Default)]
pub struct TakeOver {
    pub kept: usize,
    pub withdrawn: Vec<Withdrawn>,
}

impl Firewall {
    /// Keeps the elements a previous run left that `policies` still allows
    /// (and tracks them as if fed now), and deletes the others. Run once,
    /// after [`Firewall::sync_static`].
    pub fn take_over(&self, policies: &PolicySet) -> Result<TakeOver, FenceError> {
        let mut done = TakeOver::default();
        let mut first_error = None;
        for target in &self.targets {
            if let Err(e) = self.take_over_in(target, policies, &mut done) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(done), Err)
    }

    fn take_over_in(
        &self,
        target: &Target,
        policies: &PolicySet,
        done: &mut TakeOver,
    ) -> Result<(), FenceError> {
        let inherited = std::mem::take(&mut *lock(&target.inherited));
        let installed = lock(&target.installed).clone();
        let now = Instant::now();
        let mut delete: HashMap<SetId, Vec<Element>> = HashMap::new();
        let mut withdrawn = Vec::new();
        for (set, listed) in inherited {
            // An expiring policy range the policy in force installs again.
            if installed
                .iter()
                .any(|e| e.set == set && e.key == listed.key && e.key_end == listed.key_end)
            {
                continue;
            }
            let Some(address) = address_of(set, &listed.key) else {
                continue;
            };
            let left = listed.expires_in.unwrap_or_default();
            match verdict(target, policies, set, &listed, address, left) {
                Ok((policy, rule, name)) => {
                    done.kept += 1;
                    let handed = Handed {
                        name: name.to_string(),
                        agent: policy.agent.clone(),
                        rule: rule.pattern.clone(),
                        ports: rule.ports.clone(),
                        fed: true,
                    };
                    let secs = u32::try_from(left.as_secs()).unwrap_or(u32::MAX);
                    self.handed.record(address, &handed, secs, now);
                    if withdrawable(policy, rule) {
                        let mut by_rule = lock(&target.by_rule);
                        by_rule
                            .fed
                            .entry((policy.agent.clone(), rule.pattern.clone()))
                            .or_default()
                            .insert((set, listed.key.clone()));
                    }
                }
                Err(reason) => {
                    let (agent, name) = match listed.label.as_deref().and_then(parse) {
                        Some((a, n)) => (Some(a.to_string()), Some(n.to_string())),
                        None => (None, None),
                    };
                    withdrawn.push(Withdrawn {
                        target: TargetId::of(&target.config),
                        address,
                        agent,
                        name,
                        reason,
                    });
                    // One about to time out is left to: deleting a missing
                    // element fails the whole batch.
                    if left > Duration::from_secs(1) {
                        delete.entry(set).or_default().push(Element {
                            key: listed.key.clone(),
                            key_end: listed.key_end.clone(),
                            timeout: None,
                            label: None,
                        });
                    }
                }
            }
        }
        if !delete.is_empty() {
            let config = &target.config;
            let ops = set_ops(config, &delete, true);
            let mut netlink = lock(&target.netlink);
            netlink.apply(&ops).map_err(|source| FenceError::Install {
                target: TargetId::of(config),
                source,
            })?;
            let mut expiries = lock(&target.expiries);
            for (set, elements) in &delete {
                for e in elements {
                    expiries.map.remove(&(*set, e.key.clone()));
                }
            }
        }
        done.withdrawn.extend(withdrawn);
        Ok(())
    }
}

/// (agent, name) from a label.
fn parse(label: &str) -> Option<(&str, &str)> {
    label.split_once(' ')
}

/// The address an element's key starts with.
pub(super) fn address_of(set: SetId, key: &[u8]) -> Option<IpAddr> {
    match set {
        SetId::V4 | SetId::V4Ports => {
            let b: [u8; 4] = key.get(..4)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        SetId::V6 | SetId::V6Ports => {
            let b: [u8; 16] = key.get(..16)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
    }
}

/// Whether the policy in force would feed this element now: the policy,
/// the rule allowing the name, and the element's key for that rule's ports.
fn verdict<'a>(
    target: &Target,
    policies: &'a PolicySet,
    set: SetId,
    listed: &'a Listed,
    address: IpAddr,
    left: Duration,
) -> Result<(&'a Arc<Policy>, &'a Rule, &'a str), String> {
    // No element allowdns feeds outlives max_ttl plus grace: a longer one
    // was written by someone else.
    let longest = u64::from(target.config.max_ttl) + u64::from(target.config.grace) + 1;
    if left > Duration::from_secs(longest) {
        return Err(format!(
            "{}s left, longer than this table's max_ttl plus grace ({longest}s)",
            left.as_secs()
        ));
    }
    let Some((agent, name)) = listed.label.as_deref().and_then(parse) else {
        return Err("not labelled as handed out by allowdns".into());
    };
    let Some(policy) = policies.by_agent(agent) else {
        return Err(format!("no policy for agent '{agent}'"));
    };
    if policy.firewall.as_ref() != Some(&target.config) {
        return Err(format!("agent '{agent}' no longer feeds this table"));
    }
    let key = Name::from_ascii(name).ok().and_then(|n| QueryKey::of(&n));
    let rule = match key.as_ref().and_then(|k| policy.rule_for(k.as_str())) {
        Some(rule) if rule.live() => rule,
        // Learn mode's catch-all feeds; monitor mode's feeds nothing.
        _ => match &policy.learn {
            Some(rule) if !policy.monitor => rule,
            _ => return Err(format!("the policy no longer allows {name}")),
        },
    };
    if crate::policy::special::special(address).is_some() && !policy.opens(rule, address) {
        return Err(format!(
            "{address} is special-purpose and {name}'s rule no longer opens it"
        ));
    }
    if !dynamic_keys(address, &rule.ports).contains(&(set, listed.key.clone())) {
        return Err(format!("the policy no longer allows {name} on this port"));
    }
    Ok((policy, rule, name))
}
