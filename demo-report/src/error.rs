//! Why a report could not be made.

use std::path::PathBuf;

/// What went wrong, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No sent log: the simulator has not run (or wrote its log elsewhere).
    #[error("no sent log at {0}: run leaf-simulator first, or pass --sent-log")]
    NoSentLog(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// The C-MAPSS truth could not be read.
    #[error("C-MAPSS data: {0} (set --data or CMAPSS_DIR)")]
    Data(#[from] turbofan_domain::cmapss::CmapssError),
    /// The picture could not be drawn.
    #[error("drawing {path}: {reason}")]
    Plot {
        /// The picture's file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A storage endpoint's blobs could not be read.
    #[error("IoT Hub storage endpoint: {0}")]
    Endpoint(String),
    /// The report could not be serialised.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl ReportError {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
        move |source| ReportError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
