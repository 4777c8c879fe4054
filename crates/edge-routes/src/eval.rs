//! Evaluation of a condition against one message.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::ast::{BinaryOp, Expr, Function, PathSegment};

/// What a condition can read from a message.
pub trait MessageView {
    /// System property by its query name without the leading `$`, e.g.
    /// "connectionDeviceId" (caller matches case-insensitively).
    /// Borrowed where the view holds the value, so evaluating a route allocates nothing.
    fn system_property(&self, name: &str) -> Option<Cow<'_, str>>;
    /// Application property by exact name.
    fn application_property(&self, name: &str) -> Option<Cow<'_, str>>;
    /// The body parsed as JSON, only when the message is JSON + utf-8; None otherwise.
    fn body(&self) -> Option<&serde_json::Value>;
}

/// The result of evaluating an expression.
///
/// Strings borrow from the expression or the message body where they can;
/// arrays and objects always borrow from the message body.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// Missing property, type mismatch, or the `undefined` literal.
    Undefined,
    /// JSON `null` or the `null` literal.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number (always finite: results that would not be are undefined).
    Number(f64),
    /// A string.
    String(Cow<'a, str>),
    /// A JSON array from the body.
    Array(&'a [serde_json::Value]),
    /// A JSON object from the body.
    Object(&'a serde_json::Map<String, serde_json::Value>),
}

impl<'a> Value<'a> {
    /// True only for `Bool(true)`: the test a route condition must pass.
    pub fn is_true(&self) -> bool {
        matches!(self, Value::Bool(true))
    }

    /// Views a JSON value from the message body.
    pub fn from_json(json: &'a serde_json::Value) -> Value<'a> {
        match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => n.as_f64().map_or(Value::Undefined, number),
            serde_json::Value::String(s) => Value::String(Cow::Borrowed(s)),
            serde_json::Value::Array(items) => Value::Array(items),
            serde_json::Value::Object(map) => Value::Object(map),
        }
    }
}

/// A number, or undefined when it is NaN or infinite.
fn number<'a>(n: f64) -> Value<'a> {
    if n.is_finite() {
        Value::Number(n)
    } else {
        Value::Undefined
    }
}

/// `Some(b)` for booleans, `None` for everything else (treated as unknown).
fn truth(value: &Value<'_>) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

/// Evaluates `expr` against `msg`. Never fails: anything that cannot be
/// computed (missing property, wrong type, division by zero) is
/// [`Value::Undefined`].
pub fn evaluate<'a>(expr: &'a Expr, msg: &'a dyn MessageView) -> Value<'a> {
    match expr {
        Expr::Undefined => Value::Undefined,
        Expr::Null => Value::Null,
        Expr::Bool(b) => Value::Bool(*b),
        Expr::Number(n) => number(*n),
        Expr::String(s) => Value::String(Cow::Borrowed(s)),
        Expr::SystemProperty(name) => msg
            .system_property(name)
            .map_or(Value::Undefined, Value::String),
        Expr::AppProperty(name) => msg
            .application_property(name)
            .map_or(Value::Undefined, Value::String),
        Expr::Body(path) => msg
            .body()
            .and_then(|body| walk(body, path))
            .map_or(Value::Undefined, Value::from_json),
        Expr::Twin(_) => Value::Undefined,
        Expr::Not(operand) => match evaluate(operand, msg) {
            Value::Bool(b) => Value::Bool(!b),
            _ => Value::Undefined,
        },
        Expr::Neg(operand) => match evaluate(operand, msg) {
            Value::Number(n) => Value::Number(-n),
            _ => Value::Undefined,
        },
        Expr::Binary { op, left, right } => binary(*op, left, right, msg),
        Expr::Call { func, args } => call(*func, args, msg),
    }
}

/// Follows `path` from `json`; `None` when a step is missing or mistyped.
fn walk<'a>(
    mut json: &'a serde_json::Value,
    path: &[PathSegment],
) -> Option<&'a serde_json::Value> {
    for segment in path {
        json = match segment {
            PathSegment::Key(key) => json.as_object()?.get(key.as_str())?,
            PathSegment::Index(i) => json.as_array()?.get(*i)?,
        };
    }
    Some(json)
}

fn binary<'a>(
    op: BinaryOp,
    left: &'a Expr,
    right: &'a Expr,
    msg: &'a dyn MessageView,
) -> Value<'a> {
    match op {
        BinaryOp::And => {
            let l = truth(&evaluate(left, msg));
            if l == Some(false) {
                return Value::Bool(false);
            }
            match (l, truth(&evaluate(right, msg))) {
                (_, Some(false)) => Value::Bool(false),
                (Some(true), Some(true)) => Value::Bool(true),
                _ => Value::Undefined,
            }
        }
        BinaryOp::Or => {
            let l = truth(&evaluate(left, msg));
            if l == Some(true) {
                return Value::Bool(true);
            }
            match (l, truth(&evaluate(right, msg))) {
                (_, Some(true)) => Value::Bool(true),
                (Some(false), Some(false)) => Value::Bool(false),
                _ => Value::Undefined,
            }
        }
        BinaryOp::Coalesce => match evaluate(left, msg) {
            Value::Undefined => evaluate(right, msg),
            value => value,
        },
        BinaryOp::Concat => match (evaluate(left, msg), evaluate(right, msg)) {
            (Value::String(a), Value::String(b)) => Value::String(Cow::Owned(a.into_owned() + &b)),
            _ => Value::Undefined,
        },
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => {
            let (Value::Number(a), Value::Number(b)) = (evaluate(left, msg), evaluate(right, msg))
            else {
                return Value::Undefined;
            };
            number(match op {
                BinaryOp::Add => a + b,
                BinaryOp::Sub => a - b,
                BinaryOp::Mul => a * b,
                BinaryOp::Div => a / b,
                _ => a % b,
            })
        }
        BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
            compare(op, &evaluate(left, msg), &evaluate(right, msg))
        }
    }
}

