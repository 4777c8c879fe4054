//! A module's settings from its twin's desired properties, the same way in every module.
//!
//! A module declares its settings as a type implementing [`ModuleSettings`]: a list of
//! [`Property`]s, each with its name, the field it sets and how a value is read and checked.
//! [`follow`] then applies the twin's desired document at start and every patch after it:
//!
//! - a valid value sets the property;
//! - an invalid one is logged as a warning and the property keeps its value;
//! - `null` removes the property, as IoT Hub does: the property's default applies again (the
//!   value the module started with: a built-in default, or what its environment said);
//! - `LoggingLevel` is every module's, handled here ([`crate::logging::LogLevel`]);
//! - after each document or patch the module's properties and `LoggingLevel` are reported,
//!   in one reported-properties patch.

use crate::client::ModuleClient;
use crate::logging::{LogLevel, LOGGING_LEVEL};
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tracing::{info, warn};

/// A module's settings: a value holds every setting its desired properties can change.
pub trait ModuleSettings: Clone + Send + Sync + 'static {
    /// The module's desired properties, `LoggingLevel` aside (every module has it).
    fn properties() -> Vec<Property<Self>>;
}

type Set<S> = Box<dyn Fn(&mut S, &Value) -> Result<(), String> + Send + Sync>;
type Reset<S> = Box<dyn Fn(&mut S, &mut S) + Send + Sync>;
type Report<S> = Box<dyn Fn(&mut S) -> Value + Send + Sync>;

/// One desired property of a module: its name, the field of the settings it sets, how a
/// value is read and checked, and how its value is reported.
pub struct Property<S> {
    name: &'static str,
    set: Set<S>,
    reset: Reset<S>,
    report: Report<S>,
}

impl<S: 'static> Property<S> {
    /// The property `name`, held in the field `field` picks. `parse` reads a (non-null)
    /// value, given the settings as they are, or says why it is refused (e.g. `must be a
    /// whole number from 1 to 10`); `report` is the field's value as reported.
    pub fn new<T: 'static>(
        name: &'static str,
        field: fn(&mut S) -> &mut T,
        parse: impl Fn(&S, &Value) -> Result<T, String> + Send + Sync + 'static,
        report: fn(&T) -> Value,
    ) -> Property<S> {
        Property {
            name,
            set: Box::new(move |s, v| {
                let value = parse(s, v)?;
                *field(s) = value;
                Ok(())
            }),
            reset: Box::new(move |s, defaults| std::mem::swap(field(s), field(defaults))),
            report: Box::new(move |s| report(field(s))),
        }
    }

    /// The property's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Sets the property in `settings` from `value`; on `Err` (why `value` is refused),
    /// `settings` is unchanged.
    pub fn set(&self, settings: &mut S, value: &Value) -> Result<(), String> {
        (self.set)(settings, value)
    }
}

/// A whole number from `min` to `max` (a JSON number).
pub fn whole_number(min: u64, max: u64) -> impl Fn(&Value) -> Result<u64, String> {
    move |v| {
        v.as_u64()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| format!("must be a whole number from {min} to {max}"))
    }
}

/// The settings in force and what the twin can do to them.
pub struct Desired<S: ModuleSettings> {
    properties: Vec<Property<S>>,
    defaults: S,
    current: S,
    log: Option<LogLevel>,
    /// `LoggingLevel` as the twin set it (`None`: the level the module started with).
    logging_level: Option<String>,
}

impl<S: ModuleSettings> Desired<S> {
    /// Settings at `defaults`, which `null` restores; `log` applies `LoggingLevel` (`None`:
    /// the property is only reported, as in tests).
    pub fn new(defaults: S, log: Option<LogLevel>) -> Desired<S> {
        Desired {
            properties: S::properties(),
            current: defaults.clone(),
            defaults,
            log,
            logging_level: None,
        }
    }

    /// The settings in force.
    pub fn current(&self) -> &S {
        &self.current
    }

    /// Applies a desired document or patch (warning about each value refused) and returns
    /// the reported-properties patch: every property's value, and `LoggingLevel`.
    pub fn apply(&mut self, desired: &Value) -> Value {
        self.apply_logging_level(desired.get(LOGGING_LEVEL));
        let mut reported = Map::new();
        for p in &self.properties {
            match desired.get(p.name) {
                None => {}
                Some(Value::Null) => {
                    let mut defaults = self.defaults.clone();
                    (p.reset)(&mut self.current, &mut defaults);
                    info!(
                        "desired property {} removed: back to {}",
                        p.name,
                        (p.report)(&mut self.current)
                    );
                }
                Some(v) => {
                    if let Err(why) = (p.set)(&mut self.current, v) {
                        warn!(
                            value = %v,
                            "desired property {} {why}; keeping {}",
                            p.name,
                            (p.report)(&mut self.current)
                        );
                    }
                }
            }
            reported.insert(p.name.into(), (p.report)(&mut self.current));
        }
        reported.insert(LOGGING_LEVEL.into(), json!(self.logging_level));
        Value::Object(reported)
    }

