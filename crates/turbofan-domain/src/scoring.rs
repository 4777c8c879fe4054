//! The scoring contract of the tutorial's Azure ML service, which the classifier keeps:
//! the request is one JSON object or an array of objects; the features are `Sensor1`..`Sensor21`
//! in that order; the response is a JSON array echoing every input object with
//! `"PredictedRul": <number>` added.
//!
//! Requests are parsed once into feature rows; the response is written by splicing the
//! prediction into each object's original text, so every input field is echoed as sent.

use crate::numeric::{self, NumericError};
use crate::{FEATURES, PREDICTED_RUL};
use serde_json::value::RawValue;

/// Number of features per row.
pub const N_FEATURES: usize = FEATURES.len();

/// Why a request cannot be scored; its `Display` is the `ClassifierError` property.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScoringError {
    /// The body is larger than allowed.
    #[error("body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Body size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// The body is not an object/array of numbers.
    #[error(transparent)]
    Body(#[from] NumericError),
    /// A feature is absent.
    #[error("row {row}: feature '{feature}' is missing")]
    MissingFeature {
        /// Row index in the request.
        row: usize,
        /// Feature name.
        feature: &'static str,
    },
}

/// A parsed request: the original text of each row and its features.
#[derive(Debug)]
pub struct Request<'a> {
    rows: Vec<&'a str>,
    /// Row-major features, `rows × N_FEATURES`.
    pub features: Vec<f32>,
    /// Each row's `CycleTime`, if it has one.
    pub cycles: Vec<Option<f64>>,
}

/// Field names the history model adds to each answered object.
pub const PREDICTED_RUL_LOW: &str = "PredictedRulLow";
/// See [`PREDICTED_RUL_LOW`].
pub const PREDICTED_RUL_HIGH: &str = "PredictedRulHigh";
/// See [`PREDICTED_RUL_LOW`].
pub const HISTORY_CYCLES: &str = "HistoryCycles";
/// See [`PREDICTED_RUL_LOW`]: cycles between the history's first and latest that never
/// reached it (lost rows, or a crash of the classifier).
pub const MISSING_CYCLES: &str = "MissingCycles";
/// The telemetry field naming the engine cycle.
pub const CYCLE_TIME: &str = "CycleTime";

/// What is added to one answered object: the tutorial's `PredictedRul`, and with the history
/// model its interval and the cycles of history behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowAnswer {
    /// `PredictedRul`.
    pub rul: f32,
    /// `PredictedRulLow` and `PredictedRulHigh`.
    pub interval: Option<(f32, f32)>,
    /// `HistoryCycles`.
    pub history_cycles: Option<u32>,
    /// `MissingCycles`.
    pub missing_cycles: Option<u32>,
}

impl RowAnswer {
    /// The per-row model's answer: `PredictedRul` only, as the tutorial's service gives.
    pub fn rul(rul: f32) -> RowAnswer {
        RowAnswer {
            rul,
            interval: None,
            history_cycles: None,
            missing_cycles: None,
        }
    }
}

fn push_f32(out: &mut Vec<u8>, v: f32) {
    if serde_json::to_writer(&mut *out, &v).is_err() {
        out.extend_from_slice(b"null");
    }
}

fn features_of(
    o: &numeric::NumericObject<'_>,
    row: usize,
    out: &mut Vec<f32>,
    cycles: &mut Vec<Option<f64>>,
) -> Result<(), ScoringError> {
    let mut slots = [f32::NAN; N_FEATURES];
    let mut seen = 0u32;
    cycles.push(o.get(CYCLE_TIME));
    for (k, v) in &o.fields {
        if let Some(n) = k
            .strip_prefix("Sensor")
            .and_then(|d| d.parse::<usize>().ok())
        {
            if (1..=N_FEATURES).contains(&n) && FEATURES[n - 1] == k.as_ref() {
                slots[n - 1] = *v as f32;
                seen |= 1 << (n - 1);
            }
        }
    }
    if seen != (1 << N_FEATURES) - 1 {
        let missing = (0..N_FEATURES).find(|i| seen & (1 << i) == 0).unwrap_or(0);
        return Err(ScoringError::MissingFeature {
            row,
            feature: FEATURES[missing],
        });
    }
    out.extend_from_slice(&slots);
    Ok(())
}

