//! Logging for modules: `tracing` to stderr (the container log), with the level changeable at
//! run time through the `LoggingLevel` desired property, as the tutorial's modules allow.

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_like_the_tutorial() {
        assert_eq!(level_directive("Debug"), Some("debug"));
        assert_eq!(level_directive(" warning "), Some("warn"));
        assert_eq!(level_directive("loud"), None);
    }
}
