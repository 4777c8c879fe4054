//! Why an upload failed, sorted by what the caller can do about it.

use std::path::PathBuf;

/// Why an upload failed. Messages never hold a key or a SAS token.
///
/// The variants sort failures by what a caller does next: [`Error::NoDeviceIdentity`] means
/// nothing is configured; [`Error::Config`] and [`Error::BadBlobName`] need a change of
/// configuration or code; [`Error::Unauthorized`] and [`Error::NotFound`] need an operator
/// (a key, an identity, a container); [`Error::Unavailable`] may pass if tried again as is
/// ([`Error::is_retryable`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No device connection string: none in the environment, no IoT Edge config file.
    #[error("file upload configuration: no device connection string: set {} or bind-mount the IoT Edge config ({} or {}) into the module",
        crate::upload::CONNECTION_STRING_VARS.join(" or "), crate::upload::CONFIG_TOML, crate::upload::CONFIG_YAML)]
    NoDeviceIdentity,
    /// A configuration is present but unusable (connection string, SAS URL, trust bundle,
    /// container name).
    #[error("file upload configuration: {0}")]
    Config(String),
    /// The blob name cannot name a blob.
    #[error(
        "file upload, naming the blob: '{0}' is not a relative path of at most 1024 characters"
    )]
    BadBlobName(String),
    /// The file to upload cannot be read.
    #[error("file upload, reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The service refused the credentials (HTTP 401, or 403 but for too many uploads).
    #[error("file upload, {step}: {reason}")]
    Unauthorized {
        /// Which step.
        step: &'static str,
        /// The status and what the service said.
        reason: String,
    },
    /// The service does not know the device, the container or the upload (HTTP 404).
    #[error("file upload, {step}: {reason}")]
    NotFound {
        /// Which step.
        step: &'static str,
        /// The status and what the service said.
        reason: String,
    },
    /// The service could not be reached, timed out, failed or was busy (a transport error,
    /// HTTP 408, 429, 5xx, or IoT Hub's too many uploads in progress).
    #[error("file upload, {step}: {reason}")]
    Unavailable {
        /// Which step.
        step: &'static str,
        /// The status or transport error, and what the service said.
        reason: String,
    },
    /// The service refused the request otherwise, or answered what this client cannot read.
    #[error("file upload, {step}: {reason}")]
    Refused {
        /// Which step.
        step: &'static str,
        /// The status and what the service said.
        reason: String,
    },
}

impl Error {
    /// Whether trying again unchanged may succeed (the service was unreachable or busy).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Read { .. })
    }

    /// The failure of `step` for an HTTP answer of `status` (not a success), sorted by the
    /// status; `busy` says the service asked to come back later whatever the status.
    pub(crate) fn from_status(
        step: &'static str,
        status: u16,
        busy: bool,
        reason: String,
    ) -> Error {
        match status {
            _ if busy => Error::Unavailable { step, reason },
            401 | 403 => Error::Unauthorized { step, reason },
            404 => Error::NotFound { step, reason },
            408 | 429 | 500..=599 => Error::Unavailable { step, reason },
            _ => Error::Refused { step, reason },
        }
    }

    /// A transport failure of `step` (no answer): worth trying again.
    pub(crate) fn transport(step: &'static str, reason: String) -> Error {
        Error::Unavailable { step, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_sort_into_what_to_do() {
        let e = |status, busy| Error::from_status("s", status, busy, format!("{status}"));
        assert!(matches!(e(401, false), Error::Unauthorized { .. }));
        assert!(matches!(e(403, false), Error::Unauthorized { .. }));
        assert!(matches!(e(403, true), Error::Unavailable { .. }));
        assert!(matches!(e(404, false), Error::NotFound { .. }));
        for s in [408, 429, 500, 503] {
            assert!(e(s, false).is_retryable(), "{s}");
        }
        assert!(matches!(e(400, false), Error::Refused { .. }));
        assert!(!e(400, false).is_retryable());
        assert_eq!(e(404, false).to_string(), "file upload, s: 404");
        assert!(Error::NoDeviceIdentity
            .to_string()
            .starts_with("file upload configuration: no device connection string: set DeviceConnectionString or IOTHUB_DEVICE_CONNECTION_STRING"));
    }
}
