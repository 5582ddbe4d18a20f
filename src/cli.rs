//! The command line. Flags given here override the config file.

use std::path::PathBuf;

use crate::config::Sources;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "allowdns",
    version,
    about = "Allowlist-only DNS resolver for fencing AI agents in"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the resolver.
    // clap's own usage line would list the flags given as if required.
    #[command(override_usage = "allowdns serve [OPTIONS]")]
    Serve(ServeArgs),
    /// Load config, policies and zones exactly as `serve` would, report every
    /// problem with file:line, and exit (non-zero on errors).
    #[command(override_usage = "allowdns check [OPTIONS]")]
    Check(Sources),
    /// Print the default-deny nftables ruleset for an agent's namespace.
    #[command(override_usage = "allowdns nft-ruleset [OPTIONS]")]
    NftRuleset(RulesetArgs),
    /// Check an agent's namespace from the inside: the ruleset is loaded, a
    /// canary connection to an address never handed out fails, DNS reaches
    /// only allowdns. Prints what it checked; exits 3 if the fence does not hold.
    Selftest(SelftestArgs),
    /// Allow a name for one agent for a limited time, with a reason (audited).
    Grant(GrantArgs),
    /// End a grant before its time.
    Revoke(GrantTarget),
    /// List the policies in force, active grants and their expiry.
    Status(StatusArgs),
    /// Suggest a policy from an audit log: every name the agent looked up,
    /// siblings grouped into wildcards, for a human to review.
    Suggest(crate::tools::suggest::SuggestArgs),
    /// Write one self-contained HTML page from an audit log: lookups over
    /// time, top names and rules, denied names by domain, blocked
    /// connections, grants and reloads, and (for a learn-mode log) the
    /// policy `suggest` would write beside its evidence.
    Report(crate::tools::report::ReportArgs),
    /// Run a command fenced in a kennel: its own network namespace whose only
    /// way out is the firewall this allowdns feeds, and whose only DNS is it.
    Run(crate::kennel::RunArgs),
    /// Print shell completions (bash, zsh, fish) to stdout.
    Completions(CompletionsArgs),
    /// Internal: one stage of `run` (re-executed, never called by hand).
    #[command(name = "__kennel", hide = true)]
    Kennel(crate::kennel::StageArgs),
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub sources: Sources,
    /// Reload when a policy, zone or config file changes (inotify; handles
    /// kubelet's ConfigMap `..data` swap). Default: on when a policy path is
    /// a directory. `--watch=false` turns it off.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub watch: Option<bool>,
}

#[derive(Debug, Args, Clone)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args, Clone)]
pub struct ControlArgs {
    /// The running allowdns's control socket (`control_socket` in its config).
    #[arg(long, default_value = crate::ops::control::DEFAULT_SOCKET)]
    pub control: PathBuf,
}

/// An exception: the agent, the name, and the allowdns that holds it.
#[derive(Debug, Args, Clone)]
pub struct GrantTarget {
    #[command(flatten)]
    pub control: ControlArgs,
    /// The agent (policy) the exception is for.
    #[arg(long)]
    pub agent: String,
    /// Name or pattern, as in a policy (`api.example.com`, `*.example.com`).
    #[arg(long)]
    pub name: String,
}

#[derive(Debug, Args, Clone)]
pub struct GrantArgs {
    #[command(flatten)]
    pub target: GrantTarget,
    /// How long, e.g. `30m`, `2h` (at most 7 days).
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Why; required, and written to the audit log.
    #[arg(long)]
    pub reason: String,
}

#[derive(Debug, Args, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Print the raw JSON reply.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct SelftestArgs {
    /// The agent's network namespace: a name under /run/netns, or a path.
    #[arg(long)]
    pub netns: String,
    /// allowdns's address as the agent sees it; repeatable. Without it, DNS
    /// to allowdns is not checked.
    #[arg(long)]
    pub dns: Vec<std::net::IpAddr>,
    /// The fence's table (`firewall.table` in the policy).
    #[arg(long, default_value = "allowdns")]
    pub table: String,
    /// The table's family (`firewall.family` in the policy).
    #[arg(long, default_value = "inet", value_parser = ["inet", "ip", "ip6"])]
    pub family: String,
}

#[derive(Debug, Args, Clone)]
pub struct RulesetArgs {
    #[command(flatten)]
    pub sources: Sources,
    /// The agent (policy) to print for; needed when several are loaded.
    #[arg(long)]
    pub agent: Option<String>,
    /// allowdns's address as the agent sees it (DNS is allowed only there); repeatable.
    /// Default: the listen addresses.
    #[arg(long)]
    pub dns: Vec<std::net::IpAddr>,
    /// Sidecar: allowdns runs in the agent's namespace as this uid; only its
    /// sockets may reach the upstream forwarders.
    #[arg(long)]
    pub sidecar_uid: Option<u32>,
    /// Sidecar: a TCP port open inbound (metrics, probes); repeatable.
    #[arg(long, requires = "sidecar_uid")]
    pub open_tcp: Vec<u16>,
    /// Load the ruleset with `nft -f -` in this namespace instead of printing it.
    #[arg(long)]
    pub load: bool,
}

/// Completions for `shell` on `out`. clap_complete offers hidden subcommands
/// too, so the internal stages are left out of the model it is given.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    let full = Cli::command();
    let mut visible = clap::Command::new("allowdns")
        .about(full.get_about().cloned().unwrap_or_default())
        .version(env!("CARGO_PKG_VERSION"));
    for sub in full.get_subcommands().filter(|s| !s.is_hide_set()) {
        visible = visible.subcommand(sub.clone());
    }
    clap_complete::generate(shell, &mut visible, "allowdns", out);
}
