//! Logging: `tracing` to stderr (the container log; `iotedge-local` writes each module's to
//! `logs/<module>.log` in its state folder), at `RUST_LOG`'s level, with the level changeable
//! at run time through the `LoggingLevel` desired property, as the tutorial's modules allow.

use serde_json::Value;
use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log level of a running module.
#[derive(Clone)]
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
}

/// Starts logging at `RUST_LOG`'s level, else `info`.
pub fn init() -> LogLevel {
    init_or("info")
}

/// Starts logging at `RUST_LOG`'s level, else at `default` (e.g. `error` for a command-line
/// tool whose own output is the point).
pub fn init_or(default: &str) -> LogLevel {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let (layer, handle) = reload::Layer::new(filter);
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours only for a person at a terminal, not in log files.
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .try_init();
    LogLevel { handle }
}

/// Maps a `LoggingLevel` value (`trace`, `debug`, `info`, `warn`/`warning`, `error`,
/// case-insensitive) to a filter directive.
pub fn level_directive(value: &str) -> Option<&'static str> {
    Some(match value.trim().to_ascii_lowercase().as_str() {
        "trace" | "verbose" => "trace",
        "debug" => "debug",
        "info" | "information" => "info",
        "warn" | "warning" => "warn",
        "error" | "critical" => "error",
        _ => return None,
    })
}

impl LogLevel {
    /// Applies a `LoggingLevel` value; an unknown value is an error naming the valid ones.
    pub fn set(&self, value: &str) -> Result<(), String> {
        let d = level_directive(value).ok_or_else(|| {
            format!("LoggingLevel '{value}' is not one of trace, debug, info, warn, error")
        })?;
        self.handle
            .reload(EnvFilter::new(d))
            .map_err(|e| e.to_string())
    }

    /// Applies the `LoggingLevel` of a desired-properties document or patch, if it has one,
    /// and returns the level applied, to report. A value that is not a level (or not a
    /// string) is logged as a warning and the level stays as it was.
    pub fn apply_desired<'a>(&self, desired: &'a Value) -> Option<&'a str> {
        let value = desired.get(LOGGING_LEVEL)?;
        let Some(level) = value.as_str() else {
            tracing::warn!(%value, "{LOGGING_LEVEL} must be a string");
            return None;
        };
        match self.set(level) {
            Ok(()) => Some(level),
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }
}

/// The desired property that sets a module's log level.
pub const LOGGING_LEVEL: &str = "LoggingLevel";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_like_the_tutorial() {
        assert_eq!(level_directive("Debug"), Some("debug"));
        assert_eq!(level_directive(" warning "), Some("warn"));
        assert_eq!(level_directive("loud"), None);
    }

    #[test]
    fn desired_logging_level_is_applied_or_refused() {
        let log = init_or("info");
        let patch = serde_json::json!({"LoggingLevel": "Debug"});
        assert_eq!(log.apply_desired(&patch), Some("Debug"));
        assert!(tracing::enabled!(tracing::Level::DEBUG));
        assert_eq!(
            log.apply_desired(&serde_json::json!({"LoggingLevel": "loud"})),
            None
        );
        assert_eq!(
            log.apply_desired(&serde_json::json!({"LoggingLevel": 3})),
            None
        );
        assert_eq!(log.apply_desired(&serde_json::json!({"Other": 1})), None);
        // The refused values left the level where it was.
        assert!(tracing::enabled!(tracing::Level::DEBUG));
        assert_eq!(
            log.apply_desired(&serde_json::json!({"LoggingLevel": "error"})),
            Some("error")
        );
        assert!(!tracing::enabled!(tracing::Level::WARN));
    }
}
