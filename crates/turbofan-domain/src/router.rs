//! What `turbofanRouter` does, as pure functions from an input message to output messages.
//!
//! - `deviceInput`: telemetry from a leaf device goes to `classOutput` unchanged, with the
//!   tutorial's properties (`CorrelationId`, `ConnectionDeviceId`, `CreationTimeUtc`,
//!   `EnqueuedTimeUtc`) set from what edgeHub stamped; whatever the device wrote under those
//!   names, or under any other name the pipeline sets, is removed.
//! - `rulInput`: a classified message goes to `hubOutput` (the short RUL message operators
//!   read; only below `RulThreshold` when set) and to `avroOutput` (the full record).
//! - Anything else goes to `deadMessages`, body unchanged, with `DeadLetter=true` and
//!   `DeadLetterReason`.

use crate::numeric;
use crate::ports::properties::{
    CLASSIFIER_ERROR, CONNECTION_DEVICE_ID, CORRELATION_ID, CREATION_TIME, DEAD_LETTER,
    DEAD_LETTER_REASON, ENQUEUED_TIME, MAX_LEAF_PROPERTY_BAG, MODEL_NAME, SET_BY_PIPELINE,
};
use crate::ports::router::{AVRO_OUTPUT, CLASS_OUTPUT, DEAD_OUTPUT, HUB_OUTPUT};
use crate::record;
use crate::scoring::{HISTORY_CYCLES, MISSING_CYCLES, PREDICTED_RUL_HIGH, PREDICTED_RUL_LOW};
use crate::PREDICTED_RUL;
use bytes::Bytes;
use edge_protocol::{CompactString, Message};

/// How a `ClassifierError` starts when the message was scored but its answer was too large
/// to send (and went without its body).
pub const ANSWER_TOO_LARGE: &str = "the answer is too large to send";

/// Messages to send for one input, each with its output name.
pub type Outgoing = Vec<(&'static str, Message)>;

/// The dead letter of `m`: body and properties unchanged, plus `DeadLetter=true` and the
/// reason.
pub fn dead_letter(mut m: Message, reason: impl Into<CompactString>) -> Message {
    m.set_property(DEAD_LETTER, "true");
    m.set_property(DEAD_LETTER_REASON, reason);
    clear_hub_stamps(&mut m);
    m
}

/// The dead letter of `m`, which MQTT could not carry to `output` (`why`: its size against
/// the limit): properties kept, body dropped (what made it too large; the reason gives its
/// size). A message that was a dead letter already keeps its first reason, before this one.
pub fn unsendable(mut m: Message, output: &str, why: &str) -> Message {
    let dropped = std::mem::take(&mut m.body).len();
    let reason = match m.property(DEAD_LETTER_REASON) {
        Some(first) => format!(
            "{first}; the dead letter could not be sent either ({why}): its body of {dropped} bytes was dropped"
        ),
        None => format!(
            "too large to send to {output} ({why}): its body of {dropped} bytes was dropped"
        ),
    };
    dead_letter(m, reason)
}

fn clear_hub_stamps(m: &mut Message) {
    m.connection_device_id = None;
    m.connection_module_id = None;
    m.enqueued_time = None;
    m.input_name = None;
    m.output_name = None;
}

fn json_headers(m: &mut Message) {
    m.content_type = Some("application/json".into());
    m.content_encoding = Some("utf-8".into());
}

/// Checks content type and encoding when the sender set them (JSON, utf-8).
fn content_problem(m: &Message) -> Option<String> {
    if let Some(ct) = &m.content_type {
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Some(format!("content type '{ct}' is not application/json"));
        }
    }
    if let Some(ce) = &m.content_encoding {
        if !ce.trim().eq_ignore_ascii_case("utf-8") {
            return Some(format!("content encoding '{ce}' is not utf-8"));
        }
    }
    None
}