    fn apply_logging_level(&mut self, value: Option<&Value>) {
        let level = match value {
            None => return,
            Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                warn!(value = %other, "desired property {LOGGING_LEVEL} must be a string; keeping the level");
                return;
            }
        };
        let applied = match (&self.log, &level) {
            (None, _) => Ok(()),
            (Some(log), Some(l)) => log.set(l),
            (Some(log), None) => log.reset(),
        };
        match applied {
            Ok(()) => self.logging_level = level,
            Err(e) => warn!("desired property {e}; keeping the level"),
        }
    }
}

/// Follows the module's desired properties: applies the twin's desired document now and
/// every patch later ([`Desired::apply`]), publishes the settings on `settings` (whose
/// value is the defaults `null` restores), calls `on_change` with them, and reports the
/// properties with what `on_change` returns (a JSON object, or anything else for nothing
/// more). `first` is merged into the first report. A twin that cannot be read is logged;
/// the module goes on with its defaults.
pub async fn follow<S, F>(
    client: &ModuleClient,
    log: LogLevel,
    settings: watch::Sender<S>,
    first: Value,
    on_change: F,
) where
    S: ModuleSettings,
    F: Fn(&S) -> Value + Send + Sync + 'static,
{
    let defaults = settings.borrow().clone();
    let mut desired = Desired::new(defaults, Some(log));
    let mut apply = move |d: &Value| {
        let mut reported = desired.apply(d);
        settings.send_replace(desired.current().clone());
        if let (Value::Object(r), Value::Object(more)) =
            (&mut reported, on_change(desired.current()))
        {
            r.extend(more);
        }
        reported
    };
    let mut report = first;
    match client.twin().await {
        Ok(twin) => merge(&mut report, apply(&twin["desired"])),
        Err(e) => warn!("could not read the module twin; using defaults: {e}"),
    }
    report_to(client, &report).await;
    if let Ok(mut patches) = client.desired_updates() {
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(patch) = patches.recv().await {
                report_to(&client, &apply(&patch)).await;
            }
        });
    }
}

fn merge(into: &mut Value, more: Value) {
    match (into, more) {
        (Value::Object(r), Value::Object(more)) => r.extend(more),
        (into, more) => *into = more,
    }
}

async fn report_to(client: &ModuleClient, reported: &Value) {
    if reported.as_object().is_some_and(|o| !o.is_empty()) {
        if let Err(e) = client.update_reported(reported).await {
            warn!("could not report properties: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Demo {
        batch: u64,
        threshold: Option<f64>,
        strict: bool,
    }

    impl ModuleSettings for Demo {
        fn properties() -> Vec<Property<Demo>> {
            let batch = whole_number(1, 10);
            vec![
                Property::new(
                    "Batch",
                    |s: &mut Demo| &mut s.batch,
                    move |s, v| match batch(v) {
                        Ok(7) if s.strict => Err("must not be 7 here".into()),
                        other => other,
                    },
                    |v| json!(v),
                ),
                Property::new(
                    "Threshold",
                    |s: &mut Demo| &mut s.threshold,
                    |_, v| v.as_f64().map(Some).ok_or("must be a number".into()),
                    |v| json!(v),
                ),
            ]
        }
    }

    const DEFAULTS: Demo = Demo {
        batch: 4,
        threshold: Some(1.5),
        strict: true,
    };

    #[test]
    fn values_are_set_checked_and_reported() {
        let mut d = Desired::new(DEFAULTS, None);
        let r = d.apply(&json!({"Batch": 9, "Threshold": 3, "Other": 1, "$version": 2}));
        assert_eq!((d.current().batch, d.current().threshold), (9, Some(3.0)));
        assert_eq!(
            r,
            json!({"Batch": 9, "Threshold": 3.0, "LoggingLevel": null})
        );
        // Refused: out of range, wrong type, refused given the other settings.
        for bad in [json!(0), json!(11), json!("5"), json!(2.5), json!(7)] {
            let r = d.apply(&json!({ "Batch": bad }));
            assert_eq!(d.current().batch, 9, "{bad}");
            assert_eq!(r["Batch"], json!(9));
        }
        // A patch without a property leaves it as it is.
        d.apply(&json!({"Threshold": 8}));
        assert_eq!(d.current().batch, 9);
    }

    #[test]
    fn null_removes_a_property_and_its_default_applies() {
        let mut d = Desired::new(DEFAULTS, None);
        d.apply(&json!({"Batch": 9, "Threshold": 3, "LoggingLevel": "debug"}));
        let r = d.apply(&json!({"Threshold": null}));
        assert_eq!(d.current().threshold, Some(1.5));
        assert_eq!(d.current().batch, 9, "other properties kept");
        assert_eq!(r["Threshold"], json!(1.5));
        assert_eq!(r["LoggingLevel"], json!("debug"));
        let r = d.apply(&json!({"Batch": null, "LoggingLevel": null}));
        assert_eq!(d.current(), &DEFAULTS);
        assert_eq!(r["LoggingLevel"], json!(null));
    }

    #[test]
    fn a_logging_level_that_is_not_a_string_is_refused() {
        let mut d = Desired::new(DEFAULTS, None);
        d.apply(&json!({"LoggingLevel": "warn"}));
        let r = d.apply(&json!({"LoggingLevel": 3}));
        assert_eq!(r["LoggingLevel"], json!("warn"));
    }
}