impl<'a> Request<'a> {
    /// Parses a request body, refusing bodies over `limit` bytes.
    pub fn parse(body: &'a [u8], limit: usize) -> Result<Request<'a>, ScoringError> {
        if body.len() > limit {
            return Err(ScoringError::TooLarge {
                size: body.len(),
                limit,
            });
        }
        let text = std::str::from_utf8(body)
            .map_err(|e| ScoringError::Body(NumericError::NotJson(format!("not UTF-8: {e}"))))?
            .trim();
        let rows: Vec<&'a str> = if text.starts_with('[') {
            let raw: Vec<&'a RawValue> = serde_json::from_str(text)
                .map_err(|e| ScoringError::Body(NumericError::NotJson(e.to_string())))?;
            if raw.is_empty() {
                return Err(NumericError::Empty.into());
            }
            raw.into_iter().map(RawValue::get).collect()
        } else {
            vec![text]
        };
        let mut features = Vec::with_capacity(rows.len() * N_FEATURES);
        let mut cycles = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let o = numeric::parse_object(row.as_bytes())?;
            features_of(&o, i, &mut features, &mut cycles)?;
        }
        Ok(Request {
            rows,
            features,
            cycles,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows (never true for a parsed request).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes the response: `[{…row 0…, "PredictedRul": p0}, …]`.
    pub fn write_response(&self, predictions: &[f32], out: &mut Vec<u8>) {
        let answers: Vec<RowAnswer> = predictions.iter().map(|p| RowAnswer::rul(*p)).collect();
        self.write_answers(&answers, out);
    }

    /// Writes the response with each row's answer: `PredictedRul`, then, when given,
    /// `PredictedRulLow`, `PredictedRulHigh` and `HistoryCycles`.
    pub fn write_answers(&self, answers: &[RowAnswer], out: &mut Vec<u8>) {
        out.reserve(self.rows.iter().map(|r| r.len() + 96).sum::<usize>() + 2);
        out.push(b'[');
        for (i, (row, a)) in self.rows.iter().zip(answers).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // A row is an object with at least the 21 features, so it ends with '}' and
            // has a field before it.
            let open = row.trim_end().strip_suffix('}').unwrap_or(row);
            out.extend_from_slice(open.as_bytes());
            out.extend_from_slice(b",\"");
            out.extend_from_slice(PREDICTED_RUL.as_bytes());
            out.extend_from_slice(b"\":");
            push_f32(out, a.rul);
            if let Some((low, high)) = a.interval {
                for (name, v) in [(PREDICTED_RUL_LOW, low), (PREDICTED_RUL_HIGH, high)] {
                    out.extend_from_slice(b",\"");
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(b"\":");
                    push_f32(out, v);
                }
            }
            for (name, n) in [
                (HISTORY_CYCLES, a.history_cycles),
                (MISSING_CYCLES, a.missing_cycles),
            ] {
                if let Some(n) = n {
                    out.extend_from_slice(b",\"");
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(b"\":");
                    out.extend_from_slice(n.to_string().as_bytes());
                }
            }
            out.push(b'}');
        }
        out.push(b']');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn row(cycle: u32) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("CycleTime".into(), json!(cycle));
        m.insert("OperationalSetting1".into(), json!(-0.0007));
        for (i, f) in FEATURES.iter().enumerate() {
            m.insert((*f).into(), json!(500.0 + i as f64 + 0.25));
        }
        Value::Object(m)
    }

    #[test]
    fn one_object_gives_an_array_echoing_it_with_the_prediction() {
        let body = row(42).to_string();
        let r = Request::parse(body.as_bytes(), 1 << 20).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r.features.len(), 21);
        assert_eq!(r.features[0], 500.25);
        assert_eq!(r.features[20], 520.25);
        let mut out = Vec::new();
        r.write_response(&[112.5], &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        let mut want = row(42);
        want["PredictedRul"] = json!(112.5);
        assert_eq!(v, json!([want]));
    }

    #[test]
    fn arrays_keep_order_and_every_field() {
        let body = json!([row(1), {"extra": "kept", "Sensor1": 1, "Sensor2": 2, "Sensor3": 3, "Sensor4": 4, "Sensor5": 5,
            "Sensor6": 6, "Sensor7": 7, "Sensor8": 8, "Sensor9": 9, "Sensor10": 10, "Sensor11": 11, "Sensor12": 12,
            "Sensor13": 13, "Sensor14": 14, "Sensor15": 15, "Sensor16": 16, "Sensor17": 17, "Sensor18": 18,
            "Sensor19": 19, "Sensor20": 20, "Sensor21": 21}])
        .to_string();
        // Every field of a row must be a number, not only the features.
        let err = Request::parse(body.as_bytes(), 1 << 20).unwrap_err();
        assert_eq!(err.to_string(), "field 'extra' is a string, not a number");
        let body = format!("[ {} , {} ]", row(1), row(2));
        let r = Request::parse(body.as_bytes(), 1 << 20).unwrap();
        let mut out = Vec::new();
        r.write_response(&[10.0, 20.25], &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[0]["CycleTime"], json!(1));
        assert_eq!(v[1]["CycleTime"], json!(2));
        assert_eq!(v[1]["PredictedRul"], json!(20.25));
        assert_eq!(v[1].as_object().unwrap().len(), 24);
        assert_eq!(r.cycles, vec![Some(1.0), Some(2.0)]);
    }

    #[test]
    fn history_answers_add_the_interval_and_the_cycles_behind_it() {
        let body = row(42).to_string();
        let r = Request::parse(body.as_bytes(), 1 << 20).unwrap();
        let mut out = Vec::new();
        let a = RowAnswer {
            rul: 80.5,
            interval: Some((61.25, 99.0)),
            history_cycles: Some(30),
            missing_cycles: Some(2),
        };
        r.write_answers(&[a], &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        let mut want = row(42);
        want["PredictedRul"] = json!(80.5);
        want["PredictedRulLow"] = json!(61.25);
        want["PredictedRulHigh"] = json!(99.0);
        want["HistoryCycles"] = json!(30);
        want["MissingCycles"] = json!(2);
        assert_eq!(v, json!([want]));
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let limit = 1 << 20;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"nope".to_vec(), "body is not valid JSON"),
            (b"42".to_vec(), "found a number"),
            (b"[]".to_vec(), "empty array"),
            (b"[1]".to_vec(), "found a number"),
            (
                br#"{"Sensor1": 1}"#.to_vec(),
                "row 0: feature 'Sensor2' is missing",
            ),
            (
                row(1).to_string().replace("500.25", "null").into_bytes(),
                "field 'Sensor1' is null, not a number",
            ),
            (
                row(1).to_string().replace("500.25", "NaN").into_bytes(),
                "body is not valid JSON",
            ),
            (
                row(1)
                    .to_string()
                    .replace("500.25", "Infinity")
                    .into_bytes(),
                "body is not valid JSON",
            ),
            (vec![b' '; limit + 1], "exceeds the limit"),
            (vec![0xff, 0xfe], "not UTF-8"),
        ];
        for (body, want) in cases {
            let e = Request::parse(&body, limit).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }

    #[test]
    fn sensor_names_must_be_exact() {
        let body = row(1).to_string().replace("\"Sensor7\"", "\"Sensor07\"");
        let e = Request::parse(body.as_bytes(), 1 << 20).unwrap_err();
        assert_eq!(
            e,
            ScoringError::MissingFeature {
                row: 0,
                feature: "Sensor7"
            }
        );
    }
}
