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
    #[command(flatten)]
    common: cmd::common::Common,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in one go: node, wallets, merchant, 10,000 paid requests, settlement.
    Demo(cmd::demo::DemoArgs),
    /// Run and drive the embedded regtest node.
    #[command(subcommand)]
    Node(cmd::node::NodeCommand),
    /// Decode and verify channel transactions.
    #[command(subcommand)]
    Tx(cmd::tx::TxCommand),
    /// The on-chain wallet.
    #[command(subcommand)]
    Wallet(cmd::wallet::WalletCommand),
    /// Run the merchant: the channel server.
    Serve(Box<cmd::serve::ServeArgs>),
    /// The customer's channels: open, pay, status, sync, close, list.
    #[command(subcommand)]
    Channels(cmd::channels::ChannelsCommand),
    /// Payments as files, on the merchant's side: verify, submit.
    #[command(subcommand)]
    Payment(cmd::payment::PaymentCommand),
    /// Backups: the merchant's store (export), the customer's channels (list, refund).
    #[command(subcommand)]
    Backup(cmd::backup::BackupCommand),
    /// Speed beside its physical bound, measured in one run.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Fetch a URL, paying its 402 from your channels (prints the body, like curl).
    Buy(cmd::buy::BuyArgs),
    /// A local HTTP proxy that pays 402s: `curl -x http://127.0.0.1:8402 http://merchant/…`.
    Proxy(cmd::buy::ProxyArgs),
    /// What `buy` and `proxy` paid: when, to whom, for which URL.
    Spent,
    /// Sign a payment of one x402 requirement (for an x402 SDK's paychan plugin): prints
    /// `{channel, total, signature}`.
    SignPayment(cmd::buy::SignArgs),
    /// The running merchant's admin API: prices.
    Admin(cmd::admin::AdminArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr (stdout is for results); RUST_LOG picks the level, "info" by default.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // The demo and `buy` talk to people on stderr themselves; only problems are logged.
        let quiet = matches!(cli.command, Command::Demo(_) | Command::Buy(_) | Command::Bench(_));
        tracing_subscriber::EnvFilter::new(if quiet { "warn" } else { "info" })
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
    let result = match cli.command {
        Command::Demo(a) => cmd::demo::run(a, &cli.common),
        Command::Node(c) => cmd::node::run(c, &cli.common),
        Command::Tx(c) => cmd::tx::run(c, &cli.common),
        Command::Wallet(c) => cmd::wallet::run(c, &cli.common),
        Command::Serve(a) => cmd::serve::run(*a, &cli.common),
        Command::Channels(c) => cmd::channels::run(c, &cli.common),
        Command::Payment(c) => cmd::payment::run(c, &cli.common),
        Command::Bench(c) => cmd::bench::run(c, &cli.common),
        Command::Backup(c) => cmd::backup::run(c, &cli.common),
        Command::Buy(a) => cmd::buy::buy(a, &cli.common),
        Command::Proxy(a) => cmd::buy::proxy(a, &cli.common),
        Command::Spent => cmd::buy::spent(&cli.common),
        Command::SignPayment(a) => cmd::buy::sign_payment(a, &cli.common),
        Command::Admin(c) => cmd::admin::run(c, &cli.common),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "error: {e}");
            if cli.common.json {
                // With --json, the error is also a JSON object on stdout.
                let v = serde_json::json!({
                    "error": e.to_string(),
                    "kind": e.kind(),
                    "exit_code": e.exit_code(),
                });
                let _ = writeln!(std::io::stdout().lock(), "{v}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's own checks of the whole command tree (a global flag and a subcommand's flag
    /// with the same name, for one, would panic only when that subcommand runs).
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
