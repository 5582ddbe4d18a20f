//! The command line of `allowdns run` and of its internal stages.

use std::path::PathBuf;

use clap::Args;

use crate::config::Sources;

/// `run`'s own flags: one agent, answered only inside the kennel, so no
/// `--listen` and one `--policy`.
#[derive(Debug, Args, Clone)]
#[command(
    override_usage = "allowdns run [OPTIONS] --policy FILE -- CMD [ARGS]...\n       \
                      allowdns run --learn [--agent NAME] [OPTIONS] -- CMD [ARGS]..."
)]
pub struct RunArgs {
    /// YAML config file (see docs/manual.md); its `listen` does not apply,
    /// and its `policies` must name one policy.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The agent's policy file (one). With --learn (and no --config) it may
    /// be left out: CMD then starts from an empty policy.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// With --learn and no --policy: the agent's name (default: CMD's file name).
    #[arg(
        long,
        value_name = "NAME",
        requires = "learn",
        conflicts_with = "policy"
    )]
    pub agent: Option<String>,
    /// Forwarder, `IP:PORT` or `IP`; repeatable. Default: /etc/resolv.conf.
    /// `none`: answer only from local zones.
    #[arg(long, value_name = "ADDR")]
    pub upstream: Vec<String>,
    /// Resolve recursively from this root hints file instead of forwarding.
    #[arg(long, value_name = "FILE", conflicts_with = "upstream")]
    pub root_hints: Option<PathBuf>,
    /// Directory of RFC 1035 zone files (*.zone) answered locally.
    #[arg(long, value_name = "DIR")]
    pub zones: Option<PathBuf>,
    /// Audit log of CMD's lookups (JSON Lines); `-` is stdout, which CMD
    /// shares. Absent: not kept (with --learn, kept until the suggestion is made).
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Unix control socket for `grant`, `revoke` and `status` while CMD runs.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Learn mode: resolve (and open) names outside the policy, then print the
    /// `allowdns suggest` policy for what CMD looked up.
    #[arg(long)]
    pub learn: bool,
    /// Monitor mode: let CMD resolve and reach anything, but alert on every
    /// lookup and connection the policy does not cover.
    #[arg(long, conflicts_with = "learn")]
    pub monitor: bool,
    /// With --learn: write the suggested policy here instead of stdout.
    #[arg(long, value_name = "FILE", requires = "learn")]
    pub suggest_out: Option<PathBuf>,
    /// Write alerts here instead of stderr (which CMD shares).
    #[arg(long, value_name = "FILE")]
    pub alerts: Option<PathBuf>,
    /// Refused with a usage error: allowdns answers only inside the kennel.
    #[arg(long, hide = true, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Share a host path (file or directory) read-only at the same path
    /// inside, even under the kennel's private /tmp, /run, /var/tmp or /dev/shm; repeatable.
    #[arg(long, value_name = "PATH")]
    pub ro_bind: Vec<PathBuf>,
    /// Share a host path read-write at the same path inside; repeatable.
    #[arg(long, value_name = "PATH")]
    pub bind: Vec<PathBuf>,
    /// Pass file descriptors 3 to 3+N-1 on to CMD; every other one above 2 is closed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// The command to fence, after `--`.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl RunArgs {
    /// The flags as `serve` takes them; the listen address is the kennel's.
    pub fn sources(&self) -> Sources {
        Sources {
            config: self.config.clone(),
            listen: Vec::new(),
            upstream: self.upstream.clone(),
            root_hints: self.root_hints.clone(),
            policy: self.policy.iter().cloned().collect(),
            zones: self.zones.clone(),
            audit_log: self.audit_log.clone(),
            control: self.control.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// With --learn and no policy: the agent's name, from --agent or CMD's file name.
    pub fn learn_from_nothing(&self) -> Option<String> {
        if !self.learn || self.policy.is_some() || self.config.is_some() {
            return None;
        }
        self.agent.clone().or_else(|| {
            let program = self.command.first()?;
            let base = std::path::Path::new(program).file_name()?.to_string_lossy();
            let name: String = base
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            Some(name)
        })
    }
}

/// Arguments of the internal stages.
#[derive(Debug, Args, Clone)]
pub struct StageArgs {
    /// `holder`, `init` or `pdeathsig`.
    pub stage: String,
    /// holder: the parent's control socket.
    #[arg(long)]
    pub ctl: Option<PathBuf>,
    /// holder: the host uid and gid the kennel's root maps to.
    #[arg(long)]
    pub uid: Option<u32>,
    #[arg(long)]
    pub gid: Option<u32>,
    /// holder, pdeathsig: the parent whose death must kill this process.
    #[arg(long)]
    pub ppid: Option<i32>,
    /// holder: host paths to bind at the same path, read-only and read-write.
    #[arg(long)]
    pub ro_bind: Vec<PathBuf>,
    #[arg(long)]
    pub bind: Vec<PathBuf>,
    /// holder, init: CMD's working directory, when it is visible inside; else `/`.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// holder, init: CMD's PATH (only directories CMD can reach).
    #[arg(long)]
    pub path: Option<String>,
    /// holder, init: file descriptors above 2 passed on to CMD.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    #[arg(last = true)]
    pub command: Vec<String>,
}
