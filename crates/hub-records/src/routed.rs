//! What IoT Hub writes to a storage endpoint: each message as a record of IoT Hub's routing
//! schema (`EnqueuedTimeUtc`, `Properties`, `SystemProperties`, `Body`), in Avro object
//! container files or JSON lines. The local runtime writes these blobs; the demo report and
//! the tests read them back. Schema and encodings: `docs/decisions.md` (IoT Hub routing).

use apache_avro::types::Value as Avro;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

use crate::Record;

/// IoT Hub's record schema for messages routed to a storage endpoint.
pub const AVRO_SCHEMA: &str = r#"{"type":"record","name":"Message","namespace":"Microsoft.Azure.Devices","fields":[{"name":"EnqueuedTimeUtc","type":"string"},{"name":"Properties","type":{"type":"map","values":"string"}},{"name":"SystemProperties","type":{"type":"map","values":"string"}},{"name":"Body","type":["null","bytes"]}]}"#;

/// How a storage endpoint serializes messages (the endpoint's `encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Encoding {
    /// Avro object container, no compression (IoT Hub's default).
    #[default]
    #[serde(alias = "avro", alias = "AVRO")]
    Avro,
    /// Avro object container, deflate blocks.
    #[serde(alias = "avrodeflate", alias = "avroDeflate", alias = "AVRODEFLATE")]
    AvroDeflate,
    /// One JSON object a line.
    #[serde(alias = "json", alias = "JSON")]
    Json,
}

/// Why routed messages could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RoutedError {
    /// The Avro container is not IoT Hub's (or is damaged).
    #[error("not a routed-messages Avro file: {0}")]
    Avro(#[from] Box<apache_avro::Error>),
    /// A JSON line is not a routed message.
    #[error("not a routed-messages JSON line: {0}")]
    Json(#[from] serde_json::Error),
    /// A record does not have the schema's shape.
    #[error("a record does not have IoT Hub's routing schema: {0}")]
    Shape(String),
}

impl From<apache_avro::Error> for RoutedError {
    fn from(e: apache_avro::Error) -> Self {
        RoutedError::Avro(Box::new(e))
    }
}

/// One message as a storage endpoint keeps it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoutedMessage {
    /// When IoT Hub took the message.
    pub enqueued_time_utc: String,
    /// Application properties.
    pub properties: BTreeMap<String, String>,
    /// System properties (`connectionDeviceId`, `contentType`, …).
    pub system_properties: BTreeMap<String, String>,
    /// The body's bytes.
    pub body: Option<Vec<u8>>,
}

