//! The `spiffe-mcp-gateway` command: `serve` runs the gateway, `check`
//! validates a config and its policies without serving; `policy test`,
//! `explain` and `policy matrix` are the policy tooling of [`cli`];
//! `audit verify` checks an audit log's chain and signed checkpoints.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spiffe_mcp_gateway::app;
use spiffe_mcp_gateway::cli::{self, CliError, Outcome};
use spiffe_mcp_gateway::config::{Config, LogFormat, ProcessEnv, UserKeys};
use spiffe_mcp_gateway::pins::PinSet;
use spiffe_mcp_gateway::policy::PolicyEngine;
use spiffe_mcp_gateway::proxy::session::keys::SessionKeys;
use spiffe_mcp_gateway::user_auth::UserAuth;

#[derive(Parser)]
#[command(version, about = "A SPIFFE-native, zero-trust gateway for MCP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate the config file and the policies it names, then exit.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Decide one request with the policies and say why (exits 0 whatever
    /// the decision).
    Explain(Box<cli::explain::ExplainArgs>),
    /// Test policies, or review who may call what.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Tool-definition pins: record an upstream's tools, prompts and
    /// resource templates, or show what changed since (docs/pinning.md).
    Pin {
        #[command(subcommand)]
        command: PinCommand,
    },
    /// Work with audit logs.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum PinCommand {
    /// Read each upstream's lists with the gateway's SVID and write
    /// <policy.pins_dir>/<upstream>.pins.json.
    Record(cli::pin::PinArgs),
    /// Show what each upstream lists now that its pin file does not say
    /// (exit 1 if anything changed).
    Diff(cli::pin::PinArgs),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain and signed checkpoints of audit files (exit 0
    /// verified, 1 tampered, 2 unreadable input, 3 intact but partly
    /// unproven).
    Verify(cli::audit_verify::VerifyArgs),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run the *.test.yaml cases of a policy directory (exit 1 if any fails).
    Test(cli::policy_test::TestArgs),
    /// Print who may call which tool, prompt or resource of an inventory;
    /// with --against OLD_DIR, only what changes.
    Matrix(cli::matrix::MatrixArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => check(&config),
        // `serve` logs as its config says, once the config is read.
        Command::Serve { config } => serve(&config),
        // The policy tools print their results; logs only for what goes wrong.
        Command::Explain(args) => {
            init_logging(LogFormat::Text, "warn");
            return report(cli::explain::run(&args));
        }
        Command::Policy { command } => {
            init_logging(LogFormat::Text, "warn");
            return report(match command {
                PolicyCommand::Test(args) => cli::policy_test::run(&args),
                PolicyCommand::Matrix(args) => cli::matrix::run(&args),
            });
        }
        Command::Pin { command } => {
            init_logging(LogFormat::Text, "warn");
            return report(match command {
                PinCommand::Record(args) => cli::pin::record(&args),
                PinCommand::Diff(args) => cli::pin::diff(&args),
            });
        }
        Command::Audit {
            command: AuditCommand::Verify(args),
        } => {
            init_logging(LogFormat::Text, "warn");
            return report(cli::audit_verify::run(&args));
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a policy tool's result on stdout, or its error on stderr.
fn report(result: Result<Outcome, CliError>) -> ExitCode {
    match result {
        Ok(outcome) => {
            // Not print!, which panics when stdout is closed early (`| head`).
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(outcome.text.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => ExitCode::from(outcome.exit_code),
                Err(_) => ExitCode::FAILURE,
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(cli::EXIT_BAD_INPUT)
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    // Loading the config logs nothing; the policies log as it says.
    let config =
        Config::load(path, &ProcessEnv).inspect_err(|_| init_logging(LogFormat::Text, "info"))?;
    init_logging(config.log.format, &config.log.level);
    let policy = PolicyEngine::load_dir(&config.policy_dir)
        .map_err(|e| anyhow::anyhow!("policies in {}: {e}", config.policy_dir.display()))?;
    if let Some(dir) = &config.policy.shadow_dir {
        let shadow = PolicyEngine::load_dir(dir)
            .map_err(|e| anyhow::anyhow!("shadow policies in {}: {e}", dir.display()))?;
        println!(
            "ok: {} shadow policies (version {})",
            shadow.policy_count(),
            shadow.version()
        );
    }
    if let Some(dir) = &config.policy.pins_dir {
        let pins = PinSet::load_dir(dir, &config.policy.pin_upstreams)
            .map_err(|e| anyhow::anyhow!("pins: {e}"))?;
        println!("ok: {} pinned definitions in {}", pins.len(), dir.display());
    }
    // A key file that `serve` would refuse is refused here too.
    if let Some(file) = &config.sessions.keys_file {
        let keys = SessionKeys::load(Some(file))?;
        let ids = keys.current().ids().join(", ");
        println!("ok: session keys {ids} in {}", file.display());
    }
    // A JWKS file is read now; JWT-SVID bundles only exist at run time.
    if let Some(auth) = &config.user_auth
        && matches!(auth.keys, UserKeys::JwksFile(_))
    {
        UserAuth::load(auth, &config.workload_api.endpoint)?;
    }
    println!(
        "ok: config {} and {} policies (version {}) are valid",
        path.display(),
        policy.policy_count(),
        policy.version()
    );
    Ok(())
}

/// Logs go to stderr (the audit stream is separate: stdout or its file).
/// `RUST_LOG`, when set, overrides `level`. Text is coloured only on a
/// terminal, and never with `NO_COLOR` set: a file, a pipe or a log
/// collector gets plain text.
fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path, &ProcessEnv)?;
    init_logging(config.log.format, &config.log.level);
    match spiffe_mcp_gateway::proxy::raise_open_files_limit() {
        Ok(Some((before, after))) => {
            tracing::info!(
                before,
                after,
                "raised the soft limit on open files to the hard limit"
            );
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the soft limit on open files"),
    }
    let drain = config.drain_timeout;
    let runtime = runtime()?;
    runtime.block_on(async {
        let app = app::build(config).await?;
        wait_for_signal().await;
        tracing::info!("shutting down");
        app.shutdown(drain).await;
        Ok(())
    })
}

/// The runtime for the CPUs the gateway may use (its affinity mask and
/// cgroup quota): on one CPU a current-thread runtime, which runs every
/// task on the thread that polls the sockets (no queue shared between
/// threads, no wake-ups across them); on more, tokio's multi-thread runtime
/// with a worker per CPU.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut builder = match cpus {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