/// `deviceInput`: validates leaf telemetry and forwards it to the classifier.
///
/// Identity comes only from what edgeHub authenticated: every property the pipeline sets
/// ([`SET_BY_PIPELINE`]) is removed from the leaf's message first, then set from the
/// message's system properties: `ConnectionDeviceId` from the connection device id edgeHub
/// stamped (a message without one is dead-lettered), `CorrelationId` from the message's
/// correlation id (else `new_id`), `CreationTimeUtc` from its creation time (else the
/// enqueued time), `EnqueuedTimeUtc` from edgeHub's enqueued time (else `now_utc`).
pub fn device_input(
    mut m: Message,
    now_utc: impl FnOnce() -> String,
    new_id: impl FnOnce() -> String,
) -> Outgoing {
    for name in SET_BY_PIPELINE {
        while m.remove_property(name).is_some() {}
    }
    if let Some(bag) = oversized_bag(&m) {
        // Forwarded, it could grow past what MQTT carries on a later hop: its properties
        // are not forwarded, only said to be too large.
        m.properties.clear();
        m.message_id = None;
        m.correlation_id = None;
        m.user_id = None;
        m.to = None;
        m.content_type = None;
        m.content_encoding = None;
        m.expiry = None;
        m.creation_time = None;
        if let Some(d) = m.connection_device_id.clone() {
            m.set_property(CONNECTION_DEVICE_ID, d);
        }
        let reason = format!(
            "the device's properties take {bag} bytes as MQTT carries them, over the pipeline's limit of {MAX_LEAF_PROPERTY_BAG}: they were removed"
        );
        return vec![(DEAD_OUTPUT, dead_letter(m, reason))];
    }
    if let Some(d) = m.connection_device_id.clone() {
        // on the dead letter too: operators see which device sent a bad message
        m.set_property(CONNECTION_DEVICE_ID, d);
    }
    let problem = content_problem(&m).or_else(|| match numeric::parse_objects(&m.body) {
        Err(e) => Some(e.to_string()),
        Ok(objects) if objects.len() != 1 => Some(format!(
            "body must be one object (or a one-element array), found {} objects",
            objects.len()
        )),
        Ok(objects) if objects[0].has(PREDICTED_RUL) => {
            Some("already classified: the body has PredictedRul".into())
        }
        Ok(_) => None,
    });
    let problem = problem.or_else(|| {
        m.connection_device_id
            .is_none()
            .then(|| "no connection device id: edgeHub did not say which device sent it".into())
    });
    if let Some(reason) = problem {
        return vec![(DEAD_OUTPUT, dead_letter(m, reason))];
    }
    let cid = m.correlation_id.clone().unwrap_or_else(|| new_id().into());
    m.set_property(CORRELATION_ID, cid.clone());
    let enqueued = m.enqueued_time.clone().unwrap_or_else(|| now_utc().into());
    let created = m.creation_time.clone().unwrap_or_else(|| enqueued.clone());
    m.set_property(CREATION_TIME, created);
    m.set_property(ENQUEUED_TIME, enqueued);
    m.correlation_id = Some(cid);
    json_headers(&mut m);
    clear_hub_stamps(&mut m);
    vec![(CLASS_OUTPUT, m)]
}

