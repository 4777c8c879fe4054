//! The module's settings: defaults, overridden by environment variables (the manifest's
//! `env`), overridden by desired properties of the module twin
//! ([`edge_client::desired`]). Setting a desired property to `null` removes it: the
//! environment's value (else the default) applies again.
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
//! A value is a number, or a string holding one (as environment variables are). `LoggingLevel`
//! (desired property) is every module's (`edge_client::desired`); the upload target's
//! environment (`AVRO_UPLOAD_DIR`, `AVRO_UPLOAD_CONTAINER_SAS_URL`,
//! `AVRO_UPLOAD_STORAGE_CONNECTION_STRING`, `AVRO_UPLOAD_CONTAINER`) by [`crate::upload`].

use crate::budget::MIB;
use crate::scanner::ScanPolicy;
use crate::writer::SyncPolicy;
use edge_client::desired::{ModuleSettings, Property};
use serde_json::{json, Value};
use std::time::Duration;

/// The settings in force.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// When records are synced (its `close_idle` is the quiet period: see
    /// [`Config::sync_policy`]).
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

/// A number from `min` to `max`: a JSON number, or a string holding one.
fn number(v: &Value, min: f64, max: f64) -> Result<f64, String> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    n.filter(|n| n.is_finite() && *n >= min && *n <= max)
        .ok_or_else(|| format!("must be a number from {min} to {max}"))
}

/// A duration given in milliseconds.
fn millis(
    name: &'static str,
    field: fn(&mut Config) -> &mut Duration,
    min: f64,
    max: f64,
) -> Property<Config> {
    Property::new(
        name,
        field,
        move |_, v| number(v, min, max).map(|n| Duration::from_micros((n * 1000.0).round() as u64)),
        |d| json!(d.as_secs_f64() * 1000.0),
    )
}

/// A duration given in seconds.
fn seconds(
    name: &'static str,
    field: fn(&mut Config) -> &mut Duration,
    min: f64,
    max: f64,
) -> Property<Config> {
    Property::new(
        name,
        field,
        move |_, v| number(v, min, max).map(|n| Duration::from_millis((n * 1000.0).round() as u64)),
        |d| json!(d.as_secs_f64()),
    )
}

impl ModuleSettings for Config {
    fn properties() -> Vec<Property<Config>> {
        vec![
            millis("SyncIntervalMs", |c| &mut c.sync.interval, 1.0, 60_000.0),
            Property::new(
                "SyncRecords",
                |c: &mut Config| &mut c.sync.records,
                |_, v| number(v, 1.0, 1_000_000.0).map(|n| n.round() as usize),
                |n| json!(n),
            ),
            millis("SyncIdleMs", |c| &mut c.sync.idle, 0.0, 60_000.0),
            Property::new(
                "MaxDiskMB",
                |c: &mut Config| &mut c.max_disk_mb,
                |_, v| number(v, 0.0, 1e9),
                |n| json!(n),
            ),
            seconds(
                "CheckIntervalSecs",
                |c| &mut c.scan.check_interval,
                0.1,
                86_400.0,
            ),
            seconds(
                "QuietPeriodSecs",
                |c| &mut c.scan.quiet_period,
                0.0,
                30.0 * 86_400.0,
            ),
        ]
    }
}

impl Config {
    /// Defaults overridden by the environment (a variable per property, of the same name);
    /// returns the problems found, for the log.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> (Config, Vec<String>) {
        let mut c = Config::default();
        let mut problems = Vec::new();
        for p in Config::properties() {
            if let Some(v) = get(p.name()).filter(|v| !v.trim().is_empty()) {
                if let Err(why) = p.set(&mut c, &Value::String(v.clone())) {
                    problems.push(format!(
                        "environment: {} = {v} {why}; keeping the default",
                        p.name()
                    ));
                }
            }
        }
        (c, problems)
    }

    /// The writer's sync policy: the writer closes its file after the quiet period without
    /// records, so that it can be uploaded.
    pub fn sync_policy(&self) -> SyncPolicy {
        SyncPolicy {
            close_idle: self.scan.quiet_period,
            ..self.sync
        }
    }

    /// The budget in bytes.
    pub fn max_disk_bytes(&self) -> u64 {
        (self.max_disk_mb * MIB) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_then_desired_then_null_back_to_the_environment() {
        use edge_client::desired::Desired;
        let env = |k: &str| match k {
            "SyncIntervalMs" => Some("50".to_owned()),
            "QuietPeriodSecs" => Some("2".to_owned()),
            "SyncRecords" => Some("lots".to_owned()),
            _ => None,
        };
        let (base, problems) = Config::from_vars(env);
        assert_eq!(base.sync.interval, Duration::from_millis(50));
        assert_eq!(base.scan.quiet_period, Duration::from_secs(2));
        assert_eq!(base.sync_policy().close_idle, Duration::from_secs(2));
        assert_eq!(base.sync.records, 1000, "a bad value keeps the default");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("SyncRecords"), "{problems:?}");

        let mut d = Desired::new(base, None);
        let reported = d.apply(
            &json!({"SyncIntervalMs": 500, "MaxDiskMB": 0.5, "CheckIntervalSecs": -1, "SyncIdleMs": "7"}),
        );
        let c = d.current();
        assert_eq!(c.sync.interval, Duration::from_millis(500));
        assert_eq!(c.sync.idle, Duration::from_millis(7));
        assert_eq!(c.max_disk_bytes(), 512 * 1024);
        assert_eq!(c.scan.check_interval, Duration::from_secs(60), "refused");
        assert_eq!(reported["SyncIntervalMs"], json!(500.0));
        assert_eq!(reported["CheckIntervalSecs"], json!(60.0));
        assert_eq!(reported["QuietPeriodSecs"], json!(2.0));
        let reported = d.apply(&json!({"SyncIntervalMs": null, "QuietPeriodSecs": 9}));
        assert_eq!(d.current().sync.interval, Duration::from_millis(50));
        assert_eq!(reported["SyncIntervalMs"], json!(50.0));
        assert_eq!(d.current().sync_policy().close_idle, Duration::from_secs(9));
    }
}
