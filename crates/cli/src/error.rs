//! The CLI's error type and its exit codes.

/// Errors a command reports to the user (one line on stderr).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The user's input was malformed (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The command could not do its work (exit code 1).
    #[error("{0}")]
    Failed(String),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
    /// The core refused (a rule, a transaction, a policy).
    #[error(transparent)]
    Core(#[from] paychan_core::Error),
    /// The embedded node refused.
    #[error(transparent)]
    Node(#[from] paychan_node::NodeError),
    /// The chain source failed.
    #[error(transparent)]
    Chain(#[from] paychan_chain::ChainError),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] paychan_store::StoreError),
    /// The wallet failed.
    #[error(transparent)]
    Wallet(#[from] paychan_wallet::WalletError),
    /// The merchant failed.
    #[error(transparent)]
    Merchant(#[from] paychan_merchant::MerchantError),
    /// The customer failed.
    #[error(transparent)]
    Customer(#[from] paychan_customer::CustomerError),
    /// A connection or TLS setting failed (a certificate file, an address).
    #[error(transparent)]
    Transport(#[from] paychan_transport::TransportError),
    /// The bench or demo world could not be built.
    #[error(transparent)]
    Harness(#[from] paychan_harness::HarnessError),
    /// A task panicked or was cancelled.
    #[error("a task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The command failed with `e` (exit code 1): for a message of the command's own (the errors
/// of paychan's crates convert with `?`).
pub fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        use paychan_customer::CustomerError;
        match self {
            CliError::Usage(_) => 2,
            CliError::Customer(CustomerError::PriceTooHigh { .. }) => {
                crate::cmd::buy::EXIT_PRICE_ABOVE_MAX
            }
            CliError::Customer(CustomerError::SpendingCap { .. }) => {
                crate::cmd::buy::EXIT_SPENDING_CAP
            }
            _ => 1,
        }
    }

    /// A short stable name of the kind of error, for `--json` output.
    pub fn kind(&self) -> &'static str {
        use paychan_customer::CustomerError;
        match self {
            CliError::Usage(_) => "usage",
            CliError::Customer(CustomerError::PriceTooHigh { .. }) => "price_above_max",
            CliError::Customer(CustomerError::SpendingCap { .. }) => "spending_cap",
            CliError::Customer(_) => "customer",
            CliError::Merchant(_) => "merchant",
            CliError::Core(_) => "core",
            CliError::Node(_) => "node",
            CliError::Chain(_) => "chain",
            CliError::Store(_) => "store",
            CliError::Wallet(_) => "wallet",
            CliError::Io(_) => "io",
            _ => "failed",
        }
    }
}