impl RoutedMessage {
    /// The message of one `$upstream` store line, read without building the record: the
    /// body's bytes as stored (a one-line JSON body exactly as the sender wrote it), its
    /// sequence number beside it. The fast path of a storage endpoint.
    pub fn from_line(line: &[u8]) -> Result<(u64, RoutedMessage), RoutedError> {
        use std::borrow::Cow;
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Line<'a> {
            #[serde(default)]
            seq: u64,
            #[serde(borrow, default)]
            enqueued_time_utc: Option<Cow<'a, str>>,
            #[serde(borrow)]
            payload: &'a serde_json::value::RawValue,
            #[serde(borrow, default)]
            payload_encoding: Cow<'a, str>,
            #[serde(borrow, default)]
            properties: LineProperties<'a>,
        }
        #[derive(Deserialize, Default)]
        struct LineProperties<'a> {
            #[serde(borrow, default)]
            system: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
            #[serde(borrow, default)]
            application: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
        }
        /// The system properties IoT Hub writes to a storage endpoint.
        const SYSTEM: [&str; 7] = [
            "messageId",
            "correlationId",
            "contentType",
            "contentEncoding",
            "userId",
            "connectionDeviceId",
            "connectionModuleId",
        ];
        let l: Line<'_> = serde_json::from_slice(line)?;
        let raw = l.payload.get();
        let body = match l.payload_encoding.as_ref() {
            "json" => raw.as_bytes().to_vec(),
            "base64" => {
                let text: String = serde_json::from_str(raw)?;
                B64.decode(text.as_bytes())
                    .map_err(|e| RoutedError::Shape(format!("payload is not base64: {e}")))?
            }
            _ => serde_json::from_str::<String>(raw)?.into_bytes(),
        };
        let mut system: BTreeMap<String, String> = l
            .properties
            .system
            .into_iter()
            .filter(|(k, _)| SYSTEM.contains(&k.as_ref()))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Some(t) = &l.enqueued_time_utc {
            system.insert("enqueuedTime".into(), t.to_string());
        }
        Ok((
            l.seq,
            RoutedMessage {
                enqueued_time_utc: l.enqueued_time_utc.map(Cow::into_owned).unwrap_or_default(),
                properties: l
                    .properties
                    .application
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
                system_properties: system,
                body: Some(body),
            },
        ))
    }

    /// The store record this message was (what [`classify`](crate::classify) sorts): its
    /// body as JSON when the message says it is UTF-8 JSON.
    pub fn to_record(&self) -> Record {
        let sys = |k: &str| self.system_properties.get(k).cloned();
        let body = self.body.as_deref().unwrap_or_default();
        let (payload, payload_encoding) = match (self.is_json_utf8(), std::str::from_utf8(body)) {
            (true, Ok(text)) => match serde_json::from_str::<Value>(text) {
                Ok(v) => (v, "json"),
                Err(_) => (Value::String(text.to_owned()), "utf-8"),
            },
            (_, Ok(text)) => (Value::String(text.to_owned()), "utf-8"),
            (_, Err(_)) => (Value::String(B64.encode(body)), "base64"),
        };
        Record {
            seq: 0,
            enqueued_time_utc: Some(self.enqueued_time_utc.clone()),
            origin: sys("connectionDeviceId"),
            payload,
            payload_encoding: payload_encoding.to_owned(),
            properties: crate::Properties {
                system: crate::SystemProperties {
                    message_id: sys("messageId"),
                    correlation_id: sys("correlationId"),
                    content_type: sys("contentType"),
                    content_encoding: sys("contentEncoding"),
                    user_id: sys("userId"),
                    connection_device_id: sys("connectionDeviceId"),
                    connection_module_id: sys("connectionModuleId"),
                    output_name: None,
                },
                application: self.properties.clone(),
            },
            module: sys("connectionModuleId"),
            endpoints: None,
            routes: None,
        }
    }

    /// The body as JSON, when it is JSON.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(self.body.as_deref()?).ok()
    }

    fn is_json_utf8(&self) -> bool {
        let ct = self.system_properties.get("contentType");
        let ce = self.system_properties.get("contentEncoding");
        ct.is_some_and(|c| c.to_ascii_lowercase().starts_with("application/json"))
            && ce.is_some_and(|e| e.eq_ignore_ascii_case("utf-8"))
    }

    fn to_avro(&self) -> Avro {
        let map = |m: &BTreeMap<String, String>| {
            Avro::Map(
                m.iter()
                    .map(|(k, v)| (k.clone(), Avro::String(v.clone())))
                    .collect::<HashMap<_, _>>(),
            )
        };
        let body = match &self.body {
            Some(b) => Avro::Union(1, Box::new(Avro::Bytes(b.clone()))),
            None => Avro::Union(0, Box::new(Avro::Null)),
        };
        Avro::Record(vec![
            (
                "EnqueuedTimeUtc".into(),
                Avro::String(self.enqueued_time_utc.clone()),
            ),
            ("Properties".into(), map(&self.properties)),
            ("SystemProperties".into(), map(&self.system_properties)),
            ("Body".into(), body),
        ])
    }

    fn from_avro(v: Avro) -> Result<RoutedMessage, RoutedError> {
        let shape = |what: &str| RoutedError::Shape(what.to_owned());
        let Avro::Record(fields) = v else {
            return Err(shape("not a record"));
        };
        let mut m = RoutedMessage::default();
        for (name, value) in fields {
            match (name.as_str(), value) {
                ("EnqueuedTimeUtc", Avro::String(s)) => m.enqueued_time_utc = s,
                ("Properties", Avro::Map(p)) => m.properties = strings(p)?,
                ("SystemProperties", Avro::Map(p)) => m.system_properties = strings(p)?,
                ("Body", Avro::Union(_, b)) => {
                    m.body = match *b {
                        Avro::Bytes(b) => Some(b),
                        Avro::Null => None,
                        _ => return Err(shape("Body is neither null nor bytes")),
                    }
                }
                (other, _) => return Err(RoutedError::Shape(format!("field {other}"))),
            }
        }
        Ok(m)
    }
}

fn strings(m: HashMap<String, Avro>) -> Result<BTreeMap<String, String>, RoutedError> {
    m.into_iter()
        .map(|(k, v)| match v {
            Avro::String(s) => Ok((k, s)),
            _ => Err(RoutedError::Shape(format!("property {k} is not a string"))),
        })
        .collect()
}

