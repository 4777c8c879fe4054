//! The `$upstream` sink: what IoT Hub receives. Messages are appended as JSON lines to a
//! durable file (synced before the sender is acknowledged), in the shape operators see when
//! they monitor device-to-cloud messages.

use crate::edgehub::durable::{self, Appended};
use crate::edgehub::hub_message::HubMessage;
use crate::iothub::routing::{HubRouting, MessageRef, Routed};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use edge_protocol::{CompactString, Message};
use serde_json::Value;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// A message for the store, and where to say once it is on disk.
type Append = (Arc<HubMessage>, oneshot::Sender<Result<(), String>>);

/// Handle of the upstream store.
#[derive(Clone)]
pub struct Upstream {
    tx: mpsc::UnboundedSender<Append>,
    count: Arc<AtomicU64>,
    path: PathBuf,
    routing: Arc<HubRouting>,
}

/// The body as a store line carries it: JSON as it is (when it fits on one line), other
/// UTF-8 text as a string, anything else base64-encoded.
enum Payload<'a> {
    Raw(&'a serde_json::value::RawValue),
    Json(Value),
    Text(&'a str),
    Base64(String),
}

impl serde::Serialize for Payload<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Raw(r) => r.serialize(s),
            Payload::Json(v) => v.serialize(s),
            Payload::Text(t) => s.serialize_str(t),
            Payload::Base64(b) => s.serialize_str(b),
        }
    }
}

/// Application properties as a JSON object.
struct Application<'a>(&'a [(CompactString, CompactString)]);

impl serde::Serialize for Application<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct System<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_encoding: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_device_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_module_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_name: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct Properties<'a> {
    system: System<'a>,
    application: Application<'a>,
}

/// The routes a message matched, or the endpoints it reached, by name.
struct Names<'a> {
    routing: &'a HubRouting,
    routed: &'a Routed,
    endpoints: bool,
}

impl serde::Serialize for Names<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.endpoints {
            s.collect_seq(self.routing.names(self.routed.endpoints))
        } else {
            s.collect_seq(self.routing.route_names_of(self.routed))
        }
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    seq: u64,
    enqueued_time_utc: Option<&'a str>,
    origin: Option<&'a str>,
    payload: Payload<'a>,
    payload_encoding: &'static str,
    properties: Properties<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    module: Option<&'a str>,
    routes: Names<'a>,
    endpoints: Names<'a>,
}

