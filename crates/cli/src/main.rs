//! `paychan`: the one binary (DESIGN §4). A thin `main`: parse arguments, run, map the outcome
//! to an exit code.

mod cmd;
mod error;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::CliError;

/// Trust-less, high-volume Bitcoin micropayments over payment channels.
#[derive(Debug, Parser)]
#[command(name = "paychan", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode and verify channel transactions.
    #[command(subcommand)]
    Tx(cmd::tx::TxCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tx(c) => cmd::tx::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
