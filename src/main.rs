//! `nixswarm`: a peer-to-peer distribution network for the Nix binary cache.
//! This file only parses the command line, sets up logging and dispatches.

mod cli;
mod config;
mod size;

use clap::{Parser, Subcommand};

/// nixswarm: a Nix substituter on localhost that serves from a local store,
/// peers and upstream caches, verifying everything.
#[derive(Debug, Parser)]
#[command(version, about)]
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
    /// Check the configuration (file, environment and flags) and print it.
    CheckConfig(config::ConfigArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run(args) => cli::run::run(args),
        Command::Import(args) => cli::import::run(&args),
        Command::Status(args) => cli::status::run(&args),
        Command::Pin(args) => cli::pin::run(&args, true),
        Command::Unpin(args) => cli::pin::run(&args, false),
        Command::CheckConfig(args) => cli::check_config::run(&args),
    }
}
