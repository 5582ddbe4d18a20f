//! Reading policy files and directories into a [`PolicySet`], with the
//! checks that only show across files (a repeated agent or client range).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;

use super::compile::compile_source;
use super::model::Policy;
use super::set::PolicySet;
use crate::diagnostics::{Diagnostics, locate};

/// Expands files and directories (their `*.yaml`/`*.yml`, sorted) into files.
pub fn expand_paths(paths: &[PathBuf], diags: &mut Diagnostics) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.extension()
                                .is_some_and(|ext| ext == "yaml" || ext == "yml")
                        })
                        .collect();
                    found.sort();
                    if found.is_empty() {
                        diags.error(path, None, None, "directory holds no *.yaml policy files");
                    }
                    files.extend(found);
                }
                Err(e) => diags.error(path, None, None, format!("cannot read directory: {e}")),
            }
        } else {
            files.push(path.clone());
        }
    }
    files
}

/// Loads and validates every policy file; `None` when any error was found.
pub fn load(paths: &[PathBuf], diags: &mut Diagnostics) -> Option<PolicySet> {
    let files = expand_paths(paths, diags);
    if files.is_empty() && !diags.has_errors() {
        diags.error(Path::new("<policies>"), None, None, "no policy files given");
    }
    let (mut policies, mut sources) = (Vec::new(), Vec::new());
    for file in &files {
        if let Some(source) = crate::input::read_yaml(file, "cannot read policy", diags)
            && let Some(policy) = compile_source(file, &source, diags)
        {
            policies.push(policy);
            sources.push(source);
        }
    }
    check_across_files(&policies, &sources, diags);
    if diags.has_errors() {
        return None;
    }
    Some(PolicySet::index(
        policies.into_iter().map(Arc::new).collect(),
    ))
}

/// Errors that only show when several policies are loaded together.
fn check_across_files(policies: &[Policy], sources: &[String], diags: &mut Diagnostics) {
    let mut agents: HashMap<&str, &Path> = HashMap::new();
    let mut nets: HashMap<IpNet, &Path> = HashMap::new();
    let mut ids: HashMap<_, &str> = HashMap::new();
    for (p, source) in policies.iter().zip(sources) {
        let clients_line = locate(source, "clients", 0);
        if let Some(first) = agents.insert(&p.agent, &p.source) {
            diags.error(
                &p.source,
                locate(source, "agent_name", 0),
                Some("agent_name".into()),
                format!("agent '{}' is also defined in {}", p.agent, first.display()),
            );
        }
        // The id keys the agent's cache, merged questions and upstream
        // share: two agents must never share one, however unlikely a collision.
        if let Some(other) = ids.insert(p.id, &p.agent)
            && *other != *p.agent
        {
            diags.error(
                &p.source,
                locate(source, "agent_name", 0),
                Some("agent_name".into()),
                format!(
                    "agent '{}' hashes to the same id as '{other}'; rename one",
                    p.agent
                ),
            );
        }
        if p.clients.is_empty() && policies.len() > 1 {
            diags.error(
                &p.source,
                clients_line.or_else(|| locate(source, "agent_name", 0)),
                Some("clients".into()),
                "required when more than one policy is loaded (which clients does this govern?)",
            );
        }
        for net in &p.clients {
            if let Some(first) = nets.insert(*net, &p.source) {
                diags.error(
                    &p.source,
                    locate(source, &net.to_string(), 0)
                        .or_else(|| locate(source, &net.addr().to_string(), 0))
                        .or(clients_line),
                    Some("clients".into()),
                    format!("{net} is also governed by {}", first.display()),
                );
            }
        }
    }
}