/// Comparison: numbers with numbers, strings with strings (ordinal, case
/// sensitive); booleans and nulls only for `=` / `<>`. Anything else,
/// including mixed types, is undefined.
fn compare<'a>(op: BinaryOp, left: &Value<'_>, right: &Value<'_>) -> Value<'a> {
    let equality_only = matches!(op, BinaryOp::Eq | BinaryOp::Ne);
    let ordering = match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.partial_cmp(b),
        (Value::String(a), Value::String(b)) => Some(a.as_ref().cmp(b.as_ref())),
        (Value::Bool(a), Value::Bool(b)) if equality_only => Some(a.cmp(b)),
        (Value::Null, Value::Null) if equality_only => Some(Ordering::Equal),
        _ => None,
    };
    let Some(ordering) = ordering else {
        return Value::Undefined;
    };
    Value::Bool(match op {
        BinaryOp::Eq => ordering == Ordering::Equal,
        BinaryOp::Ne => ordering != Ordering::Equal,
        BinaryOp::Lt => ordering == Ordering::Less,
        BinaryOp::Le => ordering != Ordering::Greater,
        BinaryOp::Gt => ordering == Ordering::Greater,
        _ => ordering != Ordering::Less,
    })
}

/// Applies `f` to a number argument; anything else is undefined.
fn math<'a>(value: Value<'_>, f: impl FnOnce(f64) -> f64) -> Value<'a> {
    match value {
        Value::Number(n) => number(f(n)),
        _ => Value::Undefined,
    }
}

/// Applies `f` to two string arguments; anything else is undefined.
fn strings2<'a>(a: Value<'_>, b: Value<'_>, f: impl FnOnce(&str, &str) -> Value<'a>) -> Value<'a> {
    match (a, b) {
        (Value::String(a), Value::String(b)) => f(&a, &b),
        _ => Value::Undefined,
    }
}

/// The part of `s` between two byte offsets, borrowing when `s` borrows.
fn slice_cow(s: Cow<'_, str>, from: usize, to: usize) -> Cow<'_, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(&b[from..to]),
        Cow::Owned(o) => Cow::Owned(o[from..to].to_string()),
    }
}

