//! Azure IoT Edge message routes: parsing, printing and evaluation.
//!
//! A route statement reads
//!
//! ```text
//! [SELECT *] FROM <source> [WHERE <condition>] INTO <sink>
//! ```
//!
//! with case-insensitive keywords and free whitespace. The source is a path
//! such as `/messages/*` or `/messages/modules/m/outputs/o`; the sink is
//! `$upstream` or `BrokeredEndpoint("/modules/<module>/inputs/<input>")`.
//! The condition uses the IoT Hub routing query language:
//!
//! * literals: numbers (`42`, `4.5`, `.5`, `1e-3`, `0x1F`), strings in single
//!   or double quotes (escapes `\'`, `\"`, `\\`, `\/`, `\b`, `\f`, `\n`,
//!   `\r`, `\t`, `\uXXXX`, and a doubled quote), `true`, `false`, `null`,
//!   `undefined`;
//! * references: system properties `$name` (names may contain `-`), the body
//!   `$body.a.b[0]['any key']`, the twin `$twin.…` (always undefined here),
//!   application properties as bare identifiers, and `{$name}` as an escaped
//!   form of `$name`;
//! * operators, loosest first: `??`; `OR`; `AND`; `NOT`; `=` `<>` `!=`;
//!   `<` `<=` `>` `>=`; `+` `-` `||`; `*` `/` `%`; unary `-`;
//! * the built-in [`Function`]s; comments `/* … */`.
//!
//! Evaluation is three-valued: anything missing or mistyped is
//! [`Value::Undefined`], and a route's condition passes only when it
//! evaluates to boolean `true`.
//!
//! ```
//! use edge_routes::{parse_route, MessageView, Sink};
//! use std::borrow::Cow;
//!
//! struct Leaf;
//! impl MessageView for Leaf {
//!     fn system_property(&self, name: &str) -> Option<Cow<'_, str>> {
//!         name.eq_ignore_ascii_case("connectionDeviceId").then_some(Cow::Borrowed("sensor"))
//!     }
//!     fn application_property(&self, _name: &str) -> Option<Cow<'_, str>> { None }
//!     fn body(&self) -> Option<&serde_json::Value> { None }
//! }
//!
//! let route = parse_route(
//!     r#"FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId)
//!        INTO BrokeredEndpoint("/modules/turbofanRouter/inputs/deviceInput")"#,
//! ).unwrap();
//! assert!(route.matches("/messages/events", &Leaf));
//! assert_eq!(
//!     route.sink,
//!     Sink::Module { module: "turbofanRouter".into(), input: "deviceInput".into() },
//! );
//! ```

#![warn(missing_docs)]

mod ast;
mod error;
mod eval;
mod lexer;
mod parser;

use std::fmt;
use std::str::FromStr;

pub use ast::{BinaryOp, Expr, Function, PathSegment};
pub use error::ParseError;
pub use eval::{evaluate, MessageView, Value};

/// Commonly used system property names (written after `$` in a condition).
/// Any `$name` parses; these are the ones a [`MessageView`] should be ready
/// to answer, matching names case-insensitively.
pub const SYSTEM_PROPERTIES: [&str; 16] = [
    "messageId",
    "correlationId",
    "userId",
    "to",
    "ack",
    "contentType",
    "contentEncoding",
    "connectionDeviceId",
    "connectionModuleId",
    "connectionDeviceGenerationId",
    "connectionAuthMethod",
    "enqueuedTime",
    "iothub-enqueuedtime",
    "iothub-connection-device-id",
    "iothub-connection-module-id",
    "componentName",
];

/// A parsed route statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Source path pattern, as written (e.g. `/messages/modules/m/outputs/*`).
    pub source: String,
    /// The `WHERE` condition, if any.
    pub condition: Option<Expr>,
    /// Where matching messages go.
    pub sink: Sink,
}

/// The destination of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// `$upstream`: to IoT Hub.
    Upstream,
    /// `BrokeredEndpoint("/modules/{module}/inputs/{input}")`: to a module input.
    Module {
        /// Target module name.
        module: String,
        /// Target input name.
        input: String,
    },
}

impl Route {
    /// True when `message_source` matches this route's source pattern (see
    /// [`source_matches`]) and the condition, if any, evaluates to `true`.
    pub fn matches(&self, message_source: &str, msg: &dyn MessageView) -> bool {
        source_matches(&self.source, message_source)
            && self
                .condition
                .as_ref()
                .is_none_or(|condition| evaluate(condition, msg).is_true())
    }
}

/// Parses a route statement: `[SELECT *] FROM <source> [WHERE <condition>] INTO <sink>`.
pub fn parse_route(text: &str) -> Result<Route, ParseError> {
    parser::Parser::new(text).parse_route()
}

/// Parses a condition on its own (the part after `WHERE`).
pub fn parse_condition(text: &str) -> Result<Expr, ParseError> {
    parser::Parser::new(text).parse_condition()
}

/// Whether a route source `pattern` covers a message source.
///
/// One trailing `*` is removed from the pattern; what is left must be an
/// ASCII case-insensitive prefix of `message_source`. So `/*` matches
/// everything, and `/messages/modules/m/outputs/*` matches every output of
/// module `m`. Message sources look like `/messages/events` (device
/// telemetry) or `/messages/modules/{m}/outputs/{o}`.
pub fn source_matches(pattern: &str, message_source: &str) -> bool {
    let prefix = pattern.strip_suffix('*').unwrap_or(pattern).as_bytes();
    message_source
        .as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

impl FromStr for Route {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_route(text)
    }
}

impl FromStr for Expr {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_condition(text)
    }
}

impl fmt::Display for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sink::Upstream => f.write_str("$upstream"),
            Sink::Module { module, input } => {
                f.write_str("BrokeredEndpoint(")?;
                ast::write_quoted(&format!("/modules/{module}/inputs/{input}"), '"', f)?;
                f.write_str(")")
            }
        }
    }
}

/// Canonical form: `FROM <source> [WHERE <condition>] INTO <sink>`.
impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FROM {}", self.source)?;
        if let Some(condition) = &self.condition {
            write!(f, " WHERE {condition}")?;
        }
        write!(f, " INTO {}", self.sink)
    }
}
