//! The Avro record of the archive: the tutorial's schema (`turbofan.EngineData`) and the JSON
//! the router sends on `avroOutput`.

use crate::ports::properties::{
    CONNECTION_DEVICE_ID, CORRELATION_ID, CREATION_TIME, ENQUEUED_TIME,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The record's name in the schema.
pub const NAME: &str = "EngineData";
/// The record's namespace.
pub const NAMESPACE: &str = "turbofan";

/// How many string fields the record has.
pub const STRING_LEN: usize = 4;
/// The record's string fields, in schema order, before `Body`: the properties the router
/// set on the leaf message (`crate::ports::properties`), under the same names.
pub const STRING_FIELDS: [&str; STRING_LEN] = [
    CORRELATION_ID,
    CONNECTION_DEVICE_ID,
    CREATION_TIME,
    ENQUEUED_TIME,
];

/// The record field holding the numbers: a record (also named `Body`) of floats.
pub const BODY: &str = "Body";
/// How many float fields `Body` has.
pub const BODY_LEN: usize = 26;
/// The float fields of `Body`, in schema order.
pub const BODY_FIELDS: [&str; BODY_LEN] = [
    "Sensor1",
    "Sensor2",
    "Sensor3",
    "Sensor4",
    "Sensor5",
    "Sensor6",
    "Sensor7",
    "Sensor8",
    "Sensor9",
    "Sensor10",
    "Sensor11",
    "Sensor12",
    "Sensor13",
    "Sensor14",
    "Sensor15",
    "Sensor16",
    "Sensor17",
    "Sensor18",
    "Sensor19",
    "Sensor20",
    "Sensor21",
    "OperationalSetting1",
    "OperationalSetting2",
    "OperationalSetting3",
    "PredictedRul",
    "CycleTime",
];

/// The tutorial's Avro schema (`turbofan.EngineData`: [`STRING_FIELDS`] as `string`, then
/// [`BODY`], a record of [`BODY_FIELDS`] as `float`), as JSON text built from the lists
/// above.
pub fn schema() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let field = |name: &str, ty: Value| json!({"name": name, "type": ty});
        let body: Vec<Value> = BODY_FIELDS
            .iter()
            .map(|f| field(f, json!("float")))
            .collect();
        let mut fields: Vec<Value> = STRING_FIELDS
            .iter()
            .map(|f| field(f, json!("string")))
            .collect();
        fields.push(field(
            BODY,
            json!({"type": "record", "name": BODY, "fields": body}),
        ));
        json!({"type": "record", "name": NAME, "namespace": NAMESPACE, "fields": fields})
            .to_string()
    })
}

/// What the router sends on `avroOutput` (and the writer reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EngineRecord {
    /// Correlation id of the leaf message.
    pub correlation_id: String,
    /// The leaf device.
    pub connection_device_id: String,
    /// When the leaf message was created (UTC, ISO 8601).
    pub creation_time_utc: String,
    /// When edgeHub accepted the leaf message (UTC, ISO 8601).
    pub enqueued_time_utc: String,
    /// Every numeric field of the telemetry, plus `PredictedRul`.
    pub body: BTreeMap<String, f64>,
}

impl EngineRecord {
    /// The `Body` values in schema order, or the first missing field.
    pub fn body_in_schema_order(&self) -> Result<[f32; BODY_LEN], &'static str> {
        let mut out = [0f32; BODY_LEN];
        for (slot, name) in out.iter_mut().zip(BODY_FIELDS) {
            *slot = *self.body.get(name).ok_or(name)? as f32;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_lists_every_field_in_order() {
        let v: Value = serde_json::from_str(schema()).unwrap();
        assert_eq!(
            (&v["name"], &v["namespace"]),
            (&json!(NAME), &json!(NAMESPACE))
        );
        let names = |fields: &Value| -> Vec<String> {
            let names = fields.as_array().unwrap().iter();
            names
                .map(|f| f["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let mut top = STRING_FIELDS.map(String::from).to_vec();
        top.push(BODY.into());
        assert_eq!(names(&v["fields"]), top);
        let body = &v["fields"][STRING_LEN]["type"];
        assert_eq!(names(&body["fields"]), BODY_FIELDS);
        assert!(body["fields"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["type"] == "float"));
        // Names the router writes into JSON without escaping.
        for name in STRING_FIELDS.iter().chain(&BODY_FIELDS).chain([&BODY]) {
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric()), "{name}");
        }
    }

    #[test]
    fn the_router_record_has_the_schema_fields() {
        let r = EngineRecord {
            correlation_id: "c".into(),
            connection_device_id: "d".into(),
            creation_time_utc: "t".into(),
            enqueued_time_utc: "t".into(),
            body: BTreeMap::new(),
        };
        let v = serde_json::to_value(&r).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = STRING_FIELDS.to_vec();
        want.push(BODY);
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want);
    }

    #[test]
    fn missing_body_fields_are_named() {
        let mut r = EngineRecord {
            correlation_id: "c".into(),
            connection_device_id: "d".into(),
            creation_time_utc: "t".into(),
            enqueued_time_utc: "t".into(),
            body: BODY_FIELDS.iter().map(|f| (f.to_string(), 1.5)).collect(),
        };
        assert_eq!(r.body_in_schema_order().unwrap()[BODY_LEN - 1], 1.5);
        r.body.remove("OperationalSetting2");
        assert_eq!(r.body_in_schema_order(), Err("OperationalSetting2"));
    }
}
