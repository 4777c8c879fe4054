//! Logging: `tracing` to stderr (the container log; `iotedge-local` writes each module's to
//! `logs/<module>.log` in its state folder), at `RUST_LOG`'s level, with the level changeable
//! at run time through the `LoggingLevel` desired property, as the tutorial's modules allow.

use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log level of a running module.
#[derive(Clone)]
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The filter the module started with, which [`LogLevel::reset`] puts back.
    initial: std::sync::Arc<str>,
}

/// Starts logging at `RUST_LOG`'s level, else `info`.
pub fn init() -> LogLevel {
    init_or("info")
}

/// Starts logging at `RUST_LOG`'s level, else at `default` (e.g. `error` for a command-line
/// tool whose own output is the point).
pub fn init_or(default: &str) -> LogLevel {
    let initial: std::sync::Arc<str> = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(v) if EnvFilter::try_new(&v).is_ok() => v.into(),
        _ => default.into(),
    };
    let filter = EnvFilter::new(&*initial);
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
    LogLevel { handle, initial }
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

    /// Puts back the level the module started with (`RUST_LOG`'s, else the default).
    pub fn reset(&self) -> Result<(), String> {
        self.handle
            .reload(EnvFilter::new(&*self.initial))
            .map_err(|e| e.to_string())
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
    fn a_level_is_set_refused_or_reset() {
        let log = init_or("info");
        log.set("Debug").unwrap();
        assert!(tracing::enabled!(tracing::Level::DEBUG));
        let e = log.set("loud").unwrap_err();
        assert!(e.contains("LoggingLevel 'loud'"), "{e}");
        // The refused value left the level where it was.
        assert!(tracing::enabled!(tracing::Level::DEBUG));
        log.set("error").unwrap();
        assert!(!tracing::enabled!(tracing::Level::WARN));
        log.reset().unwrap();
        assert!(tracing::enabled!(tracing::Level::INFO) || std::env::var("RUST_LOG").is_ok());
    }
}
