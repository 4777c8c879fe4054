//! From the router's JSON to the Avro datum: the tutorial's schema, parsed once, and the
//! checks that send a record to quarantine instead of the archive.

use apache_avro::Schema;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeStruct, Serializer};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
use turbofan_domain::ports::properties::CORRELATION_ID;
use turbofan_domain::record::{
    self, EngineRecord, BODY, BODY_FIELDS, BODY_LEN, STRING_FIELDS, STRING_LEN,
};

/// The record schema (`turbofan.EngineData`), parsed once and shared.
#[derive(Debug)]
pub struct RecordSchema {
    schema: Schema,
    json: String,
    canonical: String,
}

impl RecordSchema {
    /// Parses the tutorial's schema ([`turbofan_domain::record::schema`]).
    pub fn tutorial() -> RecordSchema {
        RecordSchema::parse(record::schema()).unwrap_or_else(|e| {
            // Built from constants and covered by tests; failing here is a build defect.
            panic!("the built-in Avro schema does not parse: {e}")
        })
    }

    /// Parses a schema given as JSON text.
    pub fn parse(text: &str) -> Result<RecordSchema, apache_avro::Error> {
        let schema = Schema::parse_str(text)?;
        let json = serde_json::from_str::<Value>(text)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| text.to_owned());
        let canonical = schema.canonical_form();
        Ok(RecordSchema {
            schema,
            json,
            canonical,
        })
    }

    /// The parsed schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The schema as compact JSON, as written into file headers.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Reads the container file at `path` back whole, decoding every record of every block
    /// with this schema ([`crate::container::verify`]).
    pub fn verify_file(
        &self,
        path: &std::path::Path,
    ) -> Result<crate::container::Verified, crate::container::FileError> {
        crate::container::verify(path, |data| {
            apache_avro::from_avro_datum(&self.schema, data, None)
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    /// Whether a file header's schema text describes the same schema (Avro's parsing
    /// canonical form: field order, names and types, ignoring whitespace and docs).
    pub fn same_as(&self, header_schema: &str) -> bool {
        Schema::parse_str(header_schema).is_ok_and(|s| s.canonical_form() == self.canonical)
    }
}

/// A record of the schema: its strings ([`STRING_FIELDS`]) and its `Body` values
/// ([`BODY_FIELDS`]), in schema order.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<S> {
    /// The string fields, in schema order.
    pub strings: [S; STRING_LEN],
    /// The `Body` values in schema order, as `float`.
    pub body: [f32; BODY_LEN],
}

/// A record checked against the schema, ready to encode; its strings borrow from the
/// message body where they have no escapes.
pub type GoodRecord<'a> = Record<Cow<'a, str>>;

/// A record read back from an archive file.
pub type ArchivedRecord = Record<String>;

impl<S: AsRef<str>> Record<S> {
    /// The string field `name` ([`STRING_FIELDS`]).
    pub fn string(&self, name: &str) -> Option<&str> {
        let i = STRING_FIELDS.iter().position(|f| *f == name)?;
        Some(self.strings[i].as_ref())
    }

    /// The `Body` field `name` ([`BODY_FIELDS`]).
    pub fn body_field(&self, name: &str) -> Option<f32> {
        let i = BODY_FIELDS.iter().position(|f| *f == name)?;
        Some(self.body[i])
    }

    /// `CorrelationId`: what tells records apart.
    pub fn correlation_id(&self) -> &str {
        self.string(CORRELATION_ID).unwrap_or_default()
    }
}

impl GoodRecord<'_> {
    /// Appends the record's Avro binary encoding to `out`.
    pub fn encode(&self, schema: &RecordSchema, out: &mut Vec<u8>) -> Result<(), String> {
        apache_avro::write_avro_datum_ref(schema.schema(), &AvroView(self), out)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Checks a message body: a JSON object with the four strings and a `Body` object of
/// numbers holding every float field of the schema — the router's `EngineRecord`
/// (`turbofan_domain::record`). Returns why not, in words for the quarantine file.
///
/// Good records take a single pass without copying; a bad one is parsed again as an
/// `EngineRecord` (and `EngineRecord::body_in_schema_order`) to name what is wrong.
pub fn parse(body: &[u8]) -> Result<GoodRecord<'_>, String> {
    if let Ok(wire) = serde_json::from_slice::<Wire<'_>>(body) {
        if let Some(good) = wire.complete() {
            return Ok(good);
        }
    }
    Err(reason(body))
}

