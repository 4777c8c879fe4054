//! The `$upstream` sink: what IoT Hub receives. Messages are appended as JSON lines to a
//! durable file (synced before the sender is acknowledged), in the shape operators see when
//! they monitor device-to-cloud messages.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use edge_protocol::Message;
use serde_json::{json, Map, Value};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Result of a durable append.
pub type Appended = oneshot::Receiver<Result<(), String>>;

/// Handle of the upstream store.
#[derive(Clone)]
pub struct Upstream {
    tx: mpsc::UnboundedSender<(Message, oneshot::Sender<Result<(), String>>)>,
    count: Arc<AtomicU64>,
    path: PathBuf,
}

/// The store's file under a state folder.
pub fn store_path(state_dir: &Path) -> PathBuf {
    state_dir.join("upstream").join("messages.jsonl")
}

/// The record of one message, as stored and as `monitor` prints it.
pub fn record(seq: u64, m: &Message) -> Value {
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
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
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
    });
    if let Some(module) = &m.connection_module_id {
        r["module"] = Value::from(module.as_str());
    }
    r
}

fn existing_lines(path: &Path) -> u64 {
    std::fs::File::open(path)
        .map(|f| std::io::BufReader::new(f).lines().count() as u64)
        .unwrap_or(0)
}

impl Upstream {
    /// Opens (or creates) the store in `state_dir` and starts its writer thread.
    pub fn open(state_dir: &Path) -> std::io::Result<Upstream> {
        let path = store_path(state_dir);
        std::fs::create_dir_all(path.parent().unwrap_or(state_dir))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let count = Arc::new(AtomicU64::new(existing_lines(&path)));
        let (tx, rx) = mpsc::unbounded_channel();
        let c = count.clone();
        std::thread::Builder::new()
            .name("upstream-writer".into())
            .spawn(move || writer(file, rx, c))?;
        Ok(Upstream { tx, count, path })
    }

    /// Appends a message; the receiver resolves once it is synced to disk.
    pub fn append(&self, m: Message) -> Appended {
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
}

/// Writes batches: everything queued is written, synced once, then acknowledged.
fn writer(
    file: std::fs::File,
    mut rx: mpsc::UnboundedReceiver<(Message, oneshot::Sender<Result<(), String>>)>,
    count: Arc<AtomicU64>,
) {
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut waiting = Vec::new();
    let mut last_sync = std::time::Instant::now();
    while let Some(first) = rx.blocking_recv() {
        if let Some(rest) = crate::journal::SYNC_INTERVAL.checked_sub(last_sync.elapsed()) {
            std::thread::sleep(rest);
        }
        let mut next = Some(first);
        let mut result: Result<(), String> = Ok(());
        while let Some((m, ack)) = next.take() {
            let seq = count.fetch_add(1, Ordering::Relaxed);
            if result.is_ok() {
                let line = record(seq, &m).to_string();
                result = writeln!(out, "{line}").map_err(|e| e.to_string());
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
        if let Err(e) = &result {
            tracing::error!(error = %e, "upstream store write failed; senders are not acknowledged");
        }
        for ack in waiting.drain(..) {
            let _ = ack.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_are_durable_json_lines_and_numbering_continues() {
        let dir = tempfile::tempdir().unwrap();
        let up = Upstream::open(dir.path()).unwrap();
        let mut m = Message::json(r#"{"PredictedRul": 12.5}"#);
        m.connection_device_id = Some("edge".into());
        m.connection_module_id = Some("turbofanRouter".into());
        m.correlation_id = Some("c1".into());
        m.set_property("DeadLetter", "true");
        up.append(m).await.unwrap().unwrap();
        up.append(Message::new(vec![0xff, 0x00]))
            .await
            .unwrap()
            .unwrap();
        let text = std::fs::read_to_string(store_path(dir.path())).unwrap();
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
        let again = Upstream::open(dir.path()).unwrap();
        assert_eq!(again.count(), 2);
    }
}