/// A routed message as IoT Hub's JSON encoding writes it: the body as JSON when the message
/// says it is UTF-8 JSON, otherwise base64.
#[derive(Serialize, Deserialize)]
struct JsonLine {
    #[serde(rename = "EnqueuedTimeUtc")]
    enqueued_time_utc: String,
    #[serde(rename = "Properties")]
    properties: BTreeMap<String, String>,
    #[serde(rename = "SystemProperties")]
    system_properties: BTreeMap<String, String>,
    #[serde(rename = "Body")]
    body: Value,
}

/// IoT Hub's routing schema, parsed once.
fn schema() -> Result<&'static apache_avro::Schema, RoutedError> {
    static SCHEMA: std::sync::OnceLock<apache_avro::Schema> = std::sync::OnceLock::new();
    if let Some(s) = SCHEMA.get() {
        return Ok(s);
    }
    let parsed = apache_avro::Schema::parse_str(AVRO_SCHEMA)?;
    Ok(SCHEMA.get_or_init(|| parsed))
}

/// Encodes `messages` as one blob in `encoding`.
pub fn encode(messages: &[RoutedMessage], encoding: Encoding) -> Result<Vec<u8>, RoutedError> {
    match encoding {
        Encoding::Avro | Encoding::AvroDeflate => {
            let schema = schema()?;
            let codec = if encoding == Encoding::AvroDeflate {
                apache_avro::Codec::Deflate(Default::default())
            } else {
                apache_avro::Codec::Null
            };
            let mut w = apache_avro::Writer::with_codec(schema, Vec::new(), codec);
            for m in messages {
                w.append(m.to_avro())?;
            }
            Ok(w.into_inner()?)
        }
        Encoding::Json => {
            let mut out = Vec::new();
            for m in messages {
                let body = match &m.body {
                    None => Value::Null,
                    Some(b) if m.is_json_utf8() => {
                        serde_json::from_slice(b).unwrap_or_else(|_| Value::String(B64.encode(b)))
                    }
                    Some(b) => Value::String(B64.encode(b)),
                };
                let line = JsonLine {
                    enqueued_time_utc: m.enqueued_time_utc.clone(),
                    properties: m.properties.clone(),
                    system_properties: m.system_properties.clone(),
                    body,
                };
                serde_json::to_writer(&mut out, &line)?;
                out.push(b'\n');
            }
            Ok(out)
        }
    }
}

/// Reads a blob a storage endpoint wrote in `encoding`.
pub fn decode(blob: &[u8], encoding: Encoding) -> Result<Vec<RoutedMessage>, RoutedError> {
    match encoding {
        Encoding::Avro | Encoding::AvroDeflate => {
            let reader = apache_avro::Reader::new(blob)?;
            reader
                .map(|v| RoutedMessage::from_avro(v?))
                .collect::<Result<Vec<_>, _>>()
        }
        Encoding::Json => blob
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| {
                let j: JsonLine = serde_json::from_slice(l)?;
                let mut m = RoutedMessage {
                    enqueued_time_utc: j.enqueued_time_utc,
                    properties: j.properties,
                    system_properties: j.system_properties,
                    body: None,
                };
                m.body = match j.body {
                    Value::Null => None,
                    Value::String(s) if !m.is_json_utf8() => Some(
                        B64.decode(s.as_bytes())
                            .map_err(|e| RoutedError::Shape(format!("Body is not base64: {e}")))?,
                    ),
                    other => Some(serde_json::to_vec(&other)?),
                };
                Ok(m)
            })
            .collect(),
    }
}

/// One blob a storage endpoint wrote: a line of its blob log (`layout::endpoint_blob_log`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobWritten {
    /// The endpoint.
    pub endpoint: String,
    /// Its storage container.
    pub container: String,
    /// The blob's name in the container.
    pub blob: String,
    /// How its messages are encoded.
    pub encoding: Encoding,
    /// Messages in it.
    pub messages: u64,
    /// Its size.
    pub bytes: u64,
    /// The store sequence numbers of its first and last message.
    pub first_seq: u64,
    /// See `first_seq`.
    pub last_seq: u64,
}

