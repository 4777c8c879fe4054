//! What reached IoT Hub: the runtime's `$upstream` store (one JSON record a line), read
//! incrementally and sorted into RUL messages and dead letters.

use anyhow::{Context, Result};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A RUL message: what `turbofanRouter` sends to `hubOutput`.
#[derive(Debug, Clone, PartialEq)]
pub struct RulMessage {
    /// The body's `CorrelationId`.
    pub correlation_id: String,
    /// The message's correlation id (system property).
    pub system_correlation_id: Option<String>,
    /// The body's `ConnectionDeviceId` (the leaf device).
    pub device: String,
    /// The body's `PredictedRul`.
    pub predicted_rul: f64,
    /// The body's `CycleTime`.
    pub cycle: f64,
    /// When edgeHub took the message (`enqueuedTimeUtc`).
    pub enqueued: Option<String>,
    /// The body's `PredictedRulLow` and `PredictedRulHigh` (history mode).
    pub interval: Option<(f64, f64)>,
    /// The body's `HistoryCycles` (history mode).
    pub history_cycles: Option<u64>,
    /// The body's `ModelName`.
    pub model: Option<String>,
}

/// A dead letter: a message `turbofanRouter` sent to `deadMessages`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The message's correlation id (system property).
    pub correlation_id: Option<String>,
    /// The `DeadLetterReason` property.
    pub reason: String,
    /// The record's payload as stored (JSON, text, or base64).
    pub payload: Value,
    /// How the payload is stored: `json`, `utf-8` or `base64`.
    pub payload_encoding: String,
}

/// Everything read from the store so far, sorted.
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    /// RUL messages from `turbofanRouter`.
    pub ruls: Vec<RulMessage>,
    /// Dead letters (`DeadLetter=true`) from `turbofanRouter`.
    pub dead: Vec<DeadLetter>,
    /// Records of any other kind (from another sender, or of another shape).
    pub other: Vec<Value>,
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

impl Outcomes {
    /// Sorts one upstream record in.
    pub fn add(&mut self, record: Value) {
        let from_router = record["module"] == "turbofanRouter";
        let system = &record["properties"]["system"];
        let application = &record["properties"]["application"];
        if from_router && application["DeadLetter"] == "true" {
            self.dead.push(DeadLetter {
                correlation_id: text(&system["correlationId"]),
                reason: text(&application["DeadLetterReason"]).unwrap_or_default(),
                payload: record["payload"].clone(),
                payload_encoding: text(&record["payloadEncoding"]).unwrap_or_default(),
            });
            return;
        }
        let p = &record["payload"];
        let rul = (
            text(&p["CorrelationId"]),
            text(&p["ConnectionDeviceId"]),
            p["PredictedRul"].as_f64(),
            p["CycleTime"].as_f64(),
        );
        match rul {
            (Some(correlation_id), Some(device), Some(predicted_rul), Some(cycle))
                if from_router =>
            {
                self.ruls.push(RulMessage {
                    correlation_id,
                    system_correlation_id: text(&system["correlationId"]),
                    device,
                    predicted_rul,
                    cycle,
                    enqueued: text(&record["enqueuedTimeUtc"]),
                    interval: p["PredictedRulLow"]
                        .as_f64()
                        .zip(p["PredictedRulHigh"].as_f64()),
                    history_cycles: p["HistoryCycles"].as_u64(),
                    model: text(&p["ModelName"]),
                })
            }
            _ => self.other.push(record),
        }
    }
}

/// Follows the store's file: each [`poll`](Tail::poll) returns the complete lines appended
/// since the last one (a line still being written waits for the next poll).
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    /// The store, once it exists (kept open: it is only appended to).
    file: Option<std::fs::File>,
    partial: Vec<u8>,
}

impl Tail {
    /// Follows the upstream store of the runtime with state folder `state_dir`, from its start.
    pub fn new(state_dir: &Path) -> Tail {
        Tail {
            path: runtime_state::layout::upstream_store(state_dir),
            file: None,
            partial: Vec::new(),
        }
    }

    /// Calls `each` with every complete line appended since the last poll (nothing while
    /// the file does not exist); returns how many.
    pub fn poll_lines(&mut self, mut each: impl FnMut(&[u8])) -> Result<usize> {
        let f = match &mut self.file {
            Some(f) => f,
            None => match std::fs::File::open(&self.path) {
                Ok(f) => self.file.insert(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => {
                    return Err(e).with_context(|| format!("opening {}", self.path.display()))
                }
            },
        };
        // The file's position is where the last poll stopped reading.
        let mut buf = std::mem::take(&mut self.partial);
        f.read_to_end(&mut buf)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let Some(last) = buf.iter().rposition(|b| *b == b'\n') else {
            self.partial = buf;
            return Ok(0);
        };
        self.partial = buf.split_off(last + 1);
        let mut n = 0;
        for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            each(line);
            n += 1;
        }
        Ok(n)
    }

    /// The records appended since the last poll (none while the file does not exist).
    pub fn poll(&mut self) -> Result<Vec<Value>> {
        let mut lines = Vec::new();
        self.poll_lines(|l| lines.push(serde_json::from_slice::<Value>(l)))?;
        lines
            .into_iter()
            .map(|r| r.with_context(|| format!("a line of {} is not JSON", self.path.display())))
            .collect()
    }
}

/// Reads the whole store of the runtime with state folder `state_dir`.
pub fn read(state_dir: &Path) -> Result<Outcomes> {
    let mut out = Outcomes::default();
    for r in Tail::new(state_dir).poll()? {
        out.add(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    #[test]
    fn sorts_records_and_follows_the_file_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = runtime_state::layout::upstream_store(dir.path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let rul = json!({"module": "turbofanRouter", "enqueuedTimeUtc": "t",
            "payload": {"CorrelationId": "c1", "ConnectionDeviceId": "Client_001", "PredictedRul": 80.5, "CycleTime": 3},
            "properties": {"system": {"correlationId": "c1"}, "application": {}}});
        let dead = json!({"module": "turbofanRouter", "payload": "nope", "payloadEncoding": "utf-8",
            "properties": {"system": {"correlationId": "c2"}, "application": {"DeadLetter": "true", "DeadLetterReason": "why"}}});
        let leaf = json!({"origin": "Client_001", "payload": {"PredictedRul": 1},
            "properties": {"system": {}, "application": {}}});
        let mut f = std::fs::File::create(&path).unwrap();
        let mut tail = Tail::new(dir.path());
        assert!(tail.poll().unwrap().is_empty());
        write!(f, "{rul}\n{dead}\n{}", &leaf.to_string()[..10]).unwrap();
        let first = tail.poll().unwrap();
        assert_eq!(first.len(), 2, "the torn last line waits");
        writeln!(f, "{}", &leaf.to_string()[10..]).unwrap();
        let second = tail.poll().unwrap();
        assert_eq!(second, vec![leaf.clone()]);

        let o = read(dir.path()).unwrap();
        assert_eq!(o.ruls.len(), 1);
        assert_eq!(o.ruls[0].correlation_id, "c1");
        assert_eq!(o.ruls[0].predicted_rul, 80.5);
        assert_eq!(o.dead.len(), 1);
        assert_eq!(o.dead[0].reason, "why");
        assert_eq!(o.dead[0].correlation_id.as_deref(), Some("c2"));
        assert_eq!(o.other, vec![leaf], "not from the router");
    }
}
