//! The Avro record of the archive: the tutorial's schema (`turbofan.EngineData`) and the JSON
//! the router sends on `avroOutput`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The tutorial's Avro schema.
pub const SCHEMA: &str = r#"{
  "type": "record",
  "name": "EngineData",
  "namespace": "turbofan",
  "fields": [
    {"name": "CorrelationId", "type": "string"},
    {"name": "ConnectionDeviceId", "type": "string"},
    {"name": "CreationTimeUtc", "type": "string"},
    {"name": "EnqueuedTimeUtc", "type": "string"},
    {"name": "Body", "type": {
      "type": "record",
      "name": "Body",
      "fields": [
        {"name": "Sensor1", "type": "float"}, {"name": "Sensor2", "type": "float"},
        {"name": "Sensor3", "type": "float"}, {"name": "Sensor4", "type": "float"},
        {"name": "Sensor5", "type": "float"}, {"name": "Sensor6", "type": "float"},
        {"name": "Sensor7", "type": "float"}, {"name": "Sensor8", "type": "float"},
        {"name": "Sensor9", "type": "float"}, {"name": "Sensor10", "type": "float"},
        {"name": "Sensor11", "type": "float"}, {"name": "Sensor12", "type": "float"},
        {"name": "Sensor13", "type": "float"}, {"name": "Sensor14", "type": "float"},
        {"name": "Sensor15", "type": "float"}, {"name": "Sensor16", "type": "float"},
        {"name": "Sensor17", "type": "float"}, {"name": "Sensor18", "type": "float"},
        {"name": "Sensor19", "type": "float"}, {"name": "Sensor20", "type": "float"},
        {"name": "Sensor21", "type": "float"},
        {"name": "OperationalSetting1", "type": "float"},
        {"name": "OperationalSetting2", "type": "float"},
        {"name": "OperationalSetting3", "type": "float"},
        {"name": "PredictedRul", "type": "float"},
        {"name": "CycleTime", "type": "float"}
      ]
    }}
  ]
}"#;

/// The float fields of `Body`, in schema order.
pub const BODY_FIELDS: [&str; 26] = [
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
    pub fn body_in_schema_order(&self) -> Result<[f32; 26], &'static str> {
        let mut out = [0f32; 26];
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
    fn schema_is_valid_json_with_every_body_field_in_order() {
        let v: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
        let names: Vec<&str> = v["fields"][4]["type"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, BODY_FIELDS);
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
        assert_eq!(r.body_in_schema_order().unwrap()[25], 1.5);
        r.body.remove("OperationalSetting2");
        assert_eq!(r.body_in_schema_order(), Err("OperationalSetting2"));
    }
}
