//! Flat JSON objects of numbers (`{"CycleTime": 42, "Sensor1": 518.67, …}`), parsed in one
//! pass with keys borrowed from the input where they contain no escapes.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Why a body is not a usable object of numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumericError {
    /// Not valid JSON (also NaN/Infinity literals, numbers out of range).
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// Valid JSON of the wrong shape.
    #[error("body must be a JSON object of numbers (or an array of them), found {0}")]
    WrongShape(&'static str),
    /// An empty array.
    #[error("body is an empty array")]
    Empty,
    /// A field whose value is not a number.
    #[error("field '{field}' is {found}, not a number")]
    NotANumber {
        /// Field name.
        field: String,
        /// What it is instead.
        found: &'static str,
    },
}

/// One JSON object whose values are all numbers, in document order.
#[derive(Debug, Clone, PartialEq)]
pub struct NumericObject<'a> {
    /// `(key, value)` pairs in document order.
    pub fields: Vec<(Cow<'a, str>, f64)>,
}

impl<'a> NumericObject<'a> {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// Whether `key` is present.
    pub fn has(&self, key: &str) -> bool {
        self.fields.iter().any(|(k, _)| k == key)
    }
}

struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A value: a number, or the name of what it is instead.
enum Num {
    Value(f64),
    Other(&'static str),
}

impl<'de> de::Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(if v.is_finite() {
                    Num::Value(v)
                } else {
                    Num::Other("not finite")
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num::Value(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num::Value(v as f64))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Num, E> {
                Ok(Num::Other("a string"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Num, E> {
                Ok(Num::Other("a boolean"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Num, E> {
                Ok(Num::Other("null"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Num, A::Error> {
                while a.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Num::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Num, A::Error> {
                while a.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                Ok(Num::Other("an object"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parsed object, or the first non-number found (reported after the whole object parsed,
/// so a syntax error later in the body wins).
struct Parsed<'a>(Result<NumericObject<'a>, NumericError>);

impl<'de> de::Deserialize<'de> for Parsed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Parsed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(a.size_hint().unwrap_or(26));
                let mut bad = None;
                while let Some(Key(k)) = a.next_key::<Key<'de>>()? {
                    match a.next_value::<Num>()? {
                        Num::Value(v) => fields.push((k, v)),
                        Num::Other(found) => {
                            if bad.is_none() {
                                bad = Some(NumericError::NotANumber {
                                    field: k.into_owned(),
                                    found,
                                });
                            }
                        }
                    }
                }
                Ok(Parsed(match bad {
                    Some(e) => Err(e),
                    None => Ok(NumericObject { fields }),
                }))
            }
        }
        d.deserialize_map(V)
    }
}

fn shape_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn not_json(body: &[u8], e: serde_json::Error) -> NumericError {
    // Tell a wrong shape from broken JSON: re-parse generically (error path only).
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => NumericError::WrongShape(shape_of(&v)),
        Err(_) => NumericError::NotJson(e.to_string()),
    }
}

/// Parses one object of numbers.
pub fn parse_object(body: &[u8]) -> Result<NumericObject<'_>, NumericError> {
    match serde_json::from_slice::<Parsed>(body) {
        Ok(Parsed(r)) => r,
        Err(e) => Err(not_json(body, e)),
    }
}

/// Parses one object or an array of objects (each of numbers).
pub fn parse_objects(body: &[u8]) -> Result<Vec<NumericObject<'_>>, NumericError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let items: Vec<Parsed> = serde_json::from_slice(body).map_err(|e| not_json(body, e))?;
        if items.is_empty() {
            return Err(NumericError::Empty);
        }
        items.into_iter().map(|p| p.0).collect()
    } else {
        parse_object(body).map(|o| vec![o])
    }
}

/// Like [`parse_objects`], also returning each object's own text (for copying it verbatim).
pub fn parse_rows(body: &[u8]) -> Result<Vec<(&str, NumericObject<'_>)>, NumericError> {
    let text =
        std::str::from_utf8(body).map_err(|e| NumericError::NotJson(format!("not UTF-8: {e}")))?;
    let trimmed = text.trim();
    // Fast path for the usual `[ {…} ]`: parse the one object directly (a single scan). If
    // the inside holds several objects the parse fails and the general path splits them.
    if let Some(inner) = trimmed
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .map(str::trim)
    {
        if inner.starts_with('{') {
            if let Ok(o) = parse_object(inner.as_bytes()) {
                return Ok(vec![(inner, o)]);
            }
        }
    }
    let rows: Vec<&str> = if trimmed.starts_with('[') {
        let raw: Vec<&serde_json::value::RawValue> =
            serde_json::from_str(trimmed).map_err(|e| NumericError::NotJson(e.to_string()))?;
        if raw.is_empty() {
            return Err(NumericError::Empty);
        }
        raw.into_iter().map(|r| r.get()).collect()
    } else {
        vec![trimmed]
    };
    rows.into_iter()
        .map(|r| parse_object(r.as_bytes()).map(|o| (r, o)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_objects_borrowing_keys() {
        let o = parse_object(
            br#"{"CycleTime": 42, "Sensor1": 518.67, "DeviceId": -1, "caf\u00e9": 1e3}"#,
        )
        .unwrap();
        assert_eq!(o.get("CycleTime"), Some(42.0));
        assert_eq!(o.get("Sensor1"), Some(518.67));
        assert_eq!(o.get("DeviceId"), Some(-1.0));
        assert!(matches!(o.fields[0].0, Cow::Borrowed(_)));
        assert_eq!(o.fields[3], (Cow::Owned("café".to_owned()), 1000.0));
    }

    #[test]
    fn names_what_is_wrong() {
        assert!(matches!(
            parse_object(b"not json"),
            Err(NumericError::NotJson(_))
        ));
        assert!(matches!(
            parse_object(br#"{"a": NaN}"#),
            Err(NumericError::NotJson(_))
        ));
        assert!(matches!(
            parse_object(br#"{"a": 1e999}"#),
            Err(NumericError::NotJson(_))
        ));
        assert_eq!(
            parse_object(b"[1]"),
            Err(NumericError::WrongShape("an array"))
        );
        assert_eq!(
            parse_object(br#""x""#),
            Err(NumericError::WrongShape("a string"))
        );
        assert_eq!(
            parse_object(br#"{"a": 1, "Sensor2": "642.1", "b": null}"#),
            Err(NumericError::NotANumber {
                field: "Sensor2".into(),
                found: "a string"
            })
        );
        assert_eq!(
            parse_object(br#"{"a": {"b": 1}}"#),
            Err(NumericError::NotANumber {
                field: "a".into(),
                found: "an object"
            })
        );
        assert_eq!(parse_objects(b" []"), Err(NumericError::Empty));
        assert_eq!(
            parse_objects(b"[1, 2]"),
            Err(NumericError::WrongShape("an array"))
        );
    }

    #[test]
    fn rows_come_with_their_own_text() {
        let v = parse_rows(br#" [ {"a": 1} , {"a": 2, "b": 3.50} ] "#).unwrap();
        assert_eq!(v[0].0, r#"{"a": 1}"#);
        assert_eq!(v[1].0, r#"{"a": 2, "b": 3.50}"#);
        assert_eq!(v[1].1.get("b"), Some(3.5));
        assert_eq!(parse_rows(br#"{"a": 1}"#).unwrap()[0].0, r#"{"a": 1}"#);
        assert_eq!(parse_rows(b"[]"), Err(NumericError::Empty));
        assert_eq!(
            parse_rows(b"[true]"),
            Err(NumericError::WrongShape("a boolean"))
        );
    }

    #[test]
    fn arrays_of_objects_are_accepted() {
        let v = parse_objects(br#" [{"a": 1}, {"a": 2, "b": 3}]"#).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].get("b"), Some(3.0));
        let single = parse_objects(br#"{"a": 1}"#).unwrap();
        assert_eq!(single.len(), 1);
    }
}
