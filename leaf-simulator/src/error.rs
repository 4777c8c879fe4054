//! What can stop a simulation before it starts, worded for the operator.

use std::path::PathBuf;

/// Why the simulator cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// No runtime runs on the state folder, or its ready file cannot be used.
    #[error(transparent)]
    NotReady(#[from] runtime_state::ReadyError),
    /// The CA certificate the ready file names cannot be used.
    #[error("{path}: {reason}")]
    ReadyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The C-MAPSS data cannot be read.
    #[error("C-MAPSS data: {0} (set --data or CMAPSS_DIR to the folder holding the NASA files)")]
    Data(#[from] turbofan_domain::cmapss::CmapssError),
    /// The data file holds no rows for the requested devices.
    #[error("{0} holds no engine rows to send")]
    NoRows(PathBuf),
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
    /// The device registry could not be updated.
    #[error("device registry {path}: {source}")]
    Registry {
        /// The registry file.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// The sent log could not be written.
    #[error("sent log {path}: {source}")]
    SentLog {
        /// The log file.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
}