/// Writes the store's line for `m` (as `monitor` prints it): `seq`, `enqueuedTimeUtc`,
/// `origin`, `payload` with its `payloadEncoding` (`json`, `utf-8` or `base64`),
/// `properties.system` / `properties.application`, `module` for a module's message, and
/// where IoT Hub's message routing sent it: `routes` it matched, `endpoints` it reached.
pub fn write_record(
    out: &mut impl Write,
    seq: u64,
    m: &Message,
    routing: &HubRouting,
    routed: &Routed,
) -> std::io::Result<()> {
    fn s(o: &Option<CompactString>) -> Option<&str> {
        o.as_deref()
    }
    let (payload, encoding) = match std::str::from_utf8(&m.body) {
        Ok(text) if m.is_json_utf8() => {
            let one_line = !text.contains(['\n', '\r']);
            match serde_json::from_str::<&serde_json::value::RawValue>(text) {
                Ok(raw) if one_line => (Payload::Raw(raw), "json"),
                Ok(_) => match serde_json::from_str::<Value>(text) {
                    Ok(v) => (Payload::Json(v), "json"),
                    Err(_) => (Payload::Text(text), "utf-8"),
                },
                Err(_) => (Payload::Text(text), "utf-8"),
            }
        }
        Ok(text) => (Payload::Text(text), "utf-8"),
        Err(_) => (Payload::Base64(B64.encode(&m.body)), "base64"),
    };
    let line = Line {
        seq,
        enqueued_time_utc: s(&m.enqueued_time),
        origin: s(&m.connection_device_id),
        payload,
        payload_encoding: encoding,
        properties: Properties {
            system: System {
                message_id: s(&m.message_id),
                correlation_id: s(&m.correlation_id),
                content_type: s(&m.content_type),
                content_encoding: s(&m.content_encoding),
                user_id: s(&m.user_id),
                connection_device_id: s(&m.connection_device_id),
                connection_module_id: s(&m.connection_module_id),
                output_name: s(&m.output_name),
            },
            application: Application(&m.properties),
        },
        module: s(&m.connection_module_id),
        routes: Names {
            routing,
            routed,
            endpoints: false,
        },
        endpoints: Names {
            routing,
            routed,
            endpoints: true,
        },
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

/// Cuts a torn last line (written, never synced whole, so never acknowledged) off the store,
/// so the next record starts on a line of its own. Returns the bytes cut.
fn repair_torn_tail(file: &std::fs::File) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = [0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        file.set_len(end)?;
        file.sync_all()?;
    }
    Ok(len - end)
}

fn existing_lines(path: &Path) -> u64 {
    std::fs::File::open(path)
        .map(|f| std::io::BufReader::new(f).lines().count() as u64)
        .unwrap_or(0)
}

impl Upstream {
    /// Opens (or creates) the store in `state_dir` and starts its writer thread, which
    /// routes each message with `routing` as it stores it.
    pub fn open(state_dir: &Path, routing: Arc<HubRouting>) -> std::io::Result<Upstream> {
        let path = runtime_state::layout::upstream_store(state_dir);
        std::fs::create_dir_all(path.parent().unwrap_or(state_dir))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let cut = repair_torn_tail(&file)?;
        if cut > 0 {
            tracing::warn!(store = %path.display(), bytes = cut, "cut a torn last line off the upstream store (written when the runtime stopped, never acknowledged)");
        }
        let count = Arc::new(AtomicU64::new(existing_lines(&path)));
        let (tx, rx) = mpsc::unbounded_channel();
        let c = count.clone();
        let r = routing.clone();
        std::thread::Builder::new()
            .name("upstream-writer".into())
            .spawn(move || writer(file, rx, c, &r))?;
        Ok(Upstream {
            tx,
            count,
            path,
            routing,
        })
    }

    /// Appends a message; the receiver resolves once it is synced to disk. Its properties
    /// are decoded by the store's writer thread, if no route condition did so before.
    pub fn append(&self, m: Arc<HubMessage>) -> Appended {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError((_, tx))) = self.tx.send((m, tx)) {
            let _ = tx.send(Err("upstream store is closed".into()));
        }
        rx
    }

    /// Messages stored so far (including earlier runs).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// IoT Hub's message routing, as the store applies it.
    pub fn routing(&self) -> &HubRouting {
        &self.routing
    }
}

