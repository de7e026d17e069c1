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
}

/// The command failed with `e` (exit code 1): `.map_err(fail)?` for any error whose text
/// says what went wrong.
pub fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Io(_) | CliError::Failed(_) => 1,
        }
    }
}