/// The encoded size of `m`'s property bag if it is over [`MAX_LEAF_PROPERTY_BAG`].
fn oversized_bag(m: &Message) -> Option<usize> {
    // Encoding takes at most three bytes a byte: only a bag that could be over is encoded.
    let system = [
        &m.message_id,
        &m.correlation_id,
        &m.user_id,
        &m.to,
        &m.content_type,
        &m.content_encoding,
        &m.expiry,
        &m.creation_time,
    ];
    let raw: usize = m
        .properties
        .iter()
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum::<usize>()
        + system
            .iter()
            .map(|p| p.as_ref().map_or(0, |v| v.len() + 6))
            .sum::<usize>();
    if raw * 3 <= MAX_LEAF_PROPERTY_BAG {
        return None;
    }
    let bag =
        edge_protocol::properties::encode(m, edge_protocol::properties::Direction::ToHub).len();
    (bag > MAX_LEAF_PROPERTY_BAG).then_some(bag)
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_num(out: &mut Vec<u8>, v: f64) {
    // Values come from parsed JSON, so they are finite; ryu prints the shortest text that
    // reads back as the same f64.
    out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
}

/// What a classified object says, for the RUL message.
struct Scored<'a> {
    row: &'a str,
    rul: f64,
    cycle: f64,
    /// `PredictedRulLow`, `PredictedRulHigh`, `HistoryCycles`, `MissingCycles` (history
    /// mode).
    extra: [(&'static str, Option<f64>); 4],
}

/// Fields of the history model's answer that the RUL message carries on, when present.
const HISTORY_FIELDS: [&str; 4] = [
    PREDICTED_RUL_LOW,
    PREDICTED_RUL_HIGH,
    HISTORY_CYCLES,
    MISSING_CYCLES,
];

/// The short RUL message operators read in IoT Hub: the tutorial's four fields, then the
/// history model's interval and history length, and the model's name, when given.
fn hub_body(device: &str, cid: &str, s: &Scored<'_>, model: Option<&str>) -> Bytes {
    let mut b = Vec::with_capacity(192);
    b.extend_from_slice(b"{\"ConnectionDeviceId\":");
    push_str(&mut b, device);
    b.extend_from_slice(b",\"CorrelationId\":");
    push_str(&mut b, cid);
    b.extend_from_slice(b",\"PredictedRul\":");
    push_num(&mut b, s.rul);
    b.extend_from_slice(b",\"CycleTime\":");
    push_num(&mut b, s.cycle);
    for (name, v) in s.extra {
        if let Some(v) = v {
            b.extend_from_slice(b",\"");
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(b"\":");
            let count = name == HISTORY_CYCLES || name == MISSING_CYCLES;
            if count && v.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&v) {
                b.extend_from_slice((v as u32).to_string().as_bytes());
            } else {
                push_num(&mut b, v);
            }
        }
    }
    if let Some(m) = model {
        b.extend_from_slice(b",\"ModelName\":");
        push_str(&mut b, m);
    }
    b.push(b'}');
    b.into()
}

/// The full record for the Avro writer: the record's strings ([`record::STRING_FIELDS`]),
/// then [`record::BODY`], the classified row's own text (an object of numbers with
/// `PredictedRul`), copied verbatim.
fn avro_body(strings: [&str; record::STRING_LEN], row: &str) -> Bytes {
    let mut b = Vec::with_capacity(160 + row.len());
    let mut separator = b'{';
    // The names need no escaping (a test of `record` checks).
    for (name, value) in record::STRING_FIELDS.iter().zip(strings) {
        b.push(separator);
        separator = b',';
        b.push(b'"');
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(b"\":");
        push_str(&mut b, value);
    }
    b.extend_from_slice(b",\"");
    b.extend_from_slice(record::BODY.as_bytes());
    b.extend_from_slice(b"\":");
    b.extend_from_slice(row.as_bytes());
    b.push(b'}');
    b.into()
}

/// `rulInput`: a classified message becomes a RUL message for IoT Hub (when its prediction
/// is below `threshold`, if set) and an Avro record, per object of the classifier's array.
pub fn rul_input(m: Message, threshold: Option<f64>) -> Outgoing {
    if let Some(err) = m.property(CLASSIFIER_ERROR) {
        let reason = if err.starts_with(ANSWER_TOO_LARGE) {
            format!("the classifier scored it, but {err}")
        } else {
            format!("the classifier could not score it: {err}")
        };
        return vec![(DEAD_OUTPUT, dead_letter(m, reason))];
    }
    // The record's strings are these properties, set on `deviceInput`.
    if let Some(missing) = record::STRING_FIELDS
        .iter()
        .find(|p| m.property(p).is_none())
    {
        let reason =
            format!("property {missing} is missing: the message did not come through deviceInput");
        return vec![(DEAD_OUTPUT, dead_letter(m, reason))];
    }
    let objects = match numeric::parse_rows(&m.body) {
        Ok(o) => o,
        Err(e) => {
            let reason = e.to_string();
            return vec![(DEAD_OUTPUT, dead_letter(m, reason))];
        }
    };
    let mut scored = Vec::with_capacity(objects.len());
    for (i, (row, o)) in objects.iter().enumerate() {
        let (Some(rul), Some(cycle)) = (o.get(PREDICTED_RUL), o.get("CycleTime")) else {
            let what = if o.has(PREDICTED_RUL) {
                "CycleTime"
            } else {
                PREDICTED_RUL
            };
            let reason = format!("object {i} has no {what}: not a classified telemetry message");
            drop(objects);
            return vec![(DEAD_OUTPUT, dead_letter(m, reason))];
        };
        scored.push(Scored {
            row,
            rul,
            cycle,
            extra: HISTORY_FIELDS.map(|f| (f, o.get(f))),
        });
    }
    let strings = record::STRING_FIELDS.map(|k| m.property(k).unwrap_or_default());
    let p = |k| m.property(k).unwrap_or_default();
    let (cid, device) = (p(CORRELATION_ID), p(CONNECTION_DEVICE_ID));
    let model = m.property(MODEL_NAME);
    let mut out = Vec::with_capacity(scored.len() * 2);
    for s in scored {
        if threshold.is_none_or(|t| s.rul < t) {
            out.push((HUB_OUTPUT, hub_body(device, cid, &s, model)));
        }
        out.push((AVRO_OUTPUT, avro_body(strings, s.row)));
    }
    let cid = CompactString::from(cid);
    drop(objects);
    // Every output carries the input's properties; the last one takes them without a copy.
    let mut properties = Some(m.properties);
    let n = out.len();
    out.into_iter()
        .enumerate()
        .map(|(i, (name, body))| {
            let props = if i + 1 == n {
                properties.take().unwrap_or_default()
            } else {
                properties.clone().unwrap_or_default()
            };
            let mut msg = Message {
                body,
                correlation_id: Some(cid.clone()),
                properties: props,
                ..Message::default()
            };
            json_headers(&mut msg);
            (name, msg)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EngineRecord;
    use serde_json::{json, Value};

    const NOW: &str = "2026-11-21T05:00:00.000Z";

    fn leaf(body: &str) -> Message {
        let mut m = Message::json(body.to_owned());
        m.connection_device_id = Some("Client_001".into());
        m.enqueued_time = Some("2026-11-21T04:59:59.500Z".into());
        m.correlation_id = Some("corr-1".into());
        m.set_property("Origin", "test");
        m
    }

    fn telemetry() -> String {
        json!({"CycleTime": 42, "OperationalSetting1": -0.0007, "Sensor1": 518.67, "Sensor21": 23.3188}).to_string()
    }

    fn body(m: &Message) -> Value {
        serde_json::from_slice(&m.body).unwrap()
    }

    #[test]
    fn device_input_forwards_the_body_unchanged_with_the_tutorial_properties() {
        let out = device_input(
            leaf(&telemetry()),
            || unreachable!("the hub stamped an enqueued time: no clock needed"),
            || unreachable!("has a correlation id"),
        );
        assert_eq!(out.len(), 1);
        let (name, m) = &out[0];
        assert_eq!(*name, CLASS_OUTPUT);
        assert_eq!(m.body, Bytes::from(telemetry()));
        assert_eq!(
            m.property("Origin"),
            Some("test"),
            "properties carried forward"
        );
        assert_eq!(m.property("CorrelationId"), Some("corr-1"));
        assert_eq!(m.property("ConnectionDeviceId"), Some("Client_001"));
        assert_eq!(
            m.property("CreationTimeUtc"),
            Some("2026-11-21T04:59:59.500Z")
        );
        assert_eq!(
            m.property("EnqueuedTimeUtc"),
            Some("2026-11-21T04:59:59.500Z")
        );
        assert_eq!(m.correlation_id.as_deref(), Some("corr-1"));
        assert!(m.is_json_utf8());
    }

    #[test]
    fn device_input_makes_a_correlation_id_and_takes_times_from_system_properties() {
        let mut m = leaf(&format!("[{}]", telemetry()));
        m.correlation_id = None;
        m.enqueued_time = None;
        m.creation_time = Some("earlier".into());
        let out = device_input(m, || NOW.into(), || "new-id".into());
        let (name, m) = &out[0];
        assert_eq!(*name, CLASS_OUTPUT, "a one-element array is accepted");
        assert_eq!(m.property("CorrelationId"), Some("new-id"));
        assert_eq!(m.correlation_id.as_deref(), Some("new-id"));
        assert_eq!(m.property("CreationTimeUtc"), Some("earlier"));
        assert_eq!(m.property("EnqueuedTimeUtc"), Some(NOW));
    }

    #[test]
    fn a_leaf_device_cannot_set_what_the_pipeline_sets() {
        let mut m = leaf(&telemetry());
        for (name, forged) in [
            ("ConnectionDeviceId", "Client_099"),
            ("CorrelationId", "forged-corr"),
            ("CreationTimeUtc", "1999-01-01T00:00:00Z"),
            ("EnqueuedTimeUtc", "1999-01-01T00:00:00Z"),
            ("DeadLetter", "true"),
            ("DeadLetterReason", "forged"),
            ("ClassifierError", "forged"),
            ("ModelName", "forged"),
        ] {
            m.properties.push((name.into(), forged.into()));
            // twice: a bag may carry a name more than once
            m.properties.push((name.into(), forged.into()));
        }
        let out = device_input(m, || NOW.into(), || unreachable!());
        let (name, m) = &out[0];
        assert_eq!(*name, CLASS_OUTPUT);
        let props = |n: &str| m.properties.iter().filter(|(k, _)| k == n).count();
        assert_eq!(m.property("ConnectionDeviceId"), Some("Client_001"));
        assert_eq!(props("ConnectionDeviceId"), 1);
        assert_eq!(m.property("CorrelationId"), Some("corr-1"));
        assert_eq!(
            m.property("EnqueuedTimeUtc"),
            Some("2026-11-21T04:59:59.500Z")
        );
        assert_eq!(
            m.property("CreationTimeUtc"),
            Some("2026-11-21T04:59:59.500Z")
        );
        for gone in [
            "DeadLetter",
            "DeadLetterReason",
            "ClassifierError",
            "ModelName",
        ] {
            assert_eq!(props(gone), 0, "{gone} removed");
        }
        assert_eq!(m.property("Origin"), Some("test"), "other properties kept");
    }

    #[test]
    fn a_dead_letter_from_a_leaf_device_carries_no_forged_pipeline_property() {
        let mut m = leaf("not json");
        m.set_property("ClassifierError", "forged");
        m.set_property("ModelName", "forged");
        m.set_property("ConnectionDeviceId", "Client_099");
        let out = device_input(m, || NOW.into(), || "x".into());
        let (name, d) = &out[0];
        assert_eq!(*name, DEAD_OUTPUT);
        for gone in ["ClassifierError", "ModelName"] {
            assert_eq!(d.property(gone), None, "{gone} removed");
        }
        assert_eq!(d.property("ConnectionDeviceId"), Some("Client_001"));
    }

    #[test]
    fn a_message_without_an_authenticated_device_is_a_dead_letter() {
        let mut m = leaf(&telemetry());
        m.connection_device_id = None;
        m.set_property("ConnectionDeviceId", "Client_001");
        let out = device_input(m, || NOW.into(), || "x".into());
        let (name, d) = &out[0];
        assert_eq!(*name, DEAD_OUTPUT);
        assert!(d
            .property(DEAD_LETTER_REASON)
            .unwrap()
            .contains("no connection device id"));
        assert_eq!(d.property("ConnectionDeviceId"), None);
    }

    #[test]
    fn bad_device_messages_become_dead_letters_with_their_reason() {
        let mut wrong_type = leaf(&telemetry());
        wrong_type.content_type = Some("text/plain".into());
        let cases = vec![
            (leaf("not json"), "not valid JSON"),
            (
                leaf(r#"{"Sensor1": "518.67"}"#),
                "field 'Sensor1' is a string",
            ),
            (
                leaf(r#"{"Sensor1": 1, "PredictedRul": 5}"#),
                "already classified",
            ),
            (leaf(&format!("[{0},{0}]", telemetry())), "found 2 objects"),
            (leaf("[]"), "empty array"),
            (leaf("7"), "found a number"),
            (wrong_type, "content type 'text/plain'"),
        ];
        for (m, want) in cases {
            let original = m.body.clone();
            let out = device_input(m, || NOW.into(), || "x".into());
            let (name, d) = &out[0];
            assert_eq!(*name, DEAD_OUTPUT);
            assert_eq!(d.body, original, "body unchanged");
            assert_eq!(d.property(DEAD_LETTER), Some("true"));
            let reason = d.property(DEAD_LETTER_REASON).unwrap();
            assert!(reason.contains(want), "{reason:?} should contain {want:?}");
            assert_eq!(d.property("Origin"), Some("test"));
        }
    }

    fn classified(rul: f64) -> Message {
        let forwarded = device_input(leaf(&telemetry()), || NOW.into(), || unreachable!())
            .remove(0)
            .1;
        let mut m = forwarded;
        let mut v = body(&m);
        v["PredictedRul"] = json!(rul);
        m.body = Bytes::from(json!([v]).to_string());
        m
    }

    #[test]
    fn rul_input_sends_the_rul_message_and_the_avro_record() {
        let out = rul_input(classified(87.25), None);
        let names: Vec<&str> = out.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, vec![HUB_OUTPUT, AVRO_OUTPUT]);
        let hub = body(&out[0].1);
        assert_eq!(
            hub,
            json!({"ConnectionDeviceId": "Client_001", "CorrelationId": "corr-1", "PredictedRul": 87.25, "CycleTime": 42.0})
        );
        assert_eq!(out[0].1.correlation_id.as_deref(), Some("corr-1"));
        assert!(out[0].1.is_json_utf8());
        // The record's text, as the writer has always been sent it.
        let text = std::str::from_utf8(&out[1].1.body).unwrap();
        let strings = r#"{"CorrelationId":"corr-1","ConnectionDeviceId":"Client_001","CreationTimeUtc":"2026-11-21T04:59:59.500Z","EnqueuedTimeUtc":"2026-11-21T04:59:59.500Z","Body":{"#;
        assert!(text.starts_with(strings), "{text}");
        let record: EngineRecord = serde_json::from_slice(&out[1].1.body).unwrap();
        assert_eq!(record.correlation_id, "corr-1");
        assert_eq!(record.connection_device_id, "Client_001");
        assert_eq!(record.enqueued_time_utc, "2026-11-21T04:59:59.500Z");
        assert_eq!(record.body["PredictedRul"], 87.25);
        assert_eq!(record.body["Sensor1"], 518.67);
        assert_eq!(record.body["OperationalSetting1"], -0.0007);
        assert_eq!(out[1].1.property("Origin"), Some("test"));
    }

    #[test]
    fn a_history_answer_carries_its_interval_history_and_model_to_iot_hub() {
        let mut m = classified(87.25);
        let mut v = body(&m)[0].clone();
        v["PredictedRulLow"] = json!(70.5);
        v["PredictedRulHigh"] = json!(110.0);
        v["HistoryCycles"] = json!(42);
        v["MissingCycles"] = json!(3);
        m.body = Bytes::from(json!([v]).to_string());
        m.set_property(MODEL_NAME, "rul-history-hgb");
        let out = rul_input(m, None);
        assert_eq!(
            body(&out[0].1),
            json!({"ConnectionDeviceId": "Client_001", "CorrelationId": "corr-1", "PredictedRul": 87.25,
                   "CycleTime": 42.0, "PredictedRulLow": 70.5, "PredictedRulHigh": 110.0,
                   "HistoryCycles": 42, "MissingCycles": 3, "ModelName": "rul-history-hgb"})
        );
        // The Avro record holds the row as classified; the writer keeps the schema's fields.
        let record: EngineRecord = serde_json::from_slice(&out[1].1.body).unwrap();
        assert_eq!(record.body["PredictedRulLow"], 70.5);
        assert_eq!(out[1].1.property(MODEL_NAME), Some("rul-history-hgb"));
    }

    #[test]
    fn the_threshold_only_limits_what_goes_to_iot_hub() {
        let out = rul_input(classified(120.0), Some(100.0));
        let names: Vec<&str> = out.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, vec![AVRO_OUTPUT]);
        let out = rul_input(classified(99.5), Some(100.0));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn bad_rul_messages_become_dead_letters_with_their_reason() {
        let mut errored = classified(1.0);
        errored.set_property(CLASSIFIER_ERROR, "row 0: feature 'Sensor2' is missing");
        let unclassified = device_input(leaf(&telemetry()), || NOW.into(), || unreachable!())
            .remove(0)
            .1;
        let mut foreign = classified(1.0);
        foreign.properties.clear();
        let cases = vec![
            (
                errored,
                "could not score it: row 0: feature 'Sensor2' is missing",
            ),
            (unclassified, "has no PredictedRul"),
            (foreign, "property CorrelationId is missing"),
        ];
        for (m, want) in cases {
            let out = rul_input(m, None);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0, DEAD_OUTPUT);
            let reason = out[0].1.property(DEAD_LETTER_REASON).unwrap();
            assert!(reason.contains(want), "{reason:?} should contain {want:?}");
        }
    }

    #[test]
    fn strings_in_properties_are_escaped_in_bodies() {
        let mut m = classified(5.0);
        m.set_property("ConnectionDeviceId", "dev\"ice\\1");
        let out = rul_input(m, None);
        assert_eq!(body(&out[0].1)["ConnectionDeviceId"], json!("dev\"ice\\1"));
    }

    #[test]
    fn a_leaf_message_with_properties_too_large_to_forward_is_dead_lettered_without_them() {
        let mut m = leaf(&telemetry());
        m.set_property("note", "é".repeat(6_000)); // 12,000 bytes, 36,000 encoded
        m.correlation_id = Some("c".repeat(100).into());
        let out = device_input(m, || "now".into(), || "id".into());
        assert_eq!(out.len(), 1);
        let (port, dead) = &out[0];
        assert_eq!(*port, DEAD_OUTPUT);
        assert_eq!(dead.property(DEAD_LETTER), Some("true"));
        let reason = dead.property(DEAD_LETTER_REASON).unwrap();
        assert!(
            reason.contains("over the pipeline's limit of 16384"),
            "{reason}"
        );
        assert_eq!(dead.property("note"), None);
        assert_eq!(dead.correlation_id, None);
        assert_eq!(dead.property(CONNECTION_DEVICE_ID), Some("Client_001"));
        let bag =
            edge_protocol::properties::encode(dead, edge_protocol::properties::Direction::ToHub);
        assert!(bag.len() < 1_024, "the dead letter is small: {}", bag.len());
        // Just under the limit, the message goes on.
        let mut m = leaf(&telemetry());
        m.set_property("note", "x".repeat(MAX_LEAF_PROPERTY_BAG - 200));
        let out = device_input(m, || "now".into(), || "id".into());
        assert_eq!(out[0].0, CLASS_OUTPUT);
    }

    #[test]
    fn a_message_too_large_to_send_becomes_a_dead_letter_without_its_body() {
        let mut m = leaf(&telemetry());
        m.set_property("CorrelationId", "corr-1");
        let dead = unsendable(
            m,
            CLASS_OUTPUT,
            "a publish of 530000 bytes is over the limit",
        );
        assert!(dead.body.is_empty());
        assert_eq!(dead.property(DEAD_LETTER), Some("true"));
        assert_eq!(
            dead.property(DEAD_LETTER_REASON),
            Some(
                format!(
                    "too large to send to classOutput (a publish of 530000 bytes is over the limit): its body of {} bytes was dropped",
                    telemetry().len()
                )
                .as_str()
            )
        );
        assert_eq!(dead.property("Origin"), Some("test"), "properties kept");
        assert_eq!(dead.property("CorrelationId"), Some("corr-1"));
        assert_eq!(dead.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(dead.connection_device_id, None, "hub stamps cleared");
    }

    #[test]
    fn a_dead_letter_too_large_to_send_keeps_its_first_reason() {
        let first = dead_letter(leaf("not json"), "the body is not JSON");
        let dead = unsendable(first, DEAD_OUTPUT, "too big");
        assert!(dead.body.is_empty());
        assert_eq!(
            dead.property(DEAD_LETTER_REASON),
            Some("the body is not JSON; the dead letter could not be sent either (too big): its body of 8 bytes was dropped")
        );
    }

    #[test]
    fn an_answer_too_large_to_send_is_dead_lettered_as_scored() {
        let mut m = leaf("");
        m.set_property(
            CLASSIFIER_ERROR,
            format!("{ANSWER_TOO_LARGE} (too big): its body of 9 bytes was dropped"),
        );
        let out = rul_input(m, None);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, DEAD_OUTPUT);
        assert_eq!(
            out[0].1.property(DEAD_LETTER_REASON),
            Some("the classifier scored it, but the answer is too large to send (too big): its body of 9 bytes was dropped")
        );
    }
}