/// Reads an endpoint's blob log (none when it does not exist yet).
pub fn read_blob_log(path: &std::path::Path) -> std::io::Result<Vec<BlobWritten>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RoutedMessage {
        let mut system = BTreeMap::new();
        system.insert("contentType".into(), "application/json".into());
        system.insert("contentEncoding".into(), "utf-8".into());
        system.insert("connectionDeviceId".into(), "edge".into());
        let mut properties = BTreeMap::new();
        properties.insert("CorrelationId".into(), "c1".into());
        RoutedMessage {
            enqueued_time_utc: "2026-12-07T21:00:00.000Z".into(),
            properties,
            system_properties: system,
            body: Some(br#"{"PredictedRul":12.5}"#.to_vec()),
        }
    }

    #[test]
    fn every_encoding_reads_back_what_it_wrote() {
        let mut binary = sample();
        binary.system_properties.remove("contentType");
        binary.body = Some(vec![0, 159, 146, 150]);
        let mut empty = sample();
        empty.body = None;
        let messages = [sample(), binary, empty];
        for enc in [Encoding::Avro, Encoding::AvroDeflate, Encoding::Json] {
            let blob = encode(&messages, enc).unwrap();
            assert_eq!(decode(&blob, enc).unwrap(), messages, "{enc:?}");
        }
    }

    #[test]
    fn a_line_reads_as_the_record_it_holds_with_the_body_as_stored() {
        let lines = [
            &br#"{"seq":3,"enqueuedTimeUtc":"2026-12-07T21:00:00.000Z","payload":{"PredictedRul":12.50},"payloadEncoding":"json","properties":{"system":{"contentType":"application/json","contentEncoding":"utf-8","connectionDeviceId":"edge","outputName":"hubOutput"},"application":{"a":"b"}},"module":"m","endpoints":["ruldata"]}"#[..],
            br#"{"seq":4,"payload":"plain text","payloadEncoding":"utf-8","properties":{"system":{},"application":{}}}"#,
            br#"{"seq":5,"payload":"AJ+Slg==","payloadEncoding":"base64","properties":{"system":{},"application":{}}}"#,
        ];
        let expected: [(u64, &[u8]); 3] = [
            // The body exactly as the sender wrote it (12.50, not 12.5).
            (3, br#"{"PredictedRul":12.50}"#),
            (4, b"plain text"),
            (5, &[0, 159, 146, 150]),
        ];
        for (line, (seq, body)) in lines.iter().zip(expected) {
            let (n, m) = RoutedMessage::from_line(line).unwrap();
            assert_eq!((n, m.body.as_deref()), (seq, Some(body)));
            let r: Record = serde_json::from_slice(line).unwrap();
            assert_eq!(m.properties, r.properties.application);
            // IoT Hub's system properties, without edgeHub's output name, plus enqueuedTime.
            let sys = &m.system_properties;
            assert_eq!(
                sys.get("connectionDeviceId"),
                r.properties.system.connection_device_id.as_ref()
            );
            assert_eq!(
                sys.get("contentType"),
                r.properties.system.content_type.as_ref()
            );
            assert!(!sys.contains_key("outputName"));
            assert_eq!(sys.get("enqueuedTime"), r.enqueued_time_utc.as_ref());
        }
    }

    #[test]
    fn a_routed_message_is_the_record_it_was_made_from() {
        let line = br#"{"seq":3,"enqueuedTimeUtc":"2026-12-07T21:00:00.000Z","origin":"edge","payload":{"PredictedRul":12.5},"payloadEncoding":"json","properties":{"system":{"contentType":"application/json","contentEncoding":"utf-8","correlationId":"c","connectionDeviceId":"edge","connectionModuleId":"turbofanRouter","outputName":"hubOutput"},"application":{"a":"b"}},"module":"turbofanRouter","routes":["r"],"endpoints":["ruldata"]}"#;
        let r: Record = serde_json::from_slice(line).unwrap();
        let back = RoutedMessage::from_line(line).unwrap().1.to_record();
        assert_eq!(back.payload, r.payload);
        assert_eq!(back.module, r.module);
        assert_eq!(back.origin, r.origin);
        assert_eq!(back.properties.application, r.properties.application);
        assert_eq!(crate::classify(&back), crate::classify(&r));
    }

    #[test]
    fn json_bodies_are_json_in_the_json_encoding_and_others_base64() {
        let mut binary = sample();
        binary.system_properties.remove("contentEncoding");
        let blob = encode(&[sample(), binary], Encoding::Json).unwrap();
        let lines: Vec<Value> = blob
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines[0]["Body"]["PredictedRul"], 12.5);
        assert_eq!(lines[1]["Body"], B64.encode(br#"{"PredictedRul":12.5}"#));
    }

    #[test]
    fn the_avro_files_carry_iot_hub_s_schema() {
        let blob = encode(&[sample()], Encoding::Avro).unwrap();
        let reader = apache_avro::Reader::new(&blob[..]).unwrap();
        let schema = reader.writer_schema().canonical_form();
        let expected = apache_avro::Schema::parse_str(AVRO_SCHEMA)
            .unwrap()
            .canonical_form();
        assert_eq!(schema, expected);
        assert!(schema.contains("Microsoft.Azure.Devices.Message"));
    }
}
