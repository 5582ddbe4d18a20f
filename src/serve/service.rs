//! The service's parts, built once at startup and shared by whoever needs
//! them: the query path (all of them), a reload (the state, the audit log),
//! the control socket (the state), the fence's reports of blocked
//! connections (the state, the fence, attribution, audit and alerts).

use std::sync::Arc;

use crate::fence::{Fence, Firewall};
use crate::observe::alert::Alerts;
use crate::observe::attribution::Attributor;
use crate::observe::audit::AuditLog;
use crate::serve::exfil::Budgets;
use crate::serve::resolve::Resolver;
use crate::state::{Loaded, PerAgent, State};

pub struct Service {
    /// The policy in force, and every change to it.
    pub state: Arc<State>,
    pub resolver: Arc<Resolver>,
    /// Exfiltration budgets under wildcard rules, per agent.
    pub exfil: Arc<Budgets>,
    pub audit: AuditLog,
    pub alerts: Alerts,
    /// nftables feeding, when any policy asks for it.
    pub firewall: Option<Arc<Firewall>>,
    /// Finds the process behind a lookup or connection; `None`: attribution is off.
    pub attribution: Option<Arc<Attributor>>,
}

impl Service {
    pub fn new(
        loaded: Loaded,
        resolver: Resolver,
        audit: AuditLog,
        alerts: Alerts,
        firewall: Option<Firewall>,
        attribution: Option<Attributor>,
    ) -> Self {
        let resolver = Arc::new(resolver);
        let exfil = Arc::new(Budgets::default());
        let firewall = firewall.map(Arc::new);
        // What keeps something per agent hears of every reload from the state.
        let per_agent: Vec<Arc<dyn PerAgent>> = vec![resolver.clone(), exfil.clone()];
        let state = State::new(
            loaded,
            audit.clone(),
            firewall.clone().map(|f| f as Arc<dyn Fence>),
            per_agent,
        );
        Service {
            state: Arc::new(state),
            resolver,
            exfil,
            audit,
            alerts,
            firewall,
            attribution: attribution.map(Arc::new),
        }
    }
}
