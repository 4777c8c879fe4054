//! The module's settings: defaults, overridden by environment variables (the manifest's
//! `env`), overridden by desired properties of the module twin. Setting a desired property
//! to `null` returns it to the environment's value.
//!
//! | name | meaning | default |
//! |---|---|---|
//! | `SyncIntervalMs` | longest a record waits for its sync while records keep arriving | 200 |
//! | `SyncRecords` | records that close a group (one block, one sync) at once | 1000 |
//! | `SyncIdleMs` | a group is also synced when no record arrived for this long | 2 |
//! | `MaxDiskMB` | Avro tree size at which input stops until uploads free space | 1024 |
//! | `CheckIntervalSecs` | time between upload scans | 60 |
//! | `QuietPeriodSecs` | a file not modified for this long is uploaded | 600 |
//!
//! `LoggingLevel` (desired property) is handled by `edge_client::logging`; the upload target's
//! environment (`AVRO_UPLOAD_DIR`, `AVRO_UPLOAD_CONTAINER_SAS_URL`,
//! `AVRO_UPLOAD_STORAGE_CONNECTION_STRING`, `AVRO_UPLOAD_CONTAINER`) by [`crate::upload`].

use crate::budget::MIB;
use crate::scanner::ScanPolicy;
use crate::writer::SyncPolicy;
use serde_json::{json, Value};
use std::time::Duration;

/// The settings in force.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// When records are synced.
    pub sync: SyncPolicy,
    /// The disk budget, MiB.
    pub max_disk_mb: f64,
    /// When files are uploaded.
    pub scan: ScanPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sync: SyncPolicy::default(),
            max_disk_mb: 1024.0,
            scan: ScanPolicy::default(),
        }
    }
}

/// The names of the settings, as environment variables and desired properties.
pub const NAMES: [&str; 6] = [
    "SyncIntervalMs",
    "SyncRecords",
    "SyncIdleMs",
    "MaxDiskMB",
    "CheckIntervalSecs",
    "QuietPeriodSecs",
];

fn number(name: &str, v: &Value, min: f64, max: f64) -> Result<f64, String> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n.is_finite() && n >= min && n <= max => Ok(n),
        _ => Err(format!(
            "{name} = {v} is not a number from {min} to {max}; keeping the current value"
        )),
    }
}

impl Config {
    /// Sets one setting from a JSON value (a number, or a string holding one).
    pub fn set(&mut self, name: &str, v: &Value) -> Result<(), String> {
        let ms = |n: f64| Duration::from_micros((n * 1000.0).round() as u64);
        let secs = |n: f64| Duration::from_millis((n * 1000.0).round() as u64);
        match name {
            "SyncIntervalMs" => self.sync.interval = ms(number(name, v, 1.0, 60_000.0)?),
            "SyncRecords" => {
                self.sync.records = number(name, v, 1.0, 1_000_000.0)?.round() as usize
            }
            "SyncIdleMs" => self.sync.idle = ms(number(name, v, 0.0, 60_000.0)?),
            "MaxDiskMB" => self.max_disk_mb = number(name, v, 0.0, 1e9)?,
            "CheckIntervalSecs" => self.scan.check_interval = secs(number(name, v, 0.1, 86_400.0)?),
            "QuietPeriodSecs" => {
                // The writer closes its file after the same quiet time, so it can be uploaded.
                let quiet = secs(number(name, v, 0.0, 30.0 * 86_400.0)?);
                self.scan.quiet_period = quiet;
                self.sync.close_idle = quiet;
            }
            other => return Err(format!("{other} is not a setting of this module")),
        }
        Ok(())
    }

    /// Defaults overridden by the environment; returns the problems found, for the log.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> (Config, Vec<String>) {
        let mut c = Config::default();
        let mut problems = Vec::new();
        for name in NAMES {
            if let Some(v) = get(name).filter(|v| !v.trim().is_empty()) {
                if let Err(e) = c.set(name, &Value::String(v)) {
                    problems.push(format!("environment: {e}"));
                }
            }
        }
        (c, problems)
    }

    /// Applies a desired document or patch; `null` restores `base` (the environment's
    /// value). Returns the problems found, for the log.
    pub fn apply_desired(&mut self, desired: &Value, base: &Config) -> Vec<String> {
        let mut problems = Vec::new();
        for name in NAMES {
            match desired.get(name) {
                None => {}
                Some(Value::Null) => {
                    let mut restored = *self;
                    restored.copy_from(base, name);
                    *self = restored;
                }
                Some(v) => {
                    if let Err(e) = self.set(name, v) {
                        problems.push(format!("desired property {e}"));
                    }
                }
            }
        }
        problems
    }

    fn copy_from(&mut self, base: &Config, name: &str) {
        match name {
            "SyncIntervalMs" => self.sync.interval = base.sync.interval,
            "SyncRecords" => self.sync.records = base.sync.records,
            "SyncIdleMs" => self.sync.idle = base.sync.idle,
            "MaxDiskMB" => self.max_disk_mb = base.max_disk_mb,
            "CheckIntervalSecs" => self.scan.check_interval = base.scan.check_interval,
            "QuietPeriodSecs" => {
                self.scan.quiet_period = base.scan.quiet_period;
                self.sync.close_idle = base.sync.close_idle;
            }
            _ => {}
        }
    }

    /// The budget in bytes.
    pub fn max_disk_bytes(&self) -> u64 {
        (self.max_disk_mb * MIB) as u64
    }

    /// The settings as reported properties.
    pub fn reported(&self) -> Value {
        json!({
            "SyncIntervalMs": self.sync.interval.as_secs_f64() * 1000.0,
            "SyncRecords": self.sync.records,
            "SyncIdleMs": self.sync.idle.as_secs_f64() * 1000.0,
            "MaxDiskMB": self.max_disk_mb,
            "CheckIntervalSecs": self.scan.check_interval.as_secs_f64(),
            "QuietPeriodSecs": self.scan.quiet_period.as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_then_desired_then_null_back_to_the_environment() {
        let env = |k: &str| match k {
            "SyncIntervalMs" => Some("50".to_owned()),
            "QuietPeriodSecs" => Some("2".to_owned()),
            "SyncRecords" => Some("lots".to_owned()),
            _ => None,
        };
        let (base, problems) = Config::from_vars(env);
        assert_eq!(base.sync.interval, Duration::from_millis(50));
        assert_eq!(base.scan.quiet_period, Duration::from_secs(2));
        assert_eq!(base.sync.records, 1000, "a bad value keeps the default");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("SyncRecords"), "{problems:?}");

        let mut c = base;
        let problems = c.apply_desired(
            &json!({"SyncIntervalMs": 500, "MaxDiskMB": 0.5, "CheckIntervalSecs": -1, "LoggingLevel": "debug"}),
            &base,
        );
        assert_eq!(c.sync.interval, Duration::from_millis(500));
        assert_eq!(c.max_disk_bytes(), 512 * 1024);
        assert_eq!(c.scan.check_interval, Duration::from_secs(60));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("CheckIntervalSecs") && problems[0].contains("keeping"),
            "{problems:?}"
        );
        c.apply_desired(&json!({"SyncIntervalMs": null}), &base);
        assert_eq!(c.sync.interval, Duration::from_millis(50));
        assert_eq!(c.reported()["SyncIntervalMs"], json!(50.0));
    }
}