/// Why `body` is not a good record, by the router's contract.
fn reason(body: &[u8]) -> String {
    match serde_json::from_slice::<EngineRecord>(body) {
        Ok(record) => match record.body_in_schema_order() {
            Err(missing) => format!("{BODY} has no field '{missing}'"),
            Ok(_) => "body does not match the record schema".to_owned(),
        },
        Err(_) => diagnose(body),
    }
}

/// The router's record as it comes off the wire: every field optional, so that what is
/// missing can be told apart from what is malformed.
struct Wire<'a> {
    strings: [Option<Cow<'a, str>>; STRING_LEN],
    body: Option<[Option<f32>; BODY_LEN]>,
}

impl<'a> Wire<'a> {
    fn complete(self) -> Option<GoodRecord<'a>> {
        let fields = self.body?;
        let mut body = [0f32; BODY_LEN];
        for (slot, v) in body.iter_mut().zip(fields) {
            *slot = v?;
        }
        if self.strings.iter().any(Option::is_none) {
            return None;
        }
        Some(GoodRecord {
            strings: self.strings.map(Option::unwrap_or_default),
            body,
        })
    }
}

/// A string, borrowed from the input when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// `Body`: every value a number (as `EngineRecord` requires), the schema's fields kept.
struct BodyFields([Option<f32>; BODY_LEN]);

impl<'de> Deserialize<'de> for BodyFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BodyFields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of numbers")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = [None; BODY_LEN];
                // Bodies list their fields in one order, mostly the schema's: the field
                // after the previous one is tried before searching.
                let mut next = 0;
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    let v: f64 = map.next_value()?;
                    let found = match BODY_FIELDS.get(next) {
                        Some(f) if *f == key.0 => Some(next),
                        _ => BODY_FIELDS.iter().position(|f| *f == key.0),
                    };
                    if let Some(i) = found {
                        out[i] = Some(v as f32);
                        next = i + 1;
                    }
                }
                Ok(BodyFields(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Wire<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Wire<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a record object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut w = Wire {
                    strings: Default::default(),
                    body: None,
                };
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    if key.0 == BODY {
                        if w.body.is_some() {
                            return Err(de::Error::duplicate_field(BODY));
                        }
                        w.body = Some(map.next_value::<BodyFields>()?.0);
                    } else if let Some(i) = STRING_FIELDS.iter().position(|f| *f == key.0) {
                        if w.strings[i].is_some() {
                            return Err(de::Error::duplicate_field(STRING_FIELDS[i]));
                        }
                        w.strings[i] = Some(map.next_value::<Text<'de>>()?.0);
                    } else {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
                Ok(w)
            }
        }
        d.deserialize_map(V)
    }
}

