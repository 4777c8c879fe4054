//! Shared test helpers: an in-memory message and value shorthands.
#![allow(dead_code)]

use std::borrow::Cow;

use edge_routes::{evaluate, parse_condition, MessageView, Value};

/// A message held in memory.
#[derive(Debug, Default, Clone)]
pub struct Msg {
    pub sys: Vec<(String, String)>,
    pub app: Vec<(String, String)>,
    pub body: Option<serde_json::Value>,
}

impl Msg {
    pub fn new() -> Self {
        Msg::default()
    }

    pub fn sys(mut self, name: &str, value: &str) -> Self {
        self.sys.push((name.to_string(), value.to_string()));
        self
    }

    pub fn app(mut self, name: &str, value: &str) -> Self {
        self.app.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, json: serde_json::Value) -> Self {
        self.body = Some(json);
        self
    }
}

impl MessageView for Msg {
    fn system_property(&self, name: &str) -> Option<Cow<'_, str>> {
        self.sys
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| Cow::Borrowed(v.as_str()))
    }

    fn application_property(&self, name: &str) -> Option<Cow<'_, str>> {
        self.app
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| Cow::Borrowed(v.as_str()))
    }

    fn body(&self) -> Option<&serde_json::Value> {
        self.body.as_ref()
    }
}

pub const U: Value<'static> = Value::Undefined;
pub const T: Value<'static> = Value::Bool(true);
pub const F: Value<'static> = Value::Bool(false);
pub const NULL: Value<'static> = Value::Null;

pub fn n(x: f64) -> Value<'static> {
    Value::Number(x)
}

pub fn s(x: &str) -> Value<'_> {
    Value::String(Cow::Borrowed(x))
}

/// Parses `condition`, evaluates it against `msg`, and compares with `expected`.
#[track_caller]
pub fn check(condition: &str, msg: &Msg, expected: Value<'_>) {
    let expr =
        parse_condition(condition).unwrap_or_else(|e| panic!("{condition:?} does not parse: {e}"));
    let got = evaluate(&expr, msg);
    assert_eq!(got, expected, "condition {condition:?} (parsed as {expr})");
}

/// Evaluates against an empty message.
#[track_caller]
pub fn check0(condition: &str, expected: Value<'_>) {
    check(condition, &Msg::new(), expected);
}
