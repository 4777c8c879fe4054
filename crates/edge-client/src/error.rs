//! Errors of the module client.

/// What went wrong, worded so the operator knows what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The module's identity or settings are incomplete or invalid.
    #[error("module configuration: {0}")]
    Config(String),
    /// The workload API could not be reached or refused a request.
    #[error("workload API at {uri}: {reason}")]
    Workload {
        /// Workload URI.
        uri: String,
        /// What failed.
        reason: String,
    },
    /// TLS set-up failed (bad trust bundle, …).
    #[error("TLS: {0}")]
    Tls(String),
    /// The hub answered a twin request with an error status.
    #[error("twin request failed with status {status}: {body}")]
    Twin {
        /// Status code from the hub.
        status: u16,
        /// Response body.
        body: String,
    },
    /// The request did not complete in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The message cannot be sent: MQTT cannot carry it.
    #[error("message not sent: {0}")]
    TooLarge(String),
    /// The client has been closed.
    #[error("the module client is closed")]
    Closed,
    /// JSON (de)serialisation failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}
