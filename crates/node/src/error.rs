//! The node's one error type, with bitcoind's RPC error codes.

/// bitcoind's RPC error codes (`src/rpc/protocol.h`).
pub mod code {
    /// `RPC_MISC_ERROR`
    pub const MISC: i32 = -1;
    /// `RPC_TYPE_ERROR`
    pub const TYPE: i32 = -3;
    /// `RPC_INVALID_ADDRESS_OR_KEY`: also "not found".
    pub const INVALID_ADDRESS_OR_KEY: i32 = -5;
    /// `RPC_INVALID_PARAMETER`
    pub const INVALID_PARAMETER: i32 = -8;
    /// `RPC_DESERIALIZATION_ERROR`
    pub const DESERIALIZATION: i32 = -22;
    /// `RPC_VERIFY_ERROR` / `RPC_TRANSACTION_ERROR`
    pub const VERIFY_ERROR: i32 = -25;
    /// `RPC_VERIFY_REJECTED` / `RPC_TRANSACTION_REJECTED`
    pub const VERIFY_REJECTED: i32 = -26;
    /// `RPC_VERIFY_ALREADY_IN_CHAIN`
    pub const ALREADY_IN_CHAIN: i32 = -27;
    /// `RPC_METHOD_NOT_FOUND`
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// `RPC_INVALID_REQUEST`
    pub const INVALID_REQUEST: i32 = -32600;
    /// `RPC_PARSE_ERROR`
    pub const PARSE: i32 = -32700;
}

/// Errors of the embedded node. Reject reasons use Bitcoin Core's words (`dust`, `non-final`,
/// `bad-txns-inputs-missingorspent`, …) so that tools matching on them work unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The transaction was refused by mempool policy or consensus (RPC -26).
    #[error("{0}")]
    Rejected(String),
    /// An input is missing or already spent (RPC -25).
    #[error("bad-txns-inputs-missingorspent")]
    MissingInputs,
    /// The transaction is already confirmed (RPC -27).
    #[error("Transaction already in block chain")]
    AlreadyInChain,
    /// The fee rate exceeds `maxfeerate` (RPC -25).
    #[error("Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)")]
    MaxFeeExceeded,
    /// Something asked for does not exist (RPC -5).
    #[error("{0}")]
    NotFound(String),
    /// A parameter is out of range (RPC -8).
    #[error("{0}")]
    InvalidParameter(String),
    /// A package that is not a child with its parents (RPC -25).
    #[error("{0}")]
    InvalidPackage(String),
    /// Bytes that do not decode (RPC -22).
    #[error("{0}")]
    Deserialization(String),
    /// A block failed validation.
    #[error("invalid block {hash}: {reason}")]
    InvalidBlock {
        /// The block.
        hash: String,
        /// Why.
        reason: String,
    },
    /// The data directory could not be read or written.
    #[error("data directory {path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The data directory holds something this build cannot read.
    #[error("data directory is corrupt: {0}")]
    Corrupt(String),
}

impl NodeError {
    /// bitcoind's RPC error code for this error.
    pub fn rpc_code(&self) -> i32 {
        match self {
            NodeError::Rejected(_) => code::VERIFY_REJECTED,
            NodeError::MissingInputs | NodeError::MaxFeeExceeded | NodeError::InvalidPackage(_) => {
                code::VERIFY_ERROR
            }
            NodeError::AlreadyInChain => code::ALREADY_IN_CHAIN,
            NodeError::NotFound(_) => code::INVALID_ADDRESS_OR_KEY,
            NodeError::InvalidParameter(_) => code::INVALID_PARAMETER,
            NodeError::Deserialization(_) => code::DESERIALIZATION,
            NodeError::InvalidBlock { .. } => code::VERIFY_ERROR,
            NodeError::Io { .. } | NodeError::Corrupt(_) => code::MISC,
        }
    }

    /// The reject reason as `testmempoolaccept` reports it (`reject-reason`): Core's short
    /// reason, without the details after its first ", " (those are in [`Self::reject_details`]).
    pub fn reject_reason(&self) -> String {
        match self {
            NodeError::AlreadyInChain => "txn-already-known".into(),
            NodeError::MaxFeeExceeded => "max-fee-exceeded".into(),
            NodeError::MissingInputs => "missing-inputs".into(),
            NodeError::Rejected(r) => {
                r.split_once(", ").map_or(r.as_str(), |(reason, _)| reason).into()
            }
            other => other.to_string(),
        }
    }

    /// The reason with its details, as `sendrawtransaction` and `submitpackage` report it
    /// (Core 29's `reject-details`).
    pub fn reject_details(&self) -> String {
        self.to_string()
    }

    pub(crate) fn rejected(reason: impl Into<String>) -> Self {
        NodeError::Rejected(reason.into())
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        NodeError::Io { path: path.display().to_string(), source }
    }
}
