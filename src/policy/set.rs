//! The compiled set: every loaded policy, and the index from a client's
//! address to the policy that governs it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

use super::model::{Policy, Rule};

/// All loaded policies and the index from client address to policy.
#[derive(Debug, Default)]
pub struct PolicySet {
    pub policies: Vec<Arc<Policy>>,
    /// (network, policy index), longest prefix first.
    by_client: Vec<(IpNet, usize)>,
    /// The one policy without `clients`, when it is the only policy.
    catch_all: Option<usize>,
}

impl PolicySet {
    /// The policy governing a client, or `None` (the client is refused).
    pub fn for_client(&self, ip: IpAddr) -> Option<&Arc<Policy>> {
        let ip = ip.to_canonical();
        self.by_client
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|&(_, i)| &self.policies[i])
            .or_else(|| self.catch_all.map(|i| &self.policies[i]))
    }

    /// The set in force at `now`: each policy with its expired entries
    /// dropped and its agent's grants added. Untouched policies are shared.
    pub fn effective(&self, grants: &HashMap<Arc<str>, Vec<Rule>>, now: SystemTime) -> Self {
        let policies = self
            .policies
            .iter()
            .map(|p| {
                let extra = grants.get(&p.agent).map_or(&[][..], Vec::as_slice);
                if extra.is_empty() && p.expiries().next().is_none() {
                    p.clone()
                } else {
                    Arc::new(p.effective(extra, now))
                }
            })
            .collect();
        Self::index(policies)
    }

    /// The earliest expiry across all policies strictly after `now`.
    pub fn next_expiry_after(&self, now: SystemTime) -> Option<SystemTime> {
        self.policies
            .iter()
            .filter_map(|p| p.next_expiry_after(now))
            .min()
    }

    /// The policy for an agent name.
    pub fn by_agent(&self, agent: &str) -> Option<&Arc<Policy>> {
        self.policies.iter().find(|p| &*p.agent == agent)
    }

    pub(super) fn index(policies: Vec<Arc<Policy>>) -> Self {
        let mut by_client: Vec<(IpNet, usize)> = policies
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.clients.iter().map(move |net| (*net, i)))
            .collect();
        by_client.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        let catch_all = match policies.as_slice() {
            [only] if only.clients.is_empty() => Some(0),
            _ => None,
        };
        Self {
            policies,
            by_client,
            catch_all,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::PolicySet;
    use crate::diagnostics::Diagnostics;
    use crate::policy::compile_source;

    #[test]
    fn client_index_prefers_longest_prefix() {
        let mut d = Diagnostics::default();
        let a = compile_source(
            Path::new("a.yaml"),
            "agent_name: a\nclients: [10.0.0.0/8]\n",
            &mut d,
        )
        .unwrap();
        let b = compile_source(
            Path::new("b.yaml"),
            "agent_name: b\nclients: [10.1.0.0/16]\n",
            &mut d,
        )
        .unwrap();
        let set = PolicySet::index(vec![Arc::new(a), Arc::new(b)]);
        assert_eq!(
            &*set.for_client("10.1.2.3".parse().unwrap()).unwrap().agent,
            "b"
        );
        assert_eq!(
            &*set.for_client("10.2.2.3".parse().unwrap()).unwrap().agent,
            "a"
        );
        assert!(set.for_client("192.168.1.1".parse().unwrap()).is_none());
    }
}
