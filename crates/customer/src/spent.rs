//! The spending log: one JSON line per paid request (what was paid, to whom, for which URL),
//! appended by the paying client, listed by `paychan spent`. It is a record for people; the
//! channel store stays the accounting.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::CustomerError;

/// One paid request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    /// When the answer came, seconds since the Unix epoch.
    pub time: u64,
    /// The request's method.
    pub method: String,
    /// The URL asked for.
    pub url: String,
    /// The merchant: its node id (the 402's `payTo`).
    pub merchant: String,
    /// The channel that paid, `txid:vout`.
    pub channel: String,
    /// The price asked, sat.
    pub price_sat: u64,
    /// New money signed for this request, sat (less than the price when credit paid part).
    pub paid_sat: u64,
    /// The HTTP status of the answer.
    pub status: u16,
    /// Whether the merchant charged the request (false when it reversed the charge).
    pub charged: bool,
}

/// An append-only file of [`Spent`] lines.
#[derive(Debug, Clone)]
pub struct SpendingLog {
    path: PathBuf,
}

impl SpendingLog {
    /// The log at `path` (created at the first entry).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SpendingLog { path: path.into() }
    }

    /// Appends `entry` as one line.
    ///
    /// # Errors
    /// [`CustomerError::SpendingLog`] when the file cannot be written.
    pub async fn append(&self, entry: &Spent) -> Result<(), CustomerError> {
        let failed =
            |e: std::io::Error| CustomerError::SpendingLog(format!("{}: {e}", self.path.display()));
        let mut line = serde_json::to_vec(entry).map_err(|e| failed(std::io::Error::other(e)))?;
        line.push(b'\n');
        let path = self.path.clone();
        // A line of a few hundred bytes appended to an O_APPEND file: lines of concurrent
        // clients land whole.
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            std::fs::OpenOptions::new().create(true).append(true).open(&path)?.write_all(&line)
        })
        .await
        .map_err(|e| failed(std::io::Error::other(e)))?;
        written.map_err(failed)
    }

    /// Every entry, oldest first; a line that does not parse (a torn last write) is skipped.
    ///
    /// # Errors
    /// [`CustomerError::SpendingLog`] when the file exists but cannot be read.
    pub fn read(path: &Path) -> Result<Vec<Spent>, CustomerError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(CustomerError::SpendingLog(format!("{}: {e}", path.display()))),
        }
    }
}
