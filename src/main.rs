//! `nixswarm`: a peer-to-peer distribution network for the Nix binary cache.
//! This file only parses the command line, sets up logging and dispatches.

mod cli;
mod config;
mod recent;
mod size;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

/// The version and the git revision built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("NIXSWARM_GIT_REV"), ")");

/// nixswarm: a Nix substituter on localhost that serves from a local store,
/// peers and upstream caches, verifying everything.
#[derive(Debug, Parser)]
#[command(version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the peer-to-peer node and the gateway.
    Run(cli::run::RunArgs),
    /// Load a binary cache into the node's store (it is announced by `run`).
    Import(cli::import::ImportArgs),
    /// Show the running node's peers, store and traffic.
    Status(cli::status::StatusArgs),
    /// Keep store paths and their closures in the running node's cache
    /// regardless of eviction (fetching what it lacks).
    Pin(cli::pin::PinArgs),
    /// Let pinned paths be evicted again.
    Unpin(cli::pin::PinArgs),
    /// Rebuild a binary cache from the swarm (the running node's store and
    /// its peers, never an upstream).
    Export(cli::export::ExportArgs),
    /// Check the configuration (file, environment and flags) and print it.
    CheckConfig(config::ConfigArgs),
}

fn main() -> ExitCode {
    let mut cmd = Cli::command();
    for sub in ["run", "check-config", "import"] {
        cmd = cmd.mut_subcommand(sub, config::help::with_defaults);
    }
    let cli = Cli::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit());
    if !matches!(cli.command, Command::Run(_)) {
        // A command whose output goes to `head` ends quietly when the pipe
        // closes (Rust ignores SIGPIPE and println! would panic). Not for
        // `run`: a server must outlive its clients' closed sockets.
        // SAFETY: resetting a signal's disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour only on a terminal: not into files or the journal.
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            // The latest warnings and errors, for the dashboard.
            .with(recent::Recent)
            .init();
    }
    let result = match cli.command {
        Command::Run(args) => cli::run::run(args),
        Command::Import(args) => cli::import::run(&args),
        Command::Status(args) => cli::status::run(&args),
        Command::Pin(args) => cli::pin::run(&args, true),
        Command::Unpin(args) => cli::pin::run(&args, false),
        Command::Export(args) => cli::export::run(&args),
        Command::CheckConfig(args) => cli::check_config::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The message and its causes on one line; never a backtrace
            // (RUST_BACKTRACE is for panics, and a user error is none).
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