/// Writes batches: everything queued is written, synced once, then acknowledged. A batch
/// that fails is cut off again (the store ends after the last synced batch), so a later
/// batch never follows a torn line.
fn writer(
    file: std::fs::File,
    mut rx: mpsc::UnboundedReceiver<Append>,
    count: Arc<AtomicU64>,
    routing: &HubRouting,
) {
    let mut good_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut waiting = Vec::new();
    let mut last_sync = std::time::Instant::now();
    while let Some(first) = rx.blocking_recv() {
        durable::pace(last_sync);
        let mut next = Some(first);
        let good_count = count.load(Ordering::Relaxed);
        let mut result: Result<(), String> = Ok(());
        while let Some((m, ack)) = next.take() {
            let seq = count.fetch_add(1, Ordering::Relaxed);
            if result.is_ok() {
                let message = m.message();
                let routed = routing.route(&MessageRef::new(message));
                result = write_record(&mut out, seq, message, routing, &routed)
                    .map_err(|e| e.to_string());
            }
            waiting.push(ack);
            if waiting.len() < 4096 {
                next = rx.try_recv().ok();
            }
        }
        if result.is_ok() {
            result = out
                .flush()
                .and_then(|_| out.get_ref().sync_data())
                .map_err(|e| format!("writing the upstream store: {e}"));
            last_sync = std::time::Instant::now();
        }
        match &result {
            Ok(()) => {
                good_len = out
                    .get_ref()
                    .metadata()
                    .map(|m| m.len())
                    .unwrap_or(good_len)
            }
            Err(e) => {
                tracing::error!(error = %e, "upstream store write failed; senders are not acknowledged");
                let (file, _unwritten) = out.into_parts();
                if let Err(e) = file.set_len(good_len) {
                    tracing::error!(error = %e, "cannot cut the failed batch off the upstream store");
                }
                count.store(good_count, Ordering::Relaxed);
                out = std::io::BufWriter::with_capacity(256 * 1024, file);
            }
        }
        for ack in waiting.drain(..) {
            let _ = ack.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    /// The line's shape, built the plain way as a `Value`: what `write_record` must produce.
    fn record(seq: u64, m: &Message) -> Value {
        let mut system = Map::new();
        let fields = [
            ("messageId", &m.message_id),
            ("correlationId", &m.correlation_id),
            ("contentType", &m.content_type),
            ("contentEncoding", &m.content_encoding),
            ("userId", &m.user_id),
            ("connectionDeviceId", &m.connection_device_id),
            ("connectionModuleId", &m.connection_module_id),
            ("outputName", &m.output_name),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                system.insert(k.into(), Value::from(v.as_str()));
            }
        }
        let application: Map<String, Value> = m
            .properties
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(v.as_str())))
            .collect();
        let (payload, encoding) = match std::str::from_utf8(&m.body) {
            Ok(text) => match serde_json::from_str::<Value>(text) {
                Ok(v) if m.is_json_utf8() => (v, "json"),
                _ => (Value::from(text), "utf-8"),
            },
            Err(_) => (Value::from(B64.encode(&m.body)), "base64"),
        };
        let mut r = json!({
            "seq": seq,
            "enqueuedTimeUtc": m.enqueued_time,
            "origin": m.connection_device_id,
            "payload": payload,
            "payloadEncoding": encoding,
            "properties": {"system": system, "application": application},
            "routes": ["$fallback"],
            "endpoints": ["events"],
        });
        if let Some(module) = &m.connection_module_id {
            r["module"] = Value::from(module.as_str());
        }
        r
    }

    #[test]
    fn the_writer_s_lines_are_the_records() {
        let mut json = Message::json(r#"{ "PredictedRul": 12.5, "s": "a\"b" }"#);
        json.connection_device_id = Some("edge".into());
        json.connection_module_id = Some("turbofanRouter".into());
        json.output_name = Some("hubOutput".into());
        json.correlation_id = Some("c1".into());
        json.enqueued_time = Some("2026-11-21T08:00:00.000Z".into());
        json.set_property("DeadLetter", "true");
        json.set_property("Ünïcode \"key\"", "line\nbreak");
        let mut pretty = Message::json("{\n  \"a\": [1, 2]\n}");
        pretty.connection_device_id = Some("Client_001".into());
        let mut not_json = Message::json("{not json");
        not_json.message_id = Some("m".into());
        let mut text = Message::new("plain text");
        text.content_type = Some("text/plain".into());
        for (n, m) in [json, pretty, not_json, text, Message::new(vec![0xff, 0x00])]
            .iter()
            .enumerate()
        {
            let mut out = Vec::new();
            let routing = HubRouting::builtin();
            let routed = routing.route(&MessageRef::new(m));
            write_record(&mut out, n as u64, m, &routing, &routed).unwrap();
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
            let written: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(written, record(n as u64, m), "message {n}");
            // The readers' definition of a line (hub-records) reads every field back.
            let r: hub_records::Record = serde_json::from_slice(&out).unwrap();
            assert_eq!(r.seq, n as u64);
            assert_eq!(r.module.as_deref(), m.connection_module_id.as_deref());
            assert_eq!(r.origin.as_deref(), m.connection_device_id.as_deref());
            assert_eq!(r.enqueued_time_utc.as_deref(), m.enqueued_time.as_deref());
            assert_eq!(
                r.properties.system.correlation_id.as_deref(),
                m.correlation_id.as_deref()
            );
            assert_eq!(
                r.properties.system.message_id.as_deref(),
                m.message_id.as_deref()
            );
            assert_eq!(r.properties.application.len(), m.properties.len());
            assert_eq!(r.payload, written["payload"]);
            assert!(r.reached("events"));
            // What a storage endpoint takes from the line: the body (a JSON body as the
            // same value).
            let body = hub_records::routed::RoutedMessage::from_line(&out)
                .unwrap()
                .1
                .body
                .unwrap();
            if m.is_json_utf8() && serde_json::from_slice::<Value>(&m.body).is_ok() {
                let back: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(back, serde_json::from_slice::<Value>(&m.body).unwrap());
            } else {
                assert_eq!(body, m.body.to_vec(), "message {n}");
            }
        }
    }

    #[tokio::test]
    async fn appends_are_durable_json_lines_and_numbering_continues() {
        let dir = tempfile::tempdir().unwrap();
        let up = Upstream::open(dir.path(), Arc::new(HubRouting::builtin())).unwrap();
        // As the hub holds it: the delivered bag, decoded by the store's writer.
        let m = HubMessage::new(
            "$.cid=c1&$.ct=application%2Fjson&$.ce=utf-8&DeadLetter=true&$.cdid=edge&$.cmid=turbofanRouter".into(),
            bytes::Bytes::from_static(br#"{"PredictedRul": 12.5}"#),
        );
        up.append(Arc::new(m)).await.unwrap().unwrap();
        up.append(Arc::new(Message::new(vec![0xff, 0x00]).into()))
            .await
            .unwrap()
            .unwrap();
        let text =
            std::fs::read_to_string(runtime_state::layout::upstream_store(dir.path())).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["payload"]["PredictedRul"], json!(12.5));
        assert_eq!(lines[0]["module"], json!("turbofanRouter"));
        assert_eq!(
            lines[0]["properties"]["system"]["correlationId"],
            json!("c1")
        );
        assert_eq!(
            lines[0]["properties"]["application"]["DeadLetter"],
            json!("true")
        );
        assert_eq!(lines[1]["payloadEncoding"], json!("base64"));
        assert_eq!(lines[1]["seq"], json!(1));
        drop(up);
        let again = Upstream::open(dir.path(), Arc::new(HubRouting::builtin())).unwrap();
        assert_eq!(again.count(), 2);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_off_on_open_and_the_next_record_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = runtime_state::layout::upstream_store(dir.path());
        let up = Upstream::open(dir.path(), Arc::new(HubRouting::builtin())).unwrap();
        up.append(Arc::new(Message::json(r#"{"a":1}"#).into()))
            .await
            .unwrap()
            .unwrap();
        drop(up);
        // The runtime died in the middle of writing the next line.
        let whole = std::fs::read(&path).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"seq":1,"payload":{"a""#);
        std::fs::write(&path, &torn).unwrap();

        let up = Upstream::open(dir.path(), Arc::new(HubRouting::builtin())).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            whole,
            "the torn line is gone"
        );
        assert_eq!(up.count(), 1);
        up.append(Arc::new(Message::json(r#"{"b":2}"#).into()))
            .await
            .unwrap()
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line reads"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["payload"]["b"], json!(2));
        assert_eq!(lines[1]["seq"], json!(1));

        // A store that is one torn line only is emptied.
        std::fs::write(&path, b"{\"seq\":0,").unwrap();
        drop(up);
        let up = Upstream::open(dir.path(), Arc::new(HubRouting::builtin())).unwrap();
        assert_eq!(up.count(), 0);
        assert!(std::fs::read(&path).unwrap().is_empty());
    }
}