/// Why a body that failed the typed parse is bad, naming the field.
fn diagnose(body: &[u8]) -> String {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return match std::str::from_utf8(body) {
                Ok(_) => format!("body is not JSON: {e}"),
                Err(_) => "body is not UTF-8 JSON".to_owned(),
            }
        }
    };
    let Some(obj) = v.as_object() else {
        return format!("body must be a JSON object, found {}", kind(&v));
    };
    for name in STRING_FIELDS {
        match obj.get(name) {
            None => return format!("field '{name}' is missing"),
            Some(Value::String(_)) => {}
            Some(other) => return format!("field '{name}' is {}, not a string", kind(other)),
        }
    }
    let Some(b) = obj.get(BODY) else {
        return format!("field '{BODY}' is missing");
    };
    let Some(b) = b.as_object() else {
        return format!("field '{BODY}' is {}, not an object", kind(b));
    };
    for (k, v) in b {
        if !v.is_number() {
            return format!("{BODY} field '{k}' is {}, not a number", kind(v));
        }
    }
    // Numbers beyond f64 and the like: whatever serde says.
    match serde_json::from_value::<EngineRecord>(v.clone()) {
        Ok(_) => "body does not match the record schema".to_owned(),
        Err(e) => format!("body does not match the record schema: {e}"),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl ArchivedRecord {
    /// What a good record becomes once archived.
    pub fn from_good(g: &GoodRecord<'_>) -> ArchivedRecord {
        Record {
            strings: g.strings.clone().map(Cow::into_owned),
            body: g.body,
        }
    }
}

/// Reads every record of a container file with `apache-avro`'s own reader (an
/// implementation independent of this crate's writer), checking the schema is ours.
pub fn read_file(path: &std::path::Path) -> Result<Vec<ArchivedRecord>, String> {
    use apache_avro::types::Value as Avro;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let reader = apache_avro::Reader::new(std::io::BufReader::new(file))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    static TUTORIAL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let ours = TUTORIAL.get_or_init(|| RecordSchema::tutorial().canonical);
    if &reader.writer_schema().canonical_form() != ours {
        return Err(format!("{}: not the tutorial's schema", path.display()));
    }
    let text = |v: Option<&Avro>, name: &str| match v {
        Some(Avro::String(s)) => Ok(s.clone()),
        other => Err(format!("{name} is {other:?}")),
    };
    let mut out = Vec::new();
    for v in reader {
        let v = v.map_err(|e| format!("{}: record {}: {e}", path.display(), out.len()))?;
        let Avro::Record(fields) = v else {
            return Err(format!("{}: not a record", path.display()));
        };
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v);
        let Some(Avro::Record(body_fields)) = get(BODY) else {
            return Err(format!("{}: no {BODY} record", path.display()));
        };
        let mut body = [0f32; BODY_LEN];
        for (slot, name) in body.iter_mut().zip(BODY_FIELDS) {
            match body_fields.iter().find(|(k, _)| k == name) {
                Some((_, Avro::Float(f))) => *slot = *f,
                other => return Err(format!("{BODY}.{name} is {other:?}")),
            }
        }
        let mut strings: [String; STRING_LEN] = Default::default();
        for (slot, name) in strings.iter_mut().zip(STRING_FIELDS) {
            *slot = text(get(name), name)?;
        }
        out.push(Record { strings, body });
    }
    Ok(out)
}

/// Serialises a record in schema order for `apache-avro`'s schema-aware serializer.
struct AvroView<'a, 'b>(&'a GoodRecord<'b>);

struct BodyView<'a>(&'a [f32; BODY_LEN]);

impl Serialize for AvroView<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut st = s.serialize_struct(record::NAME, STRING_LEN + 1)?;
        for (name, v) in STRING_FIELDS.iter().zip(&r.strings) {
            st.serialize_field(name, v.as_ref())?;
        }
        st.serialize_field(BODY, &BodyView(&r.body))?;
        st.end()
    }
}

