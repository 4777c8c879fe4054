//! Scoring a batch of input messages with one model run: each message's body is replaced by
//! the AML contract's answer, or kept unchanged with a `ClassifierError` property naming the
//! problem (so the router dead-letters it with the reason). An answer too large for MQTT
//! goes without its body ([`unsendable_answer`]); only a message whose answer cannot be sent
//! even so (its properties alone over MQTT's limits) is dropped, with an error.

use bytes::Bytes;
use edge_client::Message;
use rul_model::ModelError;
use turbofan_domain::ports::properties::CLASSIFIER_ERROR;
use turbofan_domain::router::ANSWER_TOO_LARGE;
use turbofan_domain::scoring::Request;

/// Scores `messages` in place with one call of `predict` over all their rows.
/// Returns how many messages were scored (the rest carry `ClassifierError`).
pub fn score_batch(
    messages: &mut [Message],
    max_body: usize,
    mut predict: impl FnMut(&[f32]) -> Result<Vec<f32>, ModelError>,
) -> usize {
    let mut features = Vec::with_capacity(messages.len() * rul_model::N_FEATURES);
    let mut answers: Vec<Result<Bytes, String>> = Vec::with_capacity(messages.len());
    {
        let requests: Vec<Result<Request<'_>, String>> = messages
            .iter()
            .map(|m| Request::parse(&m.body, max_body).map_err(|e| e.to_string()))
            .collect();
        for r in requests.iter().flatten() {
            features.extend_from_slice(&r.features);
        }
        let predictions = if features.is_empty() {
            Ok(Vec::new())
        } else {
            predict(&features)
        };
        let mut offset = 0;
        for r in &requests {
            answers.push(match (r, &predictions) {
                (Err(e), _) => Err(e.clone()),
                (Ok(_), Err(e)) => Err(e.to_string()),
                (Ok(req), Ok(p)) => {
                    let mut out = Vec::new();
                    req.write_response(&p[offset..offset + req.len()], &mut out);
                    offset += req.len();
                    Ok(out.into())
                }
            });
        }
    }
    apply_answers(messages, answers)
}

/// Puts each answer into its message (the body, as JSON) or, for an error, the
/// `ClassifierError` property; returns how many were answered.
pub fn apply_answers(messages: &mut [Message], answers: Vec<Result<Bytes, String>>) -> usize {
    let mut scored = 0;
    for (m, answer) in messages.iter_mut().zip(answers) {
        match answer {
            Ok(body) => {
                m.body = body;
                m.content_type = Some("application/json".into());
                m.content_encoding = Some("utf-8".into());
                scored += 1;
            }
            Err(e) => m.set_property(CLASSIFIER_ERROR, e),
        }
    }
    scored
}

/// The answer `m`, which MQTT cannot carry (`why`: its size against the limit), made
/// sendable: its body dropped, and `ClassifierError` saying so (the router dead-letters it
/// with the reason), after any error it had already.
pub fn unsendable_answer(mut m: Message, why: &str) -> Message {
    let dropped = std::mem::take(&mut m.body).len();
    let error = match m.property(CLASSIFIER_ERROR) {
        Some(first) => format!("{first}; "),
        None => String::new(),
    };
    m.set_property(
        CLASSIFIER_ERROR,
        format!("{error}{ANSWER_TOO_LARGE} ({why}): its body of {dropped} bytes was dropped"),
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn telemetry(scale: f64) -> String {
        let mut m = serde_json::Map::new();
        m.insert("CycleTime".into(), json!(7));
        for i in 1..=21 {
            m.insert(format!("Sensor{i}"), json!(i as f64 * scale));
        }
        Value::Object(m).to_string()
    }

    /// A stand-in model for batching logic only: RUL = Sensor1 (the real model is tested
    /// against its reference predictions in rul-model and in the module test).
    fn first_feature(features: &[f32]) -> Result<Vec<f32>, ModelError> {
        Ok(features.chunks(21).map(|r| r[0]).collect())
    }

    #[test]
    fn one_run_scores_every_good_message_and_marks_the_bad_ones() {
        let mut msgs = vec![
            Message::json(telemetry(1.0)),
            Message::json("not json"),
            Message::json(format!("[{},{}]", telemetry(2.0), telemetry(3.0))),
            Message::json(r#"{"Sensor1": 1}"#),
        ];
        msgs[0].correlation_id = Some("c0".into());
        msgs[0].set_property("CorrelationId", "c0");
        let mut calls = 0;
        let scored = score_batch(&mut msgs, 1 << 20, |f| {
            calls += 1;
            assert_eq!(f.len(), 3 * 21, "rows of all good messages in one run");
            first_feature(f)
        });
        assert_eq!((scored, calls), (2, 1));
        let v0: Value = serde_json::from_slice(&msgs[0].body).unwrap();
        assert_eq!(v0[0]["PredictedRul"], json!(1.0));
        assert_eq!(msgs[0].property("CorrelationId"), Some("c0"));
        assert_eq!(msgs[0].correlation_id.as_deref(), Some("c0"));
        assert_eq!(
            msgs[1].body,
            Bytes::from_static(b"not json"),
            "bad body kept unchanged"
        );
        assert!(msgs[1]
            .property(CLASSIFIER_ERROR)
            .unwrap()
            .contains("not valid JSON"));
        let v2: Value = serde_json::from_slice(&msgs[2].body).unwrap();
        assert_eq!(v2[0]["PredictedRul"], json!(2.0));
        assert_eq!(v2[1]["PredictedRul"], json!(3.0));
        assert_eq!(
            msgs[3].property(CLASSIFIER_ERROR),
            Some("row 0: feature 'Sensor2' is missing")
        );
    }

    #[test]
    fn a_failed_model_run_marks_every_message_instead_of_dropping_it() {
        let mut msgs = vec![Message::json(telemetry(1.0))];
        let scored = score_batch(&mut msgs, 1 << 20, |_| Err(ModelError::Run("boom".into())));
        assert_eq!(scored, 0);
        assert_eq!(
            msgs[0].property(CLASSIFIER_ERROR),
            Some("model run failed: boom")
        );
    }

    #[test]
    fn oversized_bodies_are_refused_without_parsing() {
        let mut msgs = vec![Message::json(telemetry(1.0))];
        score_batch(&mut msgs, 10, first_feature);
        assert!(msgs[0]
            .property(CLASSIFIER_ERROR)
            .unwrap()
            .contains("exceeds the limit of 10 bytes"));
    }

    #[test]
    fn an_answer_too_large_to_send_goes_without_its_body_and_says_why() {
        let mut m = Message::json(telemetry(1.0));
        m.correlation_id = Some("c-1".into());
        m.set_property("Origin", "test");
        let n = m.body.len();
        let a = unsendable_answer(m, "a publish of 530000 bytes is over the limit");
        assert!(a.body.is_empty());
        assert_eq!(
            a.property(CLASSIFIER_ERROR),
            Some(format!("the answer is too large to send (a publish of 530000 bytes is over the limit): its body of {n} bytes was dropped").as_str())
        );
        assert_eq!(a.property("Origin"), Some("test"));
        assert_eq!(a.correlation_id.as_deref(), Some("c-1"));

        let mut bad = Message::json("not json");
        bad.set_property(CLASSIFIER_ERROR, "row 0: not a number");
        let a = unsendable_answer(bad, "too big");
        assert_eq!(
            a.property(CLASSIFIER_ERROR),
            Some("row 0: not a number; the answer is too large to send (too big): its body of 8 bytes was dropped")
        );
    }
}
