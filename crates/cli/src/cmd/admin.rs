//! `paychan admin …`: the running merchant's admin API from the command line (the merchant's
//! home names its address, `serve.json`, and its token, `admin.token`).

use std::process::ExitCode;

use clap::Subcommand;
use paychan_core::bitcoin::Amount;
use serde_json::{json, Value};

use super::common::{parse_amount, runtime, Common};
use crate::error::fail;
use crate::CliError;

/// `paychan admin …`
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The admin token (default: the home's `admin.token`, as `paychan serve` made it).
    #[arg(long, env = "PAYCHAN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

/// What `paychan admin` does.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// The paywall's prices: list them, set a route's price, remove a route.
    #[command(subcommand)]
    Prices(PricesCommand),
}

/// `paychan admin prices …`
#[derive(Debug, Subcommand)]
pub enum PricesCommand {
    /// The prices in force: the default, the routes (first match wins), the free paths.
    List,
    /// Sets the price of PATTERN (`/exact`, `/prefix/*`, `*`); in force at the next request,
    /// kept across restarts.
    Set {
        /// The route pattern.
        pattern: String,
        /// Its price (`25sat`, `0.0001btc`).
        #[arg(value_parser = parse_amount)]
        price: Amount,
    },
    /// Removes the route PATTERN (its paths fall back to the default price).
    Remove {
        /// The route pattern.
        pattern: String,
    },
}

/// Runs a `paychan admin` command.
pub fn run(a: AdminArgs, common: &Common) -> Result<ExitCode, CliError> {
    let home = common.home();
    let base = super::serve::running_url(&home).ok_or_else(|| {
        fail(format!("no merchant is running for {} (start `paychan serve`)", home.display()))
    })?;
    let token = match a.admin_token {
        Some(t) => t,
        None => std::fs::read_to_string(home.join("admin.token")).map_err(|e| {
            fail(format!("{}: {e} (or give --admin-token)", home.join("admin.token").display()))
        })?,
    };
    let http = paychan_transport::tls::http_client_builder(None)?
        .build()
        .map_err(|e| fail(format!("HTTP client: {e}")))?;
    let AdminCommand::Prices(p) = a.command;
    let request = match &p {
        PricesCommand::List => http.get(format!("{base}/admin/prices")),
        PricesCommand::Set { pattern, price } => http
            .post(format!("{base}/admin/prices/routes"))
            .json(&json!({"pattern": pattern, "price_sat": price.to_sat()})),
        PricesCommand::Remove { pattern } => http
            .delete(format!("{base}/admin/prices/routes"))
            .query(&[("pattern", pattern.as_str())]),
    };
    let table: Value = runtime()?.block_on(async {
        let r = request
            .bearer_auth(token.trim())
            .send()
            .await
            .map_err(|e| fail(format!("{base}: {e}")))?;
        let status = r.status();
        let body: Value = r.json().await.map_err(|e| fail(format!("{base}: {e}")))?;
        if !status.is_success() {
            let why = body["message"].as_str().unwrap_or("refused");
            return Err(fail(format!("the merchant answered HTTP {status}: {why}")));
        }
        Ok(body)
    })?;
    let mut lines = Vec::new();
    match table["default_sat"].as_u64() {
        Some(d) => lines.push(format!("default      {d} sat")),
        None => lines.push("default      free".to_string()),
    }
    for r in table["routes"].as_array().into_iter().flatten() {
        lines.push(format!("{:<12} {} sat", r["pattern"].as_str().unwrap_or("?"), r["price_sat"]));
    }
    for f in table["free"].as_array().into_iter().flatten() {
        lines.push(format!("{:<12} free", f.as_str().unwrap_or("?")));
    }
    common.print(&table, &lines.join("\n"))?;
    Ok(ExitCode::SUCCESS)
}
