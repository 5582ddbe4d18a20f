use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use allowdns::cli::{Cli, Command, RulesetArgs, ServeArgs};
use allowdns::config::Sources;
use allowdns::error::{Failure, RuntimeError};
use allowdns::fence::sidecar::Sidecar;
use allowdns::ops::startup;
use allowdns::ops::{control, shutdown};
use allowdns::serve::server::Passed;

// The hot path allocates small buffers on worker threads that the audit
// writer frees; mimalloc handles that cross-thread pattern far better than glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `print!` that ends quietly on a closed pipe (`allowdns nft-ruleset | head -1`).
macro_rules! out {
    ($($arg:tt)*) => { write_out(format!($($arg)*).as_bytes()) };
}

/// `println!` that ends quietly on a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => { write_out(format!("{}\n", format_args!($($arg)*)).as_bytes()) };
}

/// Writes to stdout. A reader that stopped reading is a normal end, as in
/// ripgrep: exit 0, no message; any other write error exits 1.
fn write_out(bytes: &[u8]) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("allowdns: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // What bad input means for the command at hand, after the error count.
    let outcome = match &cli.command {
        Command::Check(_) => " found",
        Command::Serve(_) => "; nothing was started",
        Command::Run(_) => "; CMD was not started",
        Command::Suggest(_) => "; no policy was written",
        Command::Report(_) => "; no report was written",
        _ => "",
    };
    let report = |failure: Failure| report(failure, outcome);
    // The kennel must start single-threaded (setns into a user namespace), so
    // it runs before the runtime exists; it logs warnings only, CMD owns the terminal.
    match cli.command {
        Command::Run(args) => {
            let misuse = if !args.listen.is_empty() {
                Some(format!(
                    "--listen does not apply to run: allowdns answers on {} inside the kennel",
                    allowdns::kennel::DNS
                ))
            } else if args.policy.is_none() && args.config.is_none() && !args.learn {
                Some("run needs --policy FILE, or --learn to start from an empty policy".into())
            } else {
                None
            };
            if let Some(message) = misuse {
                use clap::CommandFactory;
                let mut cmd = Cli::command();
                let run = cmd.find_subcommand_mut("run").expect("run exists");
                run.error(clap::error::ErrorKind::ArgumentConflict, message)
                    .exit();
            }
            init_logging("warn");
            return allowdns::kennel::run(args).unwrap_or_else(report);
        }
        Command::Kennel(args) => return allowdns::kennel::stage(args),
        Command::Completions(args) => {
            let mut script = Vec::new();
            allowdns::cli::write_completions(args.shell, &mut script);
            write_out(&script);
            return ExitCode::SUCCESS;
        }
        _ => init_logging("info"),
    }
    allowdns::ops::privileges::raise_permitted();
    // Socket activation: taken while this is the only thread, since taking
    // the sockets unsets LISTEN_FDS and LISTEN_PID.
    let passed = match &cli.command {
        Command::Serve(_) => Passed::from_env(),
        _ => Passed::none(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return report(RuntimeError::Runtime(e).into()),
    };
    let result = match cli.command {
        Command::Check(sources) => check(&sources),
        Command::Serve(args) => runtime.block_on(serve(args, passed)),
        Command::Selftest(args) => selftest(&args),
        Command::NftRuleset(args) => nft_ruleset(&args),
        Command::Grant(args) => {
            let request = control::Request::Grant {
                agent: args.target.agent,
                name: args.target.name,
                for_secs: args.duration.as_secs(),
                reason: args.reason,
            };
            change(&runtime, &args.target.control.control, &request, |g| {
                outln!(
                    "granted: agent '{}' may resolve {} until {} ({})",
                    g.agent,
                    g.pattern,
                    g.expires,
                    g.reason
                )
            })
        }
        Command::Revoke(args) => {
            let request = control::Request::Revoke {
                agent: args.agent,
                name: args.name,
            };
            change(&runtime, &args.control.control, &request, |g| {
                outln!(
                    "revoked: agent '{}' no longer resolves {}",
                    g.agent,
                    g.pattern
                )
            })
        }
        Command::Status(args) => runtime
            .block_on(ask(&args.control.control, &control::Request::Status))
            .map(|reply| match (args.json, reply.status) {
                (true, status) => outln!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                ),
                (false, Some(status)) => out!("{}", control::render(&status)),
                (false, None) => {}
            }),
        Command::Run(_) | Command::Kennel(_) | Command::Completions(_) => {
            unreachable!("dispatched above")
        }
        Command::Suggest(args) => allowdns::tools::suggest::run(&args).map(|warnings| {
            for warning in warnings.warnings() {
                eprintln!("{warning}");
            }
        }),
        Command::Report(args) => allowdns::tools::report::run(&args).map(|warnings| {
            for warning in warnings.warnings() {
                eprintln!("{warning}");
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(failure),
    }
}

fn check(sources: &Sources) -> Result<(), Failure> {
    let prepared = startup::prepare(sources)?;
    for warning in prepared.diagnostics.warnings() {
        eprintln!("{warning}");
    }
    for p in &prepared.loaded.policies.policies {
        outln!(
            "ok: {}: agent '{}', {} name rule(s), {} address rule(s)",
            p.source.display(),
            p.agent,
            p.rules.len(),
            p.addresses.len()
        );
    }
    outln!("ok: {} zone(s)", prepared.loaded.zones.len());
    Ok(())
}

fn nft_ruleset(args: &RulesetArgs) -> Result<(), Failure> {
    let sidecar = args.sidecar_uid.map(|uid| Sidecar {
        uid,
        open_tcp: args.open_tcp.clone(),
    });
    let text = startup::ruleset_with(
        &args.sources,
        args.agent.as_deref(),
        &args.dns,
        sidecar.as_ref(),
    )?;
    if args.load {
        allowdns::fence::sidecar::load(&text).map_err(RuntimeError::subsystem)?;
        eprintln!("allowdns: ruleset loaded");
    } else {
        out!("{text}");
    }
    Ok(())
}

/// A grant or revoke; `said` prints the grant the reply names.
fn change(
    runtime: &tokio::runtime::Runtime,
    socket: &std::path::Path,
    request: &control::Request,
    said: impl FnOnce(&control::GrantTerms),
) -> Result<(), Failure> {
    let reply = runtime.block_on(ask(socket, request))?;
    if let Some(g) = &reply.granted {
        said(&g.terms);
    }
    Ok(())
}

/// One control request; a refusal by the server is a runtime failure.
async fn ask(
    path: &std::path::Path,
    request: &control::Request,
) -> Result<control::Reply, Failure> {
    Ok(control::ask(path, request)
        .await
        .map_err(RuntimeError::subsystem)?)
}

async fn serve(args: ServeArgs, passed: Passed) -> Result<(), Failure> {
    let ServeArgs { sources, watch } = args;
    let mut prepared = startup::prepare(&sources)?;
    prepared.watch = allowdns::ops::watch::wanted(watch, &prepared.settings);
    let token = CancellationToken::new();
    shutdown::on_signals(token.clone()).map_err(RuntimeError::Signals)?;
    startup::serve(sources, prepared, token, passed).await
}

/// Errors become text here; [`Failure::exit_code`] picks the status.
/// `allowdns selftest`: the fence of a namespace set up by hand, checked from inside.
fn selftest(args: &allowdns::cli::SelftestArgs) -> Result<(), Failure> {
    use allowdns::fence::selftest;
    use allowdns::policy::firewall::Family;
    let netns = if args.netns.starts_with('/') {
        std::path::PathBuf::from(&args.netns)
    } else {
        std::path::Path::new("/run/netns").join(&args.netns)
    };
    let family = match args.family.as_str() {
        "ip" => Family::Ip,
        "ip6" => Family::Ip6,
        _ => Family::Inet,
    };
    let report = selftest::run(&selftest::Fence {
        netns,
        family,
        table: args.table.clone(),
        dns: args.dns.clone(),
    });
    outln!("{report}");
    if report.passed() {
        Ok(())
    } else {
        Err(
            RuntimeError::subsystem(format!("the fence does not hold: {}", report.failures()))
                .into(),
        )
    }
}

fn report(failure: Failure, outcome: &str) -> ExitCode {
    let code = failure.exit_code();
    match failure {
        Failure::Invalid(diags) => {
            for d in &diags.items {
                eprintln!("{d}");
            }
            eprintln!("allowdns: {} error(s){outcome}", diags.errors().count());
        }
        Failure::Runtime(e) => eprintln!("allowdns: error: {e}"),
    }
    ExitCode::from(code)
}

fn init_logging(level: &str) {
    // hickory logs two info lines per request; they cost throughput and the
    // audit log already has each query.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},hickory_server=warn,hickory_resolver=warn,hickory_net=warn"
        ))
    });
    // A closed stderr (the journal or a parent gone) must not panic the
    // thread that logs: the fmt layer would report its write error with
    // `eprintln!`, which panics, and a signal task that panics never shuts down.
    tracing_subscriber::fmt()
        .log_internal_errors(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