impl Serialize for BodyView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct(BODY, BODY_LEN)?;
        for (name, v) in BODY_FIELDS.iter().zip(self.0.iter()) {
            st.serialize_field(name, v)?;
        }
        st.end()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use apache_avro::types::Value as Avro;
    use serde_json::json;

    /// A router-shaped record body; `seed` varies every value.
    pub(crate) fn sample_json(seed: u32) -> Value {
        let mut body = serde_json::Map::new();
        for (i, f) in BODY_FIELDS.iter().enumerate() {
            body.insert(
                f.to_string(),
                json!(seed as f64 * 0.5 + i as f64 + 0.123_456_789),
            );
        }
        body.insert("DeviceId".into(), json!(7)); // extra numeric fields are ignored
        json!({
            "CorrelationId": format!("corr-{seed}"),
            "ConnectionDeviceId": "Client_001",
            "CreationTimeUtc": "2026-11-21T05:15:00.000Z",
            "EnqueuedTimeUtc": "2026-11-21T05:15:00.010Z",
            "Body": body,
        })
    }

    #[test]
    fn encodes_exactly_like_apache_avro_value_encoding() {
        let schema = RecordSchema::tutorial();
        let text = sample_json(3).to_string();
        let good = parse(text.as_bytes()).unwrap();
        let mut ours = Vec::new();
        good.encode(&schema, &mut ours).unwrap();
        let body = Avro::Record(
            BODY_FIELDS
                .iter()
                .zip(good.body)
                .map(|(n, v)| (n.to_string(), Avro::Float(v)))
                .collect(),
        );
        let mut fields: Vec<(String, Avro)> = STRING_FIELDS
            .iter()
            .zip(&good.strings)
            .map(|(n, v)| (n.to_string(), Avro::String(v.to_string())))
            .collect();
        fields.push((BODY.into(), body));
        let value = Avro::Record(fields);
        let reference = apache_avro::to_avro_datum(schema.schema(), value).unwrap();
        assert_eq!(ours, reference);
    }

    #[test]
    fn body_fields_are_found_in_any_order() {
        let body = |order: &mut dyn Iterator<Item = (usize, &&str)>| {
            let fields: Vec<String> = order.map(|(i, f)| format!(r#""{f}":{i}.5"#)).collect();
            format!(
                r#"{{"CorrelationId":"c","ConnectionDeviceId":"d","CreationTimeUtc":"t","EnqueuedTimeUtc":"u","Body":{{{}}}}}"#,
                fields.join(",")
            )
        };
        let in_order = body(&mut BODY_FIELDS.iter().enumerate());
        let reversed = body(&mut BODY_FIELDS.iter().enumerate().rev());
        let mut rotated: Vec<_> = BODY_FIELDS.iter().enumerate().collect();
        rotated.rotate_left(21);
        let rotated = body(&mut rotated.into_iter());
        let expected: Vec<f32> = (0..BODY_LEN).map(|i| i as f32 + 0.5).collect();
        for text in [in_order, reversed, rotated] {
            assert_eq!(
                parse(text.as_bytes()).unwrap().body.to_vec(),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn the_fast_path_accepts_exactly_what_the_router_contract_accepts() {
        let base = sample_json(5);
        let with = |path: &str, v: Value| {
            let mut j = base.clone();
            let (parent, key) = path.rsplit_once('/').unwrap();
            j.pointer_mut(parent)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert(key.to_owned(), v);
            j.to_string()
        };
        let without = |key: &str| {
            let mut j = base.clone();
            j.as_object_mut().unwrap().remove(key);
            if let Some(b) = j.get_mut("Body").and_then(Value::as_object_mut) {
                b.remove(key);
            }
            j.to_string()
        };
        let text = base.to_string();
        let variants = vec![
            text.clone(),
            format!("  \n{text}\n "),
            with("/CorrelationId", json!("quote \" backslash \\ é \u{1F600}")),
            with("/Extra", json!({"nested": [1, 2]})),
            with("/Body/DeviceId", json!(12345678901234567890u64)),
            with("/Body/Sensor3", json!(1e39)),
            with("/Body/Sensor3", json!(-0.0)),
            with("/Body/Sensor3", json!(null)),
            with("/Body/Sensor3", json!("518.67")),
            with("/Body/Extra", json!(true)),
            with("/Body", json!([1.0])),
            with("/ConnectionDeviceId", json!(null)),
            without("CreationTimeUtc"),
            without("Body"),
            without("PredictedRul"),
            text.replacen("{", "{\"CorrelationId\":\"dup\",", 1),
            text.replacen("\"Body\":{", "\"Body\":{\"Sensor1\":1,", 1),
            format!("{text} trailing"),
            format!("[{text}]"),
            "{}".to_owned(),
            "".to_owned(),
            "{\"CorrelationId\": \"x\"".to_owned(),
        ];
        for v in variants {
            let contract = serde_json::from_slice::<EngineRecord>(v.as_bytes())
                .ok()
                .and_then(|r| r.body_in_schema_order().ok().map(|b| (r, b)));
            match (parse(v.as_bytes()), contract) {
                (Ok(g), Some((r, b))) => {
                    let r = serde_json::to_value(&r).unwrap();
                    for (name, g) in STRING_FIELDS.iter().zip(&g.strings) {
                        assert_eq!(r[name], json!(g), "{v}");
                    }
                    assert_eq!(g.body.map(f32::to_bits), b.map(f32::to_bits), "{v}");
                }
                (Err(_), None) => {}
                (ours, contract) => panic!("{v}: fast path {ours:?}, contract {contract:?}"),
            }
        }
        assert!(matches!(
            parse(text.as_bytes()).unwrap().strings[0],
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn bad_bodies_are_named_precisely() {
        let mut missing_body_field = sample_json(1);
        missing_body_field["Body"]
            .as_object_mut()
            .unwrap()
            .remove("OperationalSetting2");
        let mut mistyped = sample_json(1);
        mistyped["Body"]["Sensor4"] = json!("hot");
        let mut missing_top = sample_json(1);
        missing_top
            .as_object_mut()
            .unwrap()
            .remove("EnqueuedTimeUtc");
        let mut wrong_string = sample_json(1);
        wrong_string["CorrelationId"] = json!(12);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "body is not JSON"),
            (vec![0xff, 0xfe], "not UTF-8"),
            (b"[1,2]".to_vec(), "must be a JSON object, found an array"),
            (
                missing_body_field.to_string().into_bytes(),
                "Body has no field 'OperationalSetting2'",
            ),
            (
                mistyped.to_string().into_bytes(),
                "Body field 'Sensor4' is a string, not a number",
            ),
            (
                missing_top.to_string().into_bytes(),
                "field 'EnqueuedTimeUtc' is missing",
            ),
            (
                wrong_string.to_string().into_bytes(),
                "field 'CorrelationId' is a number, not a string",
            ),
        ];
        for (body, want) in cases {
            let e = parse(&body).unwrap_err();
            assert!(e.contains(want), "{e} should contain {want}");
        }
    }

    #[test]
    fn schema_identity_ignores_formatting() {
        let s = RecordSchema::tutorial();
        assert!(s.same_as(record::schema()));
        assert!(s.same_as(s.json()));
        assert!(!s.same_as("\"string\""));
        assert!(!s.same_as("not json"));
        assert!(!s.json().contains('\n'));
    }

    /// The schema in file headers, byte for byte as this module has always written it
    /// (readers of the archive compare it): a change of the schema changes this too.
    #[test]
    fn file_headers_carry_the_schema_as_before() {
        assert_eq!(
            RecordSchema::tutorial().json(),
            r#"{"fields":[{"name":"CorrelationId","type":"string"},{"name":"ConnectionDeviceId","type":"string"},{"name":"CreationTimeUtc","type":"string"},{"name":"EnqueuedTimeUtc","type":"string"},{"name":"Body","type":{"fields":[{"name":"Sensor1","type":"float"},{"name":"Sensor2","type":"float"},{"name":"Sensor3","type":"float"},{"name":"Sensor4","type":"float"},{"name":"Sensor5","type":"float"},{"name":"Sensor6","type":"float"},{"name":"Sensor7","type":"float"},{"name":"Sensor8","type":"float"},{"name":"Sensor9","type":"float"},{"name":"Sensor10","type":"float"},{"name":"Sensor11","type":"float"},{"name":"Sensor12","type":"float"},{"name":"Sensor13","type":"float"},{"name":"Sensor14","type":"float"},{"name":"Sensor15","type":"float"},{"name":"Sensor16","type":"float"},{"name":"Sensor17","type":"float"},{"name":"Sensor18","type":"float"},{"name":"Sensor19","type":"float"},{"name":"Sensor20","type":"float"},{"name":"Sensor21","type":"float"},{"name":"OperationalSetting1","type":"float"},{"name":"OperationalSetting2","type":"float"},{"name":"OperationalSetting3","type":"float"},{"name":"PredictedRul","type":"float"},{"name":"CycleTime","type":"float"}],"name":"Body","type":"record"}}],"name":"EngineData","namespace":"turbofan","type":"record"}"#
        );
    }
}