/// Byte offset of the character at `index` (or the end of `s`).
fn char_offset(s: &str, index: usize) -> usize {
    s.char_indices().nth(index).map_or(s.len(), |(i, _)| i)
}

/// Converts a number argument to a character count or index: truncated
/// toward zero, negatives become zero.
fn to_count(n: f64) -> usize {
    if n <= 0.0 {
        0
    } else {
        // `as` saturates for huge values.
        n.trunc() as usize
    }
}

fn call<'a>(func: Function, args: &'a [Expr], msg: &'a dyn MessageView) -> Value<'a> {
    let arg = |i: usize| evaluate(&args[i], msg);
    match func {
        Function::Abs => math(arg(0), f64::abs),
        Function::Exp => math(arg(0), f64::exp),
        Function::Power => match (arg(0), arg(1)) {
            (Value::Number(base), Value::Number(exponent)) => number(base.powf(exponent)),
            _ => Value::Undefined,
        },
        Function::Square => math(arg(0), |n| n * n),
        Function::Ceiling => math(arg(0), f64::ceil),
        Function::Floor => math(arg(0), f64::floor),
        Function::Sign => math(arg(0), |n| {
            if n > 0.0 {
                1.0
            } else if n < 0.0 {
                -1.0
            } else {
                0.0
            }
        }),
        Function::Sqrt => math(arg(0), f64::sqrt),
        Function::AsNumber => match arg(0) {
            Value::Number(n) => Value::Number(n),
            Value::String(s) => s.trim().parse::<f64>().map_or(Value::Undefined, number),
            _ => Value::Undefined,
        },
        Function::IsArray => Value::Bool(matches!(arg(0), Value::Array(_))),
        Function::IsBool => Value::Bool(matches!(arg(0), Value::Bool(_))),
        Function::IsDefined => Value::Bool(!matches!(arg(0), Value::Undefined)),
        Function::IsNull => Value::Bool(matches!(arg(0), Value::Null)),
        Function::IsNumber => Value::Bool(matches!(arg(0), Value::Number(_))),
        Function::IsObject => Value::Bool(matches!(arg(0), Value::Object(_))),
        Function::IsPrimitive => Value::Bool(matches!(
            arg(0),
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_)
        )),
        Function::IsString => Value::Bool(matches!(arg(0), Value::String(_))),
        Function::Concat => {
            let mut out = String::new();
            for a in args {
                match evaluate(a, msg) {
                    Value::String(s) => out.push_str(&s),
                    _ => return Value::Undefined,
                }
            }
            Value::String(Cow::Owned(out))
        }
        Function::Length => match arg(0) {
            Value::String(s) => Value::Number(s.chars().count() as f64),
            _ => Value::Undefined,
        },
        Function::Lower => match arg(0) {
            Value::String(s) => Value::String(Cow::Owned(s.to_lowercase())),
            _ => Value::Undefined,
        },
        Function::Upper => match arg(0) {
            Value::String(s) => Value::String(Cow::Owned(s.to_uppercase())),
            _ => Value::Undefined,
        },
        Function::Substring => {
            let (Value::String(s), Value::Number(start)) = (arg(0), arg(1)) else {
                return Value::Undefined;
            };
            let length = match args.get(2).map(|e| evaluate(e, msg)) {
                None => usize::MAX,
                Some(Value::Number(n)) => to_count(n),
                Some(_) => return Value::Undefined,
            };
            let from = char_offset(&s, to_count(start));
            let to = from + char_offset(&s[from..], length);
            Value::String(slice_cow(s, from, to))
        }
        Function::IndexOf => strings2(arg(0), arg(1), |s, fragment| {
            Value::Number(
                s.find(fragment)
                    .map_or(-1.0, |byte| s[..byte].chars().count() as f64),
            )
        }),
        Function::StartsWith => strings2(arg(0), arg(1), |s, p| Value::Bool(s.starts_with(p))),
        Function::EndsWith => strings2(arg(0), arg(1), |s, p| Value::Bool(s.ends_with(p))),
        Function::Contains => strings2(arg(0), arg(1), |s, p| Value::Bool(s.contains(p))),
    }
}
