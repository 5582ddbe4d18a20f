use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use allowdns::cli::{Cli, Command, Sources};
use allowdns::error::{Failure, RuntimeError};
use allowdns::ops::startup;
use allowdns::ops::{control, shutdown};

// The hot path allocates small buffers on worker threads that the audit
// writer frees; mimalloc handles that cross-thread pattern far better than glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The kennel must start single-threaded (setns into a user namespace), so
    // it runs before the runtime exists; it logs warnings only, CMD owns the terminal.
    match cli.command {
        Command::Run(args) => {
            init_logging("warn");
            return allowdns::kennel::run(args).unwrap_or_else(report);
        }
        Command::Kennel(args) => return allowdns::kennel::stage(args),
        Command::Completions(args) => {
            allowdns::cli::write_completions(args.shell, &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        _ => init_logging("info"),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return report(RuntimeError::Runtime(e).into()),
    };
    let result = match cli.command {
        Command::Check(sources) => check(&sources),
        Command::Serve(sources) => runtime.block_on(serve(sources)),
        Command::NftRuleset(args) => {
            startup::ruleset(&args.sources, args.agent.as_deref(), &args.dns)
                .map(|text| print!("{text}"))
        }
        Command::Grant(args) => {
            let request = control::Request::Grant {
                agent: args.agent,
                name: args.name,
                for_secs: args.duration.as_secs(),
                reason: args.reason,
            };
            runtime
                .block_on(ask(&args.control.control, &request))
                .map(|reply| {
                    if let Some(g) = reply.granted {
                        println!(
                            "granted: agent '{}' may resolve {} until {} ({})",
                            g.agent, g.pattern, g.expires, g.reason
                        );
                    }
                })
        }
        Command::Revoke(args) => {
            let request = control::Request::Revoke {
                agent: args.agent,
                name: args.name,
            };
            runtime
                .block_on(ask(&args.control.control, &request))
                .map(|reply| {
                    if let Some(g) = reply.granted {
                        println!(
                            "revoked: agent '{}' no longer resolves {}",
                            g.agent, g.pattern
                        );
                    }
                })
        }
        Command::Status(args) => runtime
            .block_on(ask(&args.control.control, &control::Request::Status))
            .map(|reply| match (args.json, reply.status) {
                (true, status) => println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                ),
                (false, Some(status)) => print!("{}", control::render(&status)),
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
        println!(
            "ok: {}: agent '{}', {} name rule(s), {} address rule(s)",
            p.source.display(),
            p.agent,
            p.rules.len(),
            p.addresses.len()
        );
    }
    println!("ok: {} zone(s)", prepared.loaded.zones.len());
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

async fn serve(sources: Sources) -> Result<(), Failure> {
    let prepared = startup::prepare(&sources)?;
    let token = CancellationToken::new();
    shutdown::on_signals(token.clone()).map_err(RuntimeError::Signals)?;
    startup::serve(sources, prepared, token).await
}

/// Errors become text here; [`Failure::exit_code`] picks the status.
fn report(failure: Failure) -> ExitCode {
    let code = failure.exit_code();
    match failure {
        Failure::Invalid(diags) => {
            for d in &diags.items {
                eprintln!("{d}");
            }
            eprintln!(
                "allowdns: {} error(s); nothing was started",
                diags.errors().count()
            );
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
